"""Ctrl-C (SIGINT) and SIGTERM, mid-epoch, on a single run (train.py) and
on a sweep (train.bash): one line saying where it stopped and that the same
command resumes, no traceback, the process ends by that signal (the
shell's status 130 or 143), and the rerun ends bit-identical to a run
never stopped.

The moment is exact, not a race: the process stops itself (SIGSTOP,
faults.py's BPFREE_STOP_AT) after a training batch of its second epoch;
the test then sends the signal to its whole process group, as a terminal
does on Ctrl-C, and lets it continue.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import cli
import report
import train
from runtime import folders
import tune
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

RUN = ["--dataset=digits", "--arch=16", "--epochs=2", "--use_xla=false",
       "--dropout=0.1", "--algorithm=dfa", "--batch_size=32"]
# 1,293 training examples in batches of 32, 8 a call: 6 calls an epoch.
SECOND_EPOCH = "train_batch:8"
TIMING = ("train_seconds", "compile_seconds")
HAS_VENV = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, ".venv")),
    reason="train.bash needs the project's .venv")


def stopped(group: int) -> bool:
    """Whether a process of the group has stopped itself (state T)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] == "T":
            return True
    return False


def interrupted(command, signum, timeout=300, group=True,
                stop_at=SECOND_EPOCH):
    """Runs `command` until it stops itself at `stop_at` (a faults.py
    point; by default mid-epoch, in the second epoch), sends `signum` to
    its process group (`group`: as a terminal does), or else to the
    command's own process alone, lets it go on; returns the
    CompletedProcess."""
    env = {**os.environ, "BPFREE_STOP_AT": stop_at}
    for name in ("BPFREE_KILL_AT", "BPFREE_VERBOSE"):
        env.pop(name, None)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + timeout
    while not stopped(process.pid):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "it never reached the stop point"
        time.sleep(0.1)
    if group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
        time.sleep(0.5)  # (bash runs its trap once its wait returns)
    os.killpg(process.pid, signal.SIGCONT)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def metrics(workdir):
    record = folders.read_json(os.path.join(workdir, "metrics.json"))
    return {k: v for k, v in record.items() if k not in TIMING}


def weights(workdir):
    import keras

    import bpfree  # noqa: F401  (the classes model.keras names)
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    return [np.asarray(v) for v in model.weights]


def assert_same_run(got, expected):
    assert metrics(got) == metrics(expected)
    for name in ("history.csv",):
        with open(os.path.join(got, name)) as a, \
                open(os.path.join(expected, name)) as b:
            assert a.read() == b.read()
    for a, b in zip(weights(got), weights(expected), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("interrupt") / "reference")
    assert cli.run(["train.py", *RUN, f"--workdir={workdir}"], train.main,
                   train.FLAGS) == 0
    return workdir


@pytest.mark.parametrize("signum,words", [
    (signal.SIGINT, "Ctrl-C (SIGINT)"), (signal.SIGTERM, "SIGTERM")])
def test_a_run_stopped_mid_epoch_says_where_and_resumes_exactly(
        signum, words, uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    result = interrupted([sys.executable, os.path.join(ROOT, "train.py"),
                          *RUN, f"--workdir={workdir}"], signum)
    assert result.returncode == -signum  # (the shell says 128 + signum)
    assert result.stderr.splitlines() == [
        f"stopped by {words} in epoch 2/2 of {workdir}; rerun the same "
        "command to resume from its last finished epoch (1)"]
    assert "Traceback" not in result.stdout
    assert result.stdout.splitlines()[0].startswith(
        f"{workdir} epoch 1/2: loss ")
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    # The same command again: it resumes at epoch 1 and ends as if never
    # stopped.
    assert cli.run(["train.py", *RUN, f"--workdir={workdir}"], train.main,
                   train.FLAGS) == 0
    assert_same_run(workdir, uninterrupted)


SWEEP = ["--dataset=digits", "--arch=16", "--epochs=2", "--use_xla=false",
         "--dropout=0.1", "--batch_size=32", "--algorithm=dfa,bp",
         "--objective=loss", "--lr=1e-2", "--batch_norm=false"]
SWEEP_GIVEN = {"dataset": ("digits",), "arch": ("16",), "epochs": (2,),
               "use_xla": (False,), "dropout": (0.1,), "batch_size": (32,),
               "algorithm": ("dfa", "bp"), "objective": ("loss",),
               "lr": (1e-2,), "batch_norm": (False,)}


@HAS_VENV
def test_ctrl_c_on_a_sweep_says_where_and_the_rerun_ends_exactly(tmp_path):
    sweep = str(tmp_path / "sweep")
    command = [os.path.join(ROOT, "train.bash"), sweep, *SWEEP]
    result = interrupted(command, signal.SIGINT)
    assert result.returncode == -signal.SIGINT  # train.bash too
    assert result.stderr.splitlines() == [
        "stopped by Ctrl-C (SIGINT) in trial [1/2], epoch 2/2 (0 of 2 "
        "trials done); rerun the same command to continue: finished "
        "trials are kept and this one resumes from its last finished "
        "epoch (1)"]
    assert "Traceback" not in result.stdout
    assert "restarting" not in result.stdout + result.stderr
    rerun = subprocess.run(command, capture_output=True, text=True,
                           timeout=600, env={k: v for k, v in
                                             os.environ.items()
                                             if k != "BPFREE_STOP_AT"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reference = str(tmp_path / "reference")
    tune.run_sweep(SWEEP_GIVEN, reference, verbose=False)
    got = pd.read_csv(os.path.join(sweep, "results.csv"))
    expected = pd.read_csv(os.path.join(reference, "results.csv"))
    compared = ["algorithm", "loss", "test_loss", "test_accuracy"]
    pd.testing.assert_frame_equal(
        got[compared].sort_values("algorithm").reset_index(drop=True),
        expected[compared].sort_values("algorithm").reset_index(drop=True),
        check_exact=True)
    for trial in ("t000", "t001"):
        runs = [os.path.join(folder, "trials", name, "exec0")
                for folder in (sweep, reference)
                for name in os.listdir(os.path.join(folder, "trials"))
                if name.startswith(trial)]
        assert_same_run(*runs)


@HAS_VENV
def test_sigterm_to_train_bash_alone_reaches_the_sweep(tmp_path):
    """A job scheduler's SIGTERM goes to train.bash only: it passes it on,
    the sweep stops with its line, and train.bash ends by SIGTERM too."""
    sweep = str(tmp_path / "sweep")
    result = interrupted([os.path.join(ROOT, "train.bash"), sweep, *SWEEP],
                         signal.SIGTERM, group=False)
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        "stopped by SIGTERM in trial [1/2], epoch 2/2 (0 of 2 trials done); "
        "rerun the same command to continue: finished trials are kept and "
        "this one resumes from its last finished epoch (1)"]


@pytest.mark.parametrize("signum,words", [
    (signal.SIGINT, "Ctrl-C (SIGINT)"), (signal.SIGTERM, "SIGTERM")])
def test_report_stopped_between_its_files_leaves_each_whole(
        signum, words, report_sweep, tmp_path):
    """Stopped after its table and first figure: one line, no traceback,
    the files written whole, no temporary file, the rest absent; the
    process ends by the signal."""
    out = str(tmp_path / "report")
    result = interrupted([sys.executable, os.path.join(ROOT, "report.py"),
                          report_sweep, f"--out={out}"], signum,
                         stop_at="report_figure:2")
    assert result.returncode == -signum, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"stopped by {words}: each file of the report is whole or absent; "
        "rerun the same command to write it all"]
    assert sorted(os.listdir(out)) == ["learning_curves.png", "report.csv",
                                       "report.md"]
    assert pd.read_csv(os.path.join(out, "report.csv")).equals(
        pd.read_csv(report.write_report(report_sweep, str(tmp_path / "all"))
                    ["csv"]))
