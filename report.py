"""A sweep's results for people: a table and plots.

    python report.py data/exp [--out data/exp/report]

writes, in the output folder (default: <sweep>/report/):

    report.md, report.csv   one row per configuration, best first by the
                            sweep's objective: the mean of each final metric
                            over its executions (± their std where there
                            are two or more); a header names the dataset,
                            arch, epochs and the settings pinned off their
                            defaults; tracker columns when trackers ran;
                            under the table, what each number is (the
                            final losses vs the curves' running means,
                            train_seconds and compile_seconds)
    learning_curves.png     per rule, the loss and accuracy per epoch of its
                            best configuration, training and validation
                            (mean over executions, with their spread where
                            there are several)
    best_per_rule.png       per rule, its best configuration (its searched
                            values under its bar): test accuracy (or loss),
                            bars from zero, and train time
    alignment.png           per rule, alignment with backprop per epoch, when
                            the sweep ran with trackers

report_plots.py draws the plots.  It reads the trial folders, so it works
on a sweep that is still running or was interrupted: runs not finished are
counted, not averaged.  A folder that is not a sweep, a damaged record or an
unusable --out is refused with one line (exit status 2), before anything is
written.  Ctrl-C or SIGTERM stops it with one line, no traceback, each file
whole or absent (atomic.py), and the process ends by that signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import pandas as pd

from runtime import atomic
from runtime import faults
import hparams as hparams_lib
import report_plots
import tracker_plots
from runtime.errors import Interrupted, UsageError
from sweep_results import SweepRecords, load_records, number_format

METRICS = ("test_accuracy", "test_loss", "val_loss", "val_accuracy", "loss",
           "accuracy", "train_seconds", "compile_seconds")
# Table cells: fixed decimals (seconds 1, every other number 4), scientific
# only where fixed ones would be too wide or show a nonzero value as 0.
SECONDS = ("train_seconds", "compile_seconds")
# Tracker columns of the table: (family, layers averaged), as
# tracker_plots.PLOTTED plots them; the value of the last epoch.
TRACKED = (("bp_cosine", "hidden"), ("signal_cosine", "hidden"),
           ("weight_alignment", "all"))


# --- The table ----------------------------------------------------------------


def tracker_values(sweep: SweepRecords, trial_id) -> list[dict]:
    """Per finished run of the trial, the last epoch's tracker families
    (mean over the layers tracker_plots.PLOTTED averages)."""
    values = []
    for frame in sweep.history_frames(trial_id):
        row = {}
        for family, layers in TRACKED:
            mean = tracker_plots.layer_mean(frame, family, layers)
            if mean is not None and len(mean):
                row[family] = float(mean.iloc[-1])
        values.append(row)
    return values


def configuration_table(sweep: SweepRecords) -> pd.DataFrame:
    """One row per trial: its searched values, how many executions finished,
    and mean and std of each final metric (and tracker) over them."""
    rows = []
    for trial_id, runs in sweep.executions.groupby("trial_id", sort=False):
        done = runs[runs["status"] == "COMPLETED"]
        row = {"trial_id": trial_id,
               **{name: runs[name].iloc[0] for name in sweep.searched},
               "completed": len(done), "executions": len(runs),
               "failure": "; ".join(runs["failure"].dropna().astype(str))
               if "failure" in runs else ""}
        samples = {m: done[m].astype(float) for m in METRICS
                   if m in done and len(done)}
        if sweep.tracked and len(done):
            tracked = pd.DataFrame(tracker_values(sweep, trial_id))
            samples.update({c: tracked[c] for c in tracked})
        for name, values in samples.items():
            row[f"{name}_mean"] = values.mean()
            row[f"{name}_std"] = values.std(ddof=0)
        rows.append(row)
    table = pd.DataFrame(rows)
    key = f"{sweep.objective}_mean"
    if key in table:
        table = table.sort_values(key, kind="stable", na_position="last")
    return table.reset_index(drop=True)


def header(sweep: SweepRecords) -> list[str]:
    """What was run, in words: dataset, arch, epochs, rules, what was
    searched and every pinned setting that is not its default."""
    pinned = sweep.pinned
    what = [f"**{name}** {', '.join(map(text, sweep.plan['space'][name]))}"
            for name in ("dataset", "arch", "epochs")
            if name in sweep.plan["space"]]
    others = {name: value for name, value in pinned.items()
              if name not in ("dataset", "arch", "epochs")
              and name in hparams_lib.FIELDS_BY_NAME
              and value != hparams_lib.FIELDS_BY_NAME[name].default}
    searched = [n for n in sweep.searched if n not in pinned]
    lines = [f"# Sweep {sweep.path}", "", "; ".join(what) + ".",
             f"Rules: {', '.join(map(str, sweep.plan['space']['algorithm']))}"
             f". Searched: {', '.join(searched) or 'nothing'}. Objective: "
             f"`{sweep.objective}` (lower is better).",
             "Pinned off their defaults: " + (", ".join(
                 f"{k}={text(v)}" for k, v in others.items()) or "none")
             + " (every other setting: its default in hparams.py)."]
    return lines


def markdown(sweep: SweepRecords, table: pd.DataFrame) -> str:
    metrics = [m for m in METRICS if f"{m}_mean" in table]
    tracked = [f for f, _ in TRACKED if f"{f}_mean" in table]
    columns = ["trial", *sweep.searched, "runs", *metrics, *tracked,
               "failure"]
    several = bool(len(table)) and table["completed"].max() >= 2
    n = len(table)
    summary = (f"{n} configuration{'s' if n != 1 else ''}, best first by `"
               f"{sweep.objective}`; "
               + ("mean ± std over the finished executions of each."
                  if several else "one execution each."))
    lines = [*header(sweep), "", summary, "",
             "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [str(row["trial_id"]), *(text(row[n]) for n in sweep.searched),
                 f"{row['completed']}/{row['executions']}"]
        cells += [mean_std(row, m) for m in [*metrics, *tracked]]
        cells.append(str(row.get("failure") or ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *what_the_numbers_are(metrics, tracked)]
    return "\n".join(lines) + "\n"


# What each column (and curve) is, by the columns it explains: a reader
# meets the training loss twice, as the table's `loss` and as the curves'
# per-epoch values, and they differ.
EXPLAINED = (
    (("loss", "accuracy"),
     "the training split, evaluated once after training with the final "
     "weights in inference mode (dropout off, batch norm's moving "
     "averages). The loss is the model's loss (softmax cross-entropy for "
     "a classification, else mean squared error), a mean over the "
     "examples."),
    (("val_loss", "val_accuracy"),
     "the validation split, evaluated the same way after training: the "
     "last point of the validation curves."),
    (("test_loss", "test_accuracy"),
     "the test split, evaluated the same way after training."),
)
CURVES = (
    "learning_curves.png, per epoch: the validation curve (solid) is the "
    "validation split evaluated after that epoch, as above. The training "
    "curve (dashed) is Keras' running mean over the epoch's batches, each "
    "measured in training mode (dropout on) before its update, while the "
    "weights move: it is usually above the table's `loss`, by most after "
    "the first epoch, whose first batches meet nearly initial weights.")
TIMES = {
    True: "`train_seconds`: the wall time of training (Keras' fit), "
          "compilation excluded; `compile_seconds`: the first epoch's "
          "excess over the others (tracing the step, XLA compiling). "
          "best_per_rule.png compares the rules' best configurations on "
          "both.",
    False: "`train_seconds`: the wall time of training (Keras' fit), "
           "tracing and XLA compiling included (these runs did not record "
           "`compile_seconds`), so that it differs between executions of "
           "one configuration by more than their training does. "
           "best_per_rule.png compares the rules' best configurations on "
           "it."}


def what_the_numbers_are(metrics, tracked) -> list[str]:
    """The report's legend: a bullet per kind of column shown."""
    lines = ["## What the numbers are", ""]
    for names, meaning in EXPLAINED:
        shown = [f"`{n}`" for n in names if n in metrics]
        if shown:
            lines.append(f"- {', '.join(shown)}: {meaning}")
    lines.append(f"- {CURVES}")
    if "train_seconds" in metrics:
        lines.append(f"- {TIMES['compile_seconds' in metrics]}")
    if tracked:
        lines.append(f"- {', '.join(f'`{t}`' for t in tracked)}: the "
                     "trackers' last epoch, a mean over hidden blocks "
                     "(weight_alignment: over the layers where it is "
                     "defined).")
    return lines


def mean_std(row, metric) -> str:
    """'mean ± std' over two or more executions, else the value alone;
    both in the mean's format (number_format)."""
    mean = row.get(f"{metric}_mean")
    if mean is None or pd.isna(mean):
        return "—"
    form = number_format(mean, 1 if metric in SECONDS else 4)
    if row["completed"] < 2:
        return f"{mean:{form}}"
    return f"{mean:{form}} ± {row[f'{metric}_std']:{form}}"


text = hparams_lib.value_text  # a setting's value as people write it


# --- Entry --------------------------------------------------------------------


def output_folder(sweep_dir, out_dir) -> str:
    """--out (default <sweep>/report), refused when it cannot be one."""
    out_dir = out_dir or os.path.join(sweep_dir, "report")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir} is a file, not a folder; name a "
                         "folder (it is created if absent)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: cannot create it in {parent} "
                         "(not a writable folder)")
    return out_dir


def write_report(sweep_dir, out_dir=None) -> dict:
    """Writes the table and plots; returns {name: path} of what it wrote.
    Everything is read and checked before the first file is written."""
    out_dir = output_folder(sweep_dir, out_dir)
    sweep = load_records(sweep_dir)
    table = configuration_table(sweep)
    document = markdown(sweep, table)
    drawn = report_plots.figures(sweep, table)
    os.makedirs(out_dir, exist_ok=True)
    written = {"csv": os.path.join(out_dir, "report.csv"),
               "markdown": os.path.join(out_dir, "report.md")}
    atomic.write_csv(written["csv"], table)
    atomic.write_text(written["markdown"], document)
    for name, figure in drawn.items():
        faults.point("report_figure")
        written[name] = report_plots.save_figure(
            figure, os.path.join(out_dir, f"{name}.png"))
    return written


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every entry point's."""

    def error(self, message):
        raise UsageError(f"{message} (usage: report.py SWEEP_DIR "
                         "[--out DIR]; see --help)")


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <sweep_dir>/report)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's start-up lines")
    try:
        args = parser.parse_args(argv)
        from runtime import quiet
        quiet.set_verbose(args.verbose)
        quiet.install()
        written = write_report(args.sweep_dir, args.out)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return UsageError.exit_status
    except Interrupted as stop:  # (raised once cli.stop_on_signals ran)
        from runtime.progress import SIGNAL_WORDS
        print(f"stopped by {SIGNAL_WORDS[stop.signum]}: each file of the "
              "report is whole or absent; rerun the same command to write "
              "it all", file=sys.stderr, flush=True)
        return stop.exit_status
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    import cli
    cli.stop_on_signals()
    cli.exit_with(main())
