"""One sweep process per folder (outside keras-tuner's chief/worker mode):
a second `train.bash` on a folder in use is refused with one line naming
the process that holds it, and no trial runs twice; a lock left by a killed
process does not block the rerun."""

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from runtime import sweep_lock
from runtime import resume
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

FLAGS = ["--dataset=digits", "--algorithm=dfa", "--lr=1e-3",
         "--arch=16", "--epochs=2", "--objective=loss", "--use_xla=false",
         "--batch_norm=false"]


def train_bash(sweep, **env):
    environment = {k: v for k, v in os.environ.items()
                   if k != "BPFREE_KILL_AT" and not k.startswith("KERASTUNER")}
    environment.update(env)
    return subprocess.Popen(
        [os.path.join(ROOT, "train.bash"), sweep, *FLAGS], env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lock_holder(sweep, timeout=300):
    """The record the holder wrote in sweep.lock, once it is there."""
    path = os.path.join(sweep, sweep_lock.LOCK_FILE)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"{path} never named its holder")


def runs(sweep):
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert len(frame) == 1 and set(frame["status"]) == {"COMPLETED"}
    return [os.path.join(sweep, "trials", t, "exec0")
            for t in frame["trial_id"]]


def test_a_second_sweep_on_a_folder_in_use_is_refused(tmp_path):
    sweep = str(tmp_path / "exp")
    first = train_bash(sweep)
    holder = lock_holder(sweep)
    os.kill(holder["pid"], signal.SIGSTOP)  # in the middle of its sweep
    try:
        second = train_bash(sweep)
        _, err = second.communicate(timeout=300)
    finally:
        os.kill(holder["pid"], signal.SIGCONT)
    out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]

    assert second.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {sweep} is in use by another sweep (pid {holder['pid']} on "
        f"host {holder['host']}, since {holder['since']}); wait for it to "
        "end, or use a new folder (to run one sweep with several processes, "
        "use the chief/worker mode: README, 'Several machines')"]
    assert "Traceback" not in err and "restarting" not in err
    with open(os.path.join(sweep, "sweep.json")) as f:
        assert len(json.load(f)["invocations"]) == 1  # the refused wrote none
    for run in runs(sweep):  # every run once, by the first sweep
        assert [a["pid"] for a in resume.attempts(run)] == [holder["pid"]]


def test_a_lock_left_by_a_killed_sweep_does_not_block_the_rerun(tmp_path):
    sweep = str(tmp_path / "exp")
    killed = train_bash(sweep, BPFREE_KILL_AT="epoch_end:1",
                        BPFREE_MAX_RESTARTS="0")
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == 137, err[-3000:]
    dead = lock_holder(sweep, timeout=0.1)["pid"]  # its record stays
    try:
        os.kill(dead, 0)
        raise AssertionError(f"pid {dead} is still alive")
    except ProcessLookupError:
        pass
    rerun = train_bash(sweep)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    # The run resumed from its backup.
    assert [[a["start_epoch"] for a in resume.attempts(run)]
            for run in runs(sweep)] == [[0, 1]]
