"""A grid sweep end to end on the embedded digits data."""

import glob
import os

import pandas as pd
import pytest

import hparams
import tune
from hparams import ALGORITHMS

QUICK = {"dataset": ("digits",), "arch": ("32",), "epochs": (1,),
         "objective": ("loss",), "use_xla": (False,),
         "batch_norm": (False,)}


@pytest.mark.slow
def test_sweep_runs_the_grid_writes_results_and_resumes(tmp_path):
    sweep = str(tmp_path / "exp")
    given = {**QUICK, "algorithm": ("dfa",), "lr": (1e-3, 1e-2)}
    frame = tune.run_sweep(given, sweep, verbose=False)
    assert len(frame) == 2 and set(frame["status"]) == {"COMPLETED"}
    assert sorted(frame["lr"]) == [1e-3, 1e-2]
    table = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert {"test_accuracy", "test_loss", "loss", "lr", "algorithm"} <= set(
        table.columns)
    for trial_id in frame["trial_id"]:
        run = os.path.join(sweep, "trials", str(trial_id), "exec0")
        assert os.path.exists(os.path.join(run, "metrics.json"))
        # Its TensorBoard run: trials/<trial>/<rule,values>/exec0.
        assert glob.glob(os.path.join(sweep, "trials", str(trial_id), "*",
                                      "exec0", "train", "events.out.*"))
    # A rerun of the same command finds nothing left to do.
    mtimes = {t: os.path.getmtime(os.path.join(
        sweep, "trials", str(t), "exec0", "metrics.json"))
        for t in frame["trial_id"]}
    again = tune.run_sweep(given, sweep, verbose=False)
    assert len(again) == 2
    assert mtimes == {t: os.path.getmtime(os.path.join(
        sweep, "trials", str(t), "exec0", "metrics.json"))
        for t in frame["trial_id"]}


@pytest.mark.slow
def test_one_grid_holds_all_nine_rules(tmp_path):
    given = {**QUICK, "algorithm": ALGORITHMS, "lr": (1e-3,)}
    frame = tune.run_sweep(given, str(tmp_path / "all"), verbose=False)
    assert sorted(frame["algorithm"]) == sorted(ALGORITHMS)
    assert set(frame["status"]) == {"COMPLETED"}


def test_invalid_combinations_are_left_out_of_the_grid(tmp_path):
    given = {**QUICK, "algorithm": ("drtp", "mse"), "lr": (1e-3,),
             "problem_type": ("reconstruction",)}
    frame = tune.run_sweep(given, str(tmp_path / "recon"), verbose=False)
    assert frame["algorithm"].tolist() == ["mse"]  # drtp needs labels
    assert "mean_image_test_loss" in frame
    assert hparams.FIELDS_BY_NAME["lr"].grid  # the default sweep searches
