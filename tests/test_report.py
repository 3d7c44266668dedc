"""report.py: one row per configuration (mean ± std over executions, the
value alone for one), best first, a header saying what ran, a legend saying
what each number is, numbers in one format per kind, on a finished and on
an interrupted sweep; its bad inputs refused in one line (the plots:
tests/test_report_plots.py)."""

import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import report
import sweep_results
from conftest import refused



def test_table_is_mean_and_std_over_executions_best_first(report_sweep):
    written = report.write_report(report_sweep)
    table = pd.read_csv(written["csv"])
    runs = pd.read_csv(os.path.join(report_sweep, "results.csv"))
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


def test_report_of_an_interrupted_sweep(report_sweep, tmp_path):
    copy = str(tmp_path / "cut")
    shutil.copytree(report_sweep, copy)
    runs = sweep_results.results_table(copy)
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


def test_header_names_what_ran_and_one_execution_has_no_spread(tracked_sweep):
    written = report.write_report(tracked_sweep)
    text = open(written["markdown"]).read()
    lines = text.splitlines()
    assert lines[0] == f"# Sweep {tracked_sweep}"
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
    runs = pd.read_csv(os.path.join(tracked_sweep, "results.csv"))
    for _, row in table.iterrows():
        accuracy = runs.set_index("trial_id").loc[row["trial_id"],
                                                  "test_accuracy"]
        assert f"| {accuracy:.4f} |" in text


def test_tracker_columns_are_the_last_epochs_layer_means(tracked_sweep):
    table = pd.read_csv(report.write_report(tracked_sweep)["csv"])
    text = open(os.path.join(tracked_sweep, "report", "report.md")).read()
    assert "| bp_cosine | weight_alignment |" in text
    for _, row in table.iterrows():
        history = pd.read_csv(os.path.join(tracked_sweep, "trials",
                                           row["trial_id"], "exec0",
                                           "history.csv"))
        hidden = [c for c in history if c.startswith("bp_cosine/")
                  and not c.endswith("/output")]
        assert row["bp_cosine_mean"] == pytest.approx(
            history[hidden].iloc[-1].mean())
        layers = [c for c in history if c.startswith("weight_alignment/")]
        assert row["weight_alignment_mean"] == pytest.approx(
            history[layers].iloc[-1].mean())


def markdown_of(path) -> str:
    data = sweep_results.load_records(path)
    return report.markdown(data, report.configuration_table(data))


def test_report_says_what_each_loss_and_metric_is(one_rule_sweep,
                                                  report_sweep):
    # (no validation there)
    assert "`val_loss`" not in markdown_of(report_sweep)
    text = markdown_of(one_rule_sweep)
    bullets = text[text.index("## What the numbers are"):].splitlines()
    for names in (("`loss`", "`accuracy`"), ("`val_loss`", "`val_accuracy`"),
                  ("`test_loss`", "`test_accuracy`")):
        line = next(b for b in bullets if b.startswith(f"- {names[0]}"))
        assert all(n in line for n in names) and "after training" in line
    curves = next(b for b in bullets if "learning_curves.png" in b)
    for words in ("running mean", "`loss`", "validation", "per epoch"):
        assert words in curves
    seconds = next(b for b in bullets if b.startswith("- `train_seconds`"))
    assert "compil" in seconds


def test_table_numbers_have_one_format_per_kind(timed_sweep):
    def cell(metric, mean, std=0.0, completed=1):
        return report.mean_std({f"{metric}_mean": mean, f"{metric}_std": std,
                                "completed": completed}, metric)
    assert cell("loss", 0.004681) == "0.0047"
    assert cell("loss", 1.1) == "1.1000"
    assert cell("loss", 3.609e7) == "3.609e+07"
    assert cell("loss", 2e-6) == "2.000e-06"  # (not 0.0000)
    assert cell("loss", 0.0) == "0.0000"
    assert cell("train_seconds", 4.1349) == "4.1"
    assert cell("train_seconds", 4.13, 3.03, 2) == "4.1 ± 3.0"
    lines = markdown_of(timed_sweep).splitlines()
    header = next(line for line in lines
                  if line.startswith("| trial")).split(" | ")
    rows = [line.split(" | ") for line in lines if line.startswith("| t0")]
    assert rows
    for row in rows:
        for name, value in zip(header, row):
            if name.endswith("_seconds"):
                assert re.fullmatch(r"\d+\.\d ± \d+\.\d", value), name
            elif name.endswith(("loss", "accuracy")):
                assert re.fullmatch(r"\d\.\d{4} ± \d\.\d{4}", value), name


# --- Bad input ---------------------------------------------------------------


REPORT_BAD_INPUTS = {  # case: (arguments, {damaged record: text}, words)
    "not a folder": ("{missing}", {}, "no_such: no such folder"),
    "not a sweep": ("{empty}", {}, "is not a sweep folder (no sweep.json)"),
    "sweep.json not JSON": ("{sweep}", {"sweep.json": "{not json"},
                            "sweep.json is damaged (JSONDecodeError); "
                            "restore it"),
    "sweep.json not an object": ("{sweep}", {"sweep.json": "[1, 2]"},
                                 "sweep.json is damaged (no JSON object)"),
    "sweep.json without grid": (
        "{sweep}", {"sweep.json": '{"sweep_id": "x", "space": {}, '
                    '"objective": "loss"}'},
        "sweep.json is damaged (no grid)"),
    "metrics.json not JSON": ("{sweep}", {"exec0/metrics.json": "{"},
                              "exec0/metrics.json is damaged "
                              "(JSONDecodeError); remove the run's folder"),
    "failure.json without reason": ("{sweep}", {"exec0/failure.json": "{}"},
                                    "exec0/failure.json is damaged (no "
                                    "reason)"),
    "history.csv not CSV": ("{sweep}", {"exec0/history.csv": '"a,b\n1'},
                            "exec0/history.csv is damaged"),
    "--out is a file": ("{sweep} --out={file}", {},
                        "is a file, not a folder"),
    "no argument": ("", {}, "the following arguments are required: "
                    "sweep_dir (usage: report.py SWEEP_DIR [--out DIR]; see "
                    "--help)"),
    "unknown option": ("{sweep} --outdir=x", {},
                       "unrecognized arguments: --outdir=x"),
    "two folders": ("{sweep} {sweep}", {}, "unrecognized arguments"),
}


@pytest.mark.parametrize("case", REPORT_BAD_INPUTS)
def test_report_refuses_bad_input_with_one_line(case, report_sweep,
                                                tmp_path, capsys):
    sweep = str(tmp_path / "copy")
    shutil.copytree(report_sweep, sweep,  # (as no report was written yet)
                    ignore=shutil.ignore_patterns("report"))
    trials = os.path.join(sweep, "trials")
    run = os.path.join(trials, next(t for t in os.listdir(trials)
                                    if t.startswith("t000")), "exec0")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    given, damaged, expected = REPORT_BAD_INPUTS[case]
    for name, text in damaged.items():
        folder = sweep if name == "sweep.json" else os.path.dirname(run)
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    args = given.format(missing=tmp_path / "no_such", empty=tmp_path / "empty",
                        file=tmp_path / "file", sweep=sweep).split()
    before = sorted(os.listdir(sweep))
    status = report.main(args)
    assert expected in refused(capsys, status, os.path.join(sweep, "report"))
    assert sorted(os.listdir(sweep)) == before
