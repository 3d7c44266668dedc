"""report.py: one row per configuration (mean ± std over executions, the
value alone for one), best first, a header saying what ran, and the plots
(titled, labelled, bars from zero), on a finished and on an interrupted
sweep (its bad inputs: tests/test_cli.py)."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

import report
import report_plots
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


TRACKED = {**GIVEN, "executions_per_trial": (1,), "epochs": (1,),
           "tracker": ("bp_cosine,weight_alignment",), "tracker_every": (5,)}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A sweep of one execution per configuration, with trackers."""
    path = str(tmp_path_factory.mktemp("report") / "tracked")
    tune.run_sweep(TRACKED, path, verbose=False)
    return path


def test_a_sweep_with_trackers_gets_an_alignment_plot(tracked):
    written = report.write_report(tracked)
    with open(written["alignment"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert not [n for n in os.listdir(os.path.dirname(written["alignment"]))
                if n.startswith(".tmp")]


def test_header_names_what_ran_and_one_execution_has_no_spread(tracked):
    written = report.write_report(tracked)
    text = open(written["markdown"]).read()
    lines = text.splitlines()
    assert lines[0] == f"# Sweep {tracked}"
    assert "**dataset** digits; **arch** 8; **epochs** 1." in lines
    assert "Rules: dfa, bp. Searched: algorithm. Objective: `loss` " \
           "(lower is better)." in lines
    pinned = next(line for line in lines if line.startswith("Pinned"))
    for setting in ("lr=0.01", "objective=loss", "use_xla=False",
                    "tracker=bp_cosine,weight_alignment", "tracker_every=5"):
        assert setting in pinned
    assert "optimizer=" not in pinned  # (a default)
    assert "±" not in text and "one execution each" in text
    table = pd.read_csv(written["csv"])
    runs = pd.read_csv(os.path.join(tracked, "results.csv"))
    for _, row in table.iterrows():
        accuracy = runs.set_index("trial_id").loc[row["trial_id"],
                                                  "test_accuracy"]
        assert f"| {accuracy:.4f} |" in text


def test_tracker_columns_are_the_last_epochs_layer_means(tracked):
    table = pd.read_csv(report.write_report(tracked)["csv"])
    text = open(os.path.join(tracked, "report", "report.md")).read()
    assert "| bp_cosine | weight_alignment |" in text
    for _, row in table.iterrows():
        history = pd.read_csv(os.path.join(tracked, "trials",
                                           row["trial_id"], "exec0",
                                           "history.csv"))
        hidden = [c for c in history if c.startswith("bp_cosine/")
                  and not c.endswith("/output")]
        assert row["bp_cosine_mean"] == pytest.approx(
            history[hidden].iloc[-1].mean())
        layers = [c for c in history if c.startswith("weight_alignment/")]
        assert row["weight_alignment_mean"] == pytest.approx(
            history[layers].iloc[-1].mean())


def test_plots_have_titles_labels_and_bars_from_zero(sweep, tracked):
    for path, executions in ((tracked, 1), (sweep, 2)):
        data = report.load(path)
        drawn = report_plots.figures(data, report.configuration_table(data))
        assert set(drawn) == ({"learning_curves", "best_per_rule",
                               "alignment"} if path == tracked
                              else {"learning_curves", "best_per_rule"})
        for name, figure in drawn.items():
            title = (figure._suptitle.get_text() if figure._suptitle
                     else figure.axes[0].get_title())
            assert "digits, arch 8" in title, name
            for ax in figure.axes:
                assert ax.get_xlabel() and ax.get_ylabel(), name
        ax = drawn["best_per_rule"].axes[0]
        assert ax.get_ylim() == (0.0, 1.0)
        bars = [p.get_height() for p in ax.patches]
        table = report.configuration_table(data)
        assert bars == pytest.approx(list(
            report_plots.best_per_rule(table)["test_accuracy_mean"]))
        error_bars = [c for c in ax.containers
                      if type(c).__name__ == "ErrorbarContainer"]
        assert bool(error_bars) == (executions > 1)
        if path == tracked:
            for ax in drawn["alignment"].axes:
                assert ax.get_ylim() == (-1.05, 1.05)
                assert "cosine" in ax.get_ylabel()
        import matplotlib.pyplot as plt
        for figure in drawn.values():
            plt.close(figure)
