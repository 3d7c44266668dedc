"""A sweep's results for people: a table and plots.

    python report.py data/exp [--out data/exp/report]

writes, in the output folder (default: <sweep>/report/):

    report.md, report.csv   one row per configuration, mean ± std over its
                            executions, best first by the sweep's objective
    learning_curves.png     per rule, the loss and accuracy per epoch of its
                            best configuration (mean over executions, ± std)
    best_per_rule.png       per rule, the test accuracy (or loss) of its best
                            configuration
    alignment.png           per rule, alignment with backprop per epoch, when
                            the sweep ran with trackers

It reads the trial folders, so it works on a sweep that is still running or
was interrupted: runs not finished are counted, not averaged.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

import atomic
from errors import UsageError

METRICS = ("test_accuracy", "test_loss", "val_loss", "val_accuracy", "loss",
           "accuracy", "train_seconds")


# --- The table ----------------------------------------------------------------


def configuration_table(executions: pd.DataFrame, searched, objective):
    """One row per trial: its searched values, how many executions finished,
    and mean and std of each final metric over them."""
    rows = []
    for trial_id, runs in executions.groupby("trial_id", sort=False):
        done = runs[runs["status"] == "COMPLETED"]
        row = {"trial_id": trial_id,
               **{name: runs[name].iloc[0] for name in searched},
               "completed": len(done), "executions": len(runs),
               "failure": "; ".join(runs["failure"].dropna().astype(str))
               if "failure" in runs else ""}
        for metric in METRICS:
            if metric in done and len(done):
                values = done[metric].astype(float)
                row[f"{metric}_mean"] = values.mean()
                row[f"{metric}_std"] = values.std(ddof=0)
        rows.append(row)
    table = pd.DataFrame(rows)
    key = f"{objective}_mean"
    if key in table:
        table = table.sort_values(key, kind="stable", na_position="last")
    return table.reset_index(drop=True)


def markdown(table: pd.DataFrame, searched, sweep_dir, objective) -> str:
    metrics = [m for m in METRICS if f"{m}_mean" in table]
    header = ["trial", *searched, "runs", *metrics, "failure"]
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(table)} configuration(s), best first by mean "
             f"`{objective}`; mean ± std over finished executions.", "",
             "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["trial_id"]), *(str(row[n]) for n in searched),
                 f"{row['completed']}/{row['executions']}"]
        cells += [mean_std(row, m) for m in metrics]
        cells.append(str(row.get("failure") or ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std(row, metric) -> str:
    mean = row.get(f"{metric}_mean")
    if mean is None or pd.isna(mean):
        return "—"
    digits = 2 if metric == "train_seconds" else 4
    return f"{mean:.{digits}f} ± {row[f'{metric}_std']:.{digits}f}"


# --- The plots ----------------------------------------------------------------


def best_per_rule(table: pd.DataFrame) -> pd.DataFrame:
    """The first (best) finished configuration of each rule."""
    done = table[table["completed"] > 0]
    return done.groupby("algorithm", sort=False).head(1)


def curves(sweep_dir, executions, trial_id) -> list[pd.DataFrame]:
    runs = executions[(executions["trial_id"] == trial_id)
                      & (executions["status"] == "COMPLETED")]
    frames = []
    for _, run in runs.iterrows():
        path = os.path.join(sweep_dir, "trials", trial_id,
                            f"exec{run['execution']}", "history.csv")
        if os.path.exists(path):
            frames.append(pd.read_csv(path))
    return frames


def plot_learning_curves(sweep_dir, executions, best):
    import matplotlib.pyplot as plt
    panels = [("loss", "val_loss"), ("accuracy", "val_accuracy")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for _, row in best.iterrows():
        frames = curves(sweep_dir, executions, row["trial_id"])
        if not frames:
            continue
        for ax, names in zip(axes, panels):
            # Keras' CSVLogger adds empty val_ columns when there is no
            # validation: take the validation curve only if it has values.
            name = next((n for n in reversed(names) if n in frames[0]
                         and frames[0][n].notna().any()), None)
            if name is None:
                continue
            values = np.array([f[name].to_numpy() for f in frames
                               if len(f) == len(frames[0])])
            epochs = np.arange(1, values.shape[1] + 1)
            mean, std = values.mean(0), values.std(0)
            line, = ax.plot(epochs, mean, marker="o", ms=3,
                            label=f"{row['algorithm']} ({row['trial_id']})")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2,
                            color=line.get_color())
            ax.set_ylabel(name)
            drawn = True
    for ax in axes:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curves: best configuration of each rule")
    fig.tight_layout()
    return fig if drawn else plt.close(fig)


def plot_best_per_rule(sweep_dir, executions, best):
    import matplotlib.pyplot as plt
    metric = ("test_accuracy" if "test_accuracy_mean" in best
              else "test_loss")
    if best.empty or f"{metric}_mean" not in best:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(best)), 4))
    ax.bar(best["algorithm"].astype(str), best[f"{metric}_mean"],
           yerr=best[f"{metric}_std"], capsize=4, color="tab:blue")
    for x, (mean, std) in enumerate(zip(best[f"{metric}_mean"],
                                        best[f"{metric}_std"])):
        ax.text(x, mean + std, f"{mean:.3f}", ha="center", va="bottom",
                fontsize=8)
    low = best[f"{metric}_mean"].min()
    if metric == "test_accuracy":
        ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel(f"{metric} (best configuration, mean ± std)")
    ax.set_title("Best configuration of each rule")
    fig.tight_layout()
    return fig


def write_alignment(sweep_dir, executions, best, path):
    """Alignment with backprop per epoch (trackers.plot_alignment), when the
    sweep tracked it; returns the path, or None when nothing was tracked."""
    histories = {str(row["algorithm"]): frames for _, row in best.iterrows()
                 if (frames := curves(sweep_dir, executions,
                                      row["trial_id"]))}
    tracked = any("/" in column for frames in histories.values()
                  for frame in frames for column in frame.columns)
    if not tracked:  # (and spare the TensorFlow import trackers.py makes)
        return None
    import trackers
    tmp = os.path.join(os.path.dirname(path), ".tmp-alignment.png")
    if histories and trackers.plot_alignment(histories, tmp):
        os.replace(tmp, path)  # atomic, like every other output
        return path
    return None


# --- Entry --------------------------------------------------------------------


def write_report(sweep_dir, out_dir=None) -> dict:
    """Writes the table and plots; returns {name: path} of what it wrote."""
    import matplotlib
    matplotlib.use("Agg")
    import tune
    plan = tune.read_json(os.path.join(sweep_dir, tune.SWEEP_FILE))
    executions = tune.results_table(sweep_dir)  # refuses a non-sweep folder
    if executions.empty:
        raise UsageError(f"{sweep_dir}: no trial has started yet")
    searched = [n for n, v in plan["space"].items() if len(v) > 1]
    searched = sorted(set(searched) | {"algorithm"},
                      key=[*plan["space"]].index)
    out_dir = out_dir or os.path.join(sweep_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    table = configuration_table(executions, searched, plan["objective"])
    written = {"csv": os.path.join(out_dir, "report.csv"),
               "markdown": os.path.join(out_dir, "report.md")}
    atomic.write_csv(written["csv"], table)
    atomic.write_text(written["markdown"],
                      markdown(table, searched, sweep_dir, plan["objective"]))
    best = best_per_rule(table)
    plots = {"learning_curves": plot_learning_curves,
             "best_per_rule": plot_best_per_rule}
    for name, plot in plots.items():
        figure = plot(sweep_dir, executions, best)
        if figure is not None:
            written[name] = save_figure(figure,
                                        os.path.join(out_dir, f"{name}.png"))
    alignment = write_alignment(sweep_dir, executions, best,
                                os.path.join(out_dir, "alignment.png"))
    if alignment:
        written["alignment"] = alignment
    return written


def save_figure(figure, path) -> str:
    import matplotlib.pyplot as plt
    with atomic.replacing(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <sweep_dir>/report)")
    args = parser.parse_args(argv)
    try:
        if not os.path.isdir(args.sweep_dir):
            raise UsageError(f"{args.sweep_dir}: no such folder")
        written = write_report(args.sweep_dir, args.out)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
