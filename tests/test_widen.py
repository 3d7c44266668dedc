"""A finished sweep may be widened in its folder (sweep_plan.py): a field
given more values, on the command line or in an edited hparams.py, runs
only the new configurations; the trials already run keep their names,
files and rows bit for bit, and results.csv holds all.  A rerun that
changes a fixed setting, or leaves out a value, is still refused, in one
line naming what changed."""

import os
import subprocess

import pandas as pd
import pytest

from runtime import resume
import sweep_plan
import tune
from runtime.errors import UsageError
from conftest import ROOT, edit_grid, repo_copy

GIVEN = {"dataset": ("digits",), "arch": ("8",), "epochs": (1,),
         "objective": ("loss",), "use_xla": (False,),
         "batch_norm": (False,), "algorithm": ("dfa",), "lr": (1e-3,)}


def rows(sweep) -> dict:
    """results.csv's lines, by trial, as written (bitwise)."""
    with open(os.path.join(sweep, "results.csv")) as f:
        header, *lines = f.read().splitlines()
    return {line.split(",")[0]: line for line in lines}


def attempts(sweep) -> dict:
    trials = os.path.join(sweep, "trials")
    return {name: resume.attempts(os.path.join(trials, name, "exec0"))
            for name in sorted(os.listdir(trials))
            if os.path.isdir(os.path.join(trials, name))}


def test_a_wider_lr_on_the_command_line_runs_only_the_new_ones(tmp_path):
    sweep = str(tmp_path / "exp")
    tune.run_sweep(GIVEN, sweep, verbose=False)
    before, ran = rows(sweep), attempts(sweep)
    frame = tune.run_sweep({**GIVEN, "lr": (1e-3, 1e-2, 1e-1)}, sweep,
                           verbose=False)
    assert len(frame) == 3 and set(frame["status"]) == {"COMPLETED"}
    after = rows(sweep)
    old = next(iter(before))
    assert after[old] == before[old]  # the finished trial's row, bitwise
    assert attempts(sweep)[old] == ran[old]  # ... and it did not run again
    assert sorted(frame["lr"]) == [1e-3, 1e-2, 1e-1]
    plan = sweep_plan.read_plan(sweep)
    assert [c["lr"] for c in plan["grid"]] == [1e-3, 1e-2, 1e-1]
    assert [i["added_configurations"] for i in plan["invocations"]] == [0, 2]


@pytest.mark.parametrize("change,words", [
    ({"epochs": (2,)}, "epochs was 1, now 2"),
    ({"lr": (1e-2,)}, "lr was 0.001, now 0.01"),
    ({"lr": (1e-2, 1e-1), "activation": ("relu",)},
     "activation was tanh, now relu; lr lost 0.001"),
])
@pytest.mark.slow
def test_a_rerun_that_changes_a_fixed_setting_is_refused_naming_it(
        change, words, tmp_path):
    sweep = str(tmp_path / "exp")
    tune.run_sweep(GIVEN, sweep, verbose=False)
    with pytest.raises(UsageError) as refused:
        tune.run_sweep({**GIVEN, **change}, sweep, verbose=False)
    assert str(refused.value) == (
        f"{sweep} holds another sweep ({words}): a sweep folder takes more "
        "values of a setting, not other ones; rerun it with the flags in "
        f"{sweep}/sweep.json or use a new folder")


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="train.bash needs the project's .venv")
@pytest.mark.slow
def test_a_grid_widened_in_hparams_py_continues_the_sweep(tmp_path):
    """The README's way to widen a sweep: edit `grid=` in hparams.py, rerun
    the same command into the same folder."""
    copy = repo_copy(tmp_path)
    sweep = str(tmp_path / "exp")
    command = [str(copy / "train.bash"), sweep, "--dataset=digits",
               "--arch=8", "--epochs=1", "--use_xla=false",
               "--batch_norm=false", "--objective=loss"]
    env = {k: v for k, v in os.environ.items() if k != "BPFREE_VERBOSE"}
    first = subprocess.run(command, capture_output=True, text=True,
                           timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    before, ran = rows(sweep), attempts(sweep)
    assert len(before) == 2  # hparams.py's lr grid: 1e-3, 1e-2
    edit_grid(copy, "lr", "(1e-3, 1e-2, 3e-2)")
    second = subprocess.run(command, capture_output=True, text=True,
                            timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = second.stdout.splitlines()
    assert lines[0].endswith("3 configurations over lr")
    assert [line for line in lines if line.endswith("lr=0.03")] == [
        "[3/3] lr=0.03"]  # the only trial that ran
    after = rows(sweep)
    assert {k: after[k] for k in before} == before
    assert {k: v for k, v in attempts(sweep).items() if k in ran} == ran
    frame = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert sorted(frame["lr"]) == [1e-3, 1e-2, 3e-2]
