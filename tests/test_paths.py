"""Paths mean what the user typed: train.bash resolves a relative sweep
folder and --data_dir against the folder it is called from, and where the
data lives is not part of a sweep's identity (the same sweep continues
with $BPFREE_DATA_DIR, or on a machine that mounts the data elsewhere)."""

import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import cli
import datasets
import hparams
from runtime import resume
import tune
from conftest import ROOT

# Starts processes, kills them or fills disks (-m "not slow" leaves it out).
pytestmark = pytest.mark.slow

FLAGS = ["--dataset=mnist", "--arch=8", "--epochs=1", "--lr=1e-3,1e-2",
         "--objective=loss", "--use_xla=false", "--batch_norm=false",
         "--algorithm=dfa"]


def write_small_mnist(folder):
    """mnist.npz in Keras' layout, 200 + 50 examples."""
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    np.savez(os.path.join(folder, "mnist.npz"),
             x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
             y_train=np.arange(200, dtype=np.uint8) % 10,
             x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
             y_test=np.arange(50, dtype=np.uint8) % 10)


def test_relative_paths_are_the_callers_and_data_dir_is_not_identity(
        tmp_path, monkeypatch, capsys):
    write_small_mnist(tmp_path / "data")
    env = {**os.environ, "BPFREE_KILL_AT": "trial_end:1",
           "BPFREE_MAX_RESTARTS": "0"}
    env.pop(datasets.DATA_DIR_ENV, None)
    # From the user's folder, relative paths; killed after the first trial.
    first = subprocess.run(
        [os.path.join(ROOT, "train.bash"), "exp", "--data_dir=data", *FLAGS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 137, first.stderr[-3000:]
    sweep = tmp_path / "exp"
    assert (sweep / "sweep.json").exists()
    assert not os.path.exists(os.path.join(ROOT, "exp"))
    [done] = [d for d in (sweep / "trials").glob("*/exec0")
              if (d / "metrics.json").exists()]

    # The data moves; the same sweep goes on with $BPFREE_DATA_DIR.
    shutil.move(tmp_path / "data", tmp_path / "mounted")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "mounted"))
    assert cli.run(["tune.py", "--sweep_dir=exp", *FLAGS], tune.main,
                   tune.FLAGS) == 0, capsys.readouterr().err
    frame = pd.read_csv(sweep / "results.csv")
    assert len(frame) == 2 and set(frame["status"]) == {"COMPLETED"}
    assert len(resume.attempts(str(done))) == 1  # not run again
    with open(sweep / "sweep.json") as f:
        plan = json.load(f)
    assert [i["data_dir"] for i in plan["invocations"]] == [
        str(tmp_path / "data"), str(tmp_path / "mounted")]
    assert "data_dir" not in plan["space"]
    assert all("data_dir" not in config for config in plan["grid"])
