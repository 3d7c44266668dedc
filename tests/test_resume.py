"""A sweep survives SIGKILL at any moment and ends as if never killed.

One 12-trial digits sweep is killed at start-up, inside a trial (after an
epoch was backed up) and between trials (by train.bash's own restart loop),
rerun each time, and compared with the same sweep run without a kill.
The kills come from faults.py (the process SIGKILLs itself at a named
point), so the moments are exact, not races.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from runtime import folders
from runtime import resume
import tune
from runtime.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--dataset=digits", "--algorithm=dfa,bp,drtp", "--lr=1e-3,1e-2",
         "--batch_norm=false,true", "--arch=16", "--epochs=2",
         "--objective=loss", "--use_xla=false", "--dropout=0.1"]
GIVEN = {"dataset": ("digits",), "algorithm": ("dfa", "bp", "drtp"),
         "lr": (1e-3, 1e-2), "batch_norm": (False, True), "arch": ("16",),
         "epochs": (2,), "objective": ("loss",), "use_xla": (False,),
         "dropout": (0.1,)}
COMPARED = ["loss", "accuracy", "test_loss", "test_accuracy"]


def train_bash(sweep, kill_at=None, max_restarts=0):
    env = {**os.environ, "BPFREE_MAX_RESTARTS": str(max_restarts)}
    env.pop("BPFREE_KILL_AT", None)
    if kill_at:
        env["BPFREE_KILL_AT"] = kill_at
    return subprocess.run([os.path.join(ROOT, "train.bash"), sweep, *FLAGS],
                          env=env, capture_output=True, text=True,
                          timeout=600)


def execution_dirs(sweep):
    trials = os.path.join(sweep, "trials")
    return sorted(os.path.join(trials, t, "exec0") for t in os.listdir(trials)
                  if os.path.isdir(os.path.join(trials, t, "exec0")))


def table(sweep):
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    key = ["algorithm", "lr", "batch_norm"]
    return frame.sort_values(key).reset_index(drop=True), key


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="train.bash needs the project's .venv")
@pytest.mark.slow
def test_sweep_killed_three_times_ends_like_an_uninterrupted_one(tmp_path):
    reference = str(tmp_path / "uninterrupted")
    tune.run_sweep(GIVEN, reference, verbose=False)

    sweep = str(tmp_path / "killed")
    started = train_bash(sweep, kill_at="startup")
    assert started.returncode == 137, started.stderr[-2000:]
    assert "crashed (killed by signal KILL)" in started.stderr
    assert os.path.exists(os.path.join(sweep, "sweep.json"))
    assert not os.path.exists(os.path.join(sweep, "trials", "t000"))

    inside = train_bash(sweep, kill_at="epoch_end:5")  # trial 3, epoch 1
    assert inside.returncode == 137, inside.stderr[-2000:]
    interrupted = [d for d in execution_dirs(sweep)
                   if not os.path.exists(os.path.join(d, "metrics.json"))]
    assert len(interrupted) == 1
    assert folders.read_json(os.path.join(interrupted[0], "backup",
                                         resume.STATE))["epoch"] == 1

    # Killed after every 4th trial; train.bash restarts it until it is done.
    between = train_bash(sweep, kill_at="trial_end:4", max_restarts=5)
    assert between.returncode == 0, between.stderr[-2000:]
    assert between.stderr.count("restarting it") == 2

    frame, key = table(sweep)
    assert len(frame) == 12 and set(frame["status"]) == {"COMPLETED"}
    assert frame["trial_id"].is_unique
    for workdir in execution_dirs(sweep):
        starts = [a["start_epoch"] for a in resume.attempts(workdir)]
        assert starts.count(0) == 1, (workdir, starts)  # never from scratch
        assert not os.path.exists(os.path.join(workdir, "backup"))
    resumed = [d for d in execution_dirs(sweep)
               if len(resume.attempts(d)) > 1]
    assert [a["start_epoch"] for a in resume.attempts(resumed[0])] == [0, 1]
    history = pd.read_csv(os.path.join(resumed[0], "history.csv"))
    assert history["epoch"].tolist() == [0, 1]

    expected, _ = table(reference)
    assert frame[key].equals(expected[key])
    np.testing.assert_allclose(frame[COMPARED], expected[COMPARED],
                               rtol=1e-5, atol=1e-6)
    with open(os.path.join(sweep, "sweep.json")) as f:
        plan = json.load(f)
    assert len(plan["invocations"]) == 5  # 3 commands, 2 restarts
    assert plan["invocations"][0]["versions"]["tensorflow"]


@pytest.mark.slow
def test_a_rerun_with_another_grid_is_refused(tmp_path):
    sweep = str(tmp_path / "exp")
    quick = {"dataset": ("digits",), "arch": ("8",), "epochs": (1,),
             "objective": ("loss",), "use_xla": (False,),
             "batch_norm": (False,), "algorithm": ("dfa",), "lr": (1e-3,)}
    tune.run_sweep(quick, sweep, verbose=False)
    with pytest.raises(UsageError, match="holds another sweep"):
        tune.run_sweep({**quick, "lr": (1e-2,)}, sweep, verbose=False)
    # From the command line: one line, before TensorFlow loads.
    flags = [f"--{k}={v[0]}" for k, v in quick.items() if k != "lr"]
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tune.py"), f"--sweep_dir={sweep}",
         *flags, "--lr=1e-2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: {sweep} holds another sweep (lr was 0.001, now 0.01): a "
        "sweep folder takes more values of a setting, not other ones; rerun "
        f"it with the flags in {sweep}/sweep.json or use a new folder"]


def test_a_diverging_trial_is_failed_with_its_reason_and_the_sweep_goes_on(
        tmp_path):
    sweep = str(tmp_path / "exp")
    given = {"dataset": ("digits",), "arch": ("32",), "epochs": (2,),
             "objective": ("loss",), "use_xla": (False,),
             "batch_norm": (False,), "algorithm": ("bp",),
             "activation": ("relu",), "scaler": ("identity",),
             "optimizer": ("sgd",), "lr": (1e-2, 1e30)}
    frame = tune.run_sweep(given, sweep, verbose=False)
    by_lr = frame.set_index("lr")
    assert by_lr.loc[1e-2, "status"] == "COMPLETED"
    assert by_lr.loc[1e30, "status"] == "FAILED"
    assert by_lr.loc[1e30, "failure"].startswith("diverged: training loss "
                                                "became ")
    assert frame["status"].tolist() == ["COMPLETED", "FAILED"]  # best first
    # A rerun does not try the failed one again.
    again = tune.run_sweep(given, sweep, verbose=False)
    assert again["status"].tolist() == ["COMPLETED", "FAILED"]


def test_a_trial_that_raises_is_failed_with_its_reason(tmp_path,
                                                       monkeypatch):
    import train
    real = train.train_and_evaluate

    def flaky(hp, workdir, **kw):
        if hp["lr"] == 1e-2:
            raise MemoryError("out of memory on the device")
        return real(hp, workdir, **kw)
    monkeypatch.setattr(train, "train_and_evaluate", flaky)
    given = {"dataset": ("digits",), "arch": ("8",), "epochs": (1,),
             "objective": ("loss",), "use_xla": (False,),
             "batch_norm": (False,), "algorithm": ("dfa",),
             "lr": (1e-3, 1e-2)}
    frame = tune.run_sweep(given, str(tmp_path / "exp"), verbose=False)
    failed = frame[frame["status"] == "FAILED"]
    assert failed["failure"].tolist() == [
        "MemoryError: out of memory on the device"]
    assert (frame["status"] == "COMPLETED").sum() == 1


def test_trial_ids_are_stable_across_reruns_and_unique_across_sweeps(
        tmp_path):
    quick = {"dataset": ("digits",), "arch": ("8",), "epochs": (1,),
             "objective": ("loss",), "use_xla": (False,),
             "batch_norm": (False,), "algorithm": ("dfa",),
             "lr": (1e-3, 1e-2)}
    first = tune.run_sweep(quick, str(tmp_path / "a"), verbose=False)
    again = tune.run_sweep(quick, str(tmp_path / "a"), verbose=False)
    other = tune.run_sweep(quick, str(tmp_path / "b"), verbose=False)
    assert sorted(first["trial_id"]) == sorted(again["trial_id"])
    assert not set(first["trial_id"]) & set(other["trial_id"])
