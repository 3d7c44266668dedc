"""A run killed after its last epoch's backup, before metrics.json, ends
bit-identical to an uninterrupted run when it is rerun."""

import json
import os
import subprocess
import sys

import pytest

import cli
from runtime import folders
from runtime import resume
import train
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

FLAGS = ["--dataset=digits", "--arch=16", "--epochs=2", "--use_xla=false",
         "--dropout=0.1", "--algorithm=dfa", "--batch_size=32"]
TIMING = ("train_seconds", "compile_seconds")


def run_in_process(workdir):
    assert cli.run(["train.py", *FLAGS, f"--workdir={workdir}"], train.main,
                   train.FLAGS) == 0


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return {k: v for k, v in json.load(f).items() if k not in TIMING}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("late_kill") / "reference"
    run_in_process(workdir)
    return workdir


# epoch_end:2 passes right after the last (second) epoch's backup; run_end
# after model.keras, just before metrics.json.
@pytest.mark.parametrize("point", ["epoch_end:2", "run_end"])
def test_a_run_killed_after_its_last_backup_ends_bit_identical(
        point, reference, tmp_path):
    killed = tmp_path / "killed"
    env = {**os.environ, "BPFREE_KILL_AT": point}
    died = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *FLAGS,
         f"--workdir={killed}"], env=env, capture_output=True, text=True,
        timeout=300)
    assert died.returncode == -9, died.stderr[-2000:]
    assert not (killed / "metrics.json").exists()
    assert folders.read_json(str(killed / "backup" / resume.STATE))[
        "epoch"] == 2
    run_in_process(killed)  # the rerun: resumes at epoch 2, trains nothing
    assert [a["start_epoch"] for a in resume.attempts(str(killed))] == [0, 2]
    expected, got = metrics(reference), metrics(killed)
    assert got.keys() == expected.keys()
    assert {k: (v, expected[k]) for k, v in got.items()
            if v != expected[k]} == {}
    assert (killed / "history.csv").read_text() == (
        reference / "history.csv").read_text()
    assert not (killed / "backup").exists()
