"""report.py: one row per configuration (mean ± std over executions), best
first, and the plots, on a finished and on an interrupted sweep."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

import report
import tune

GIVEN = {"dataset": ("digits",), "arch": ("8",), "epochs": (2,),
         "objective": ("loss",), "use_xla": (False,), "batch_norm": (False,),
         "algorithm": ("dfa", "bp"), "lr": (1e-2,),
         "executions_per_trial": (2,)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("report") / "exp")
    tune.run_sweep(GIVEN, path, verbose=False)
    return path


def test_table_is_mean_and_std_over_executions_best_first(sweep):
    written = report.write_report(sweep)
    table = pd.read_csv(written["csv"])
    runs = pd.read_csv(os.path.join(sweep, "results.csv"))
    assert len(runs) == 4 and len(table) == 2
    for _, row in table.iterrows():
        mine = runs[runs["trial_id"] == row["trial_id"]]["test_accuracy"]
        assert row["test_accuracy_mean"] == pytest.approx(mine.mean())
        assert row["test_accuracy_std"] == pytest.approx(np.std(mine))
        assert row["completed"] == 2
    assert table["loss_mean"].is_monotonic_increasing  # objective: loss
    text = open(written["markdown"]).read()
    best = table.iloc[0]
    assert f"{best['test_accuracy_mean']:.4f} ± " \
           f"{best['test_accuracy_std']:.4f}" in text
    assert text.index(best["trial_id"]) < text.index(table.iloc[1]["trial_id"])


def test_plots_are_written(sweep):
    written = report.write_report(sweep)
    for name in ("learning_curves", "best_per_rule"):
        with open(written[name], "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert os.path.getsize(written[name]) > 10_000


def test_report_of_an_interrupted_sweep(sweep, tmp_path):
    copy = str(tmp_path / "cut")
    shutil.copytree(sweep, copy)
    runs = tune.results_table(copy)
    cut = os.path.join(copy, "trials", runs["trial_id"].iloc[0], "exec1")
    os.remove(os.path.join(cut, "metrics.json"))  # as if killed mid-run
    table = pd.read_csv(report.write_report(copy)["csv"])
    row = table.set_index("trial_id").loc[runs["trial_id"].iloc[0]]
    assert (row["completed"], row["executions"]) == (1, 2)
    assert row["test_accuracy_std"] == 0.0


def test_cli_refuses_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not os.listdir(tmp_path)


def test_a_sweep_with_trackers_gets_an_alignment_plot(tmp_path):
    given = {**GIVEN, "executions_per_trial": (1,), "epochs": (1,),
             "tracker": ("bp_cosine,weight_alignment",),
             "tracker_every": (5,)}
    sweep = str(tmp_path / "tracked")
    tune.run_sweep(given, sweep, verbose=False)
    written = report.write_report(sweep)
    with open(written["alignment"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert not [n for n in os.listdir(os.path.dirname(written["alignment"]))
                if n.startswith(".tmp")]
