"""The plots of a sweep's report (report.py): each titled with what ran
(dataset, arch, epochs), with labelled axes, titles wrapped to fit and
legends under the panels, off the data (plot_layout.py).

    learning_curves   per rule, the loss and accuracy per epoch of its best
                      configuration: training (Keras' running mean over
                      each epoch's batches) dashed, validation (evaluated
                      after each epoch) solid; the mean over executions,
                      their spread where there are several
    best_per_rule     per rule, its best configuration (its searched values
                      under the bar): test accuracy (or loss), bars from
                      zero, and its train time (train_seconds, with
                      compile_seconds stacked where the runs measured it);
                      error bars only over two or more executions
    alignment         per rule, alignment with backprop per epoch, when the
                      sweep ran with trackers (tracker_plots.alignment_figure)

Each returns a matplotlib figure (or None when there is nothing to draw),
so that its limits and labels can be read; `save_figure` writes one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from runtime import atomic
import plot_layout
import tracker_plots
from hparams import value_text as text
from sweep_results import SweepRecords


# --- What a plot says about the sweep -----------------------------------------


def best_per_rule(table: pd.DataFrame) -> pd.DataFrame:
    """The first (best) finished configuration of each rule."""
    done = table[table["completed"] > 0]
    return done.groupby("algorithm", sort=False).head(1)


def what_ran(sweep: SweepRecords) -> str:
    """dataset, arch, epochs: for plot titles."""
    space = sweep.plan["space"]
    dataset, arch, epochs = (", ".join(map(str, space.get(name, ["?"])))
                             for name in ("dataset", "arch", "epochs"))
    plural = "" if epochs == "1" else "s"
    return f"{dataset}, arch {arch}, {epochs} epoch{plural}"


def settings(sweep: SweepRecords, row) -> list[str]:
    """A configuration's searched values other than its rule (`lr=0.01`)."""
    return [f"{name}={text(row[name])}" for name in sweep.searched
            if name != "algorithm"]


def rule_color(index: int) -> str:
    """The colour of the index-th rule of `best` in every figure (the
    same order as tracker_plots' lines)."""
    return f"C{index % 10}"


def executions_spread(best: pd.DataFrame, metric: str) -> np.ndarray:
    """The std over executions of each row, 0 where there is one."""
    return np.where(best["completed"] >= 2,
                    best[f"{metric}_std"].to_numpy(dtype=float), 0.0)


def over_executions(spread) -> str:
    """What a panel's error bars are, for its title."""
    return ", mean ± std over executions" if spread.any() else ""


# --- Learning curves ----------------------------------------------------------

# (name, history column prefix, line style): colour says the rule, the
# style says which split.
SPLITS = (("training", "", dict(linestyle="--", marker="s",
                                markerfacecolor="none")),
          ("validation", "val_", dict(linestyle="-", marker="o")))
SPLIT_LEGEND = {
    "training": "training: Keras' running mean over each epoch's batches "
                "(weights moving)",
    "validation": "validation: evaluated after each epoch"}
CURVE_PANELS = ("loss", "accuracy")


def history_curves(frames, column: str):
    """A history column as an (executions, epochs) array over the
    executions that ran as many epochs as the first; None when absent or
    empty (Keras' CSVLogger adds empty val_ columns when there is no
    validation)."""
    if column not in frames[0] or not frames[0][column].notna().any():
        return None
    return np.array([f[column].to_numpy(dtype=float) for f in frames
                     if column in f and len(f) == len(frames[0])])


def draw_curve(ax, values, color, style, single_epoch: bool):
    """The mean over executions, and their min-max spread where there are
    several (a band; an error bar for a single epoch, where a band has no
    width)."""
    epochs = np.arange(1, values.shape[1] + 1)
    mean = values.mean(0)
    ax.plot(epochs, mean, color=color, markersize=7 if single_epoch else 4,
            **style)
    if len(values) < 2:
        return
    if single_epoch:
        ax.errorbar(epochs, mean, yerr=[mean - values.min(0),
                                        values.max(0) - mean],
                    color=color, linestyle="none", capsize=4)
    else:
        ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.2,
                        color=color)


def plot_learning_curves(sweep: SweepRecords, best: pd.DataFrame):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    runs = [(index, row, frames) for index, (_, row)
            in enumerate(best.iterrows())
            if (frames := sweep.history_frames(row["trial_id"]))]
    panels = [m for m in CURVE_PANELS
              if any(history_curves(f, m) is not None for _, _, f in runs)]
    if not panels:
        return None
    epochs = max(len(frames[0]) for _, _, frames in runs)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(5.5 * len(panels), 4.6),
                             layout="constrained")
    axes = axes[0]
    rules, splits = [], []
    for index, row, frames in runs:
        rules.append((rule_color(index), curve_label(sweep, row)))
        for ax, metric in zip(axes, panels):
            for split, prefix, style in SPLITS:
                values = history_curves(frames, prefix + metric)
                if values is not None:
                    draw_curve(ax, values, rule_color(index), style,
                               epochs == 1)
                    splits += [] if split in splits else [split]
    for ax, metric in zip(axes, panels):
        ax.set(title=f"{metric} per epoch", ylabel=metric)
        plot_layout.epoch_axis(ax, epochs)
        ax.grid(alpha=0.3)
    styles = dict((name, style) for name, _, style in SPLITS)
    handles = [Line2D([], [], color=color, linewidth=2)
               for color, _ in rules]
    handles += [Line2D([], [], color="grey", **styles[s]) for s in splits]
    plot_layout.legend_below(fig, handles, [label for _, label in rules]
                             + [SPLIT_LEGEND[s] for s in splits])
    plot_layout.fit_suptitle(fig, "Learning curves of each rule's best "
                                  f"configuration: {what_ran(sweep)}")
    plot_layout.fit_panel_titles(fig, len(panels))
    return fig


def curve_label(sweep: SweepRecords, row) -> str:
    """`dfa: lr=0.01, batch_norm=True`, or the rule alone."""
    return ": ".join([str(row["algorithm"]),
                      ", ".join(settings(sweep, row))]).rstrip(": ")


# --- Best configuration of each rule ------------------------------------------


def plot_best_per_rule(sweep: SweepRecords, best: pd.DataFrame):
    """The score panel (bars from zero, each labelled with its value and
    under it the configuration's searched values) and, where the runs
    recorded it, the train time panel under it.  One or two rules get
    bars of a sensible width, not the whole axes."""
    import matplotlib.pyplot as plt
    metric = ("test_accuracy" if "test_accuracy_mean" in best
              else "test_loss")
    if best.empty or f"{metric}_mean" not in best:
        return None
    ticks = ["\n".join([str(row["algorithm"]), *settings(sweep, row)])
             for _, row in best.iterrows()]
    timed = ("train_seconds_mean" in best
             and best["train_seconds_mean"].notna().any())
    slots = max(3, len(best))  # (one rule: a bar a fifth of the width)
    longest = max(len(line) for tick in ticks for line in tick.split("\n"))
    slot = max(1.0, 0.08 * longest + 0.3)  # inches, for a 9-point line
    lines = max(tick.count("\n") + 1 for tick in ticks)
    height = 3.6 + 0.16 * lines + (2.9 if timed else 0)
    fig, axes = plt.subplots(2 if timed else 1, 1, squeeze=False,
                             figsize=(max(6.0, slots * slot + 1.4), height),
                             layout="constrained")
    axes = axes[:, 0]
    xs = np.arange(len(best))
    colors = [rule_color(i) for i in range(len(best))]
    score_panel(axes[0], best, metric, xs, colors)
    if timed:
        time_panel(axes[1], best, xs, colors)
    for ax in axes:
        ax.set_xlim(-0.5 - (slots - len(best)) / 2,
                    len(best) - 0.5 + (slots - len(best)) / 2)
    axes[0].set_xticks(xs, ticks, fontsize=9)
    searched = len(sweep.searched) > 1  # (more than the rule)
    axes[0].set_xlabel("rule (and the searched values of its best "
                       "configuration)" if searched else "rule")
    plot_layout.fit_suptitle(fig, "Best configuration of each rule: "
                                  f"{what_ran(sweep)}")
    plot_layout.fit_panel_titles(fig, 1)
    return fig


def score_panel(ax, best, metric, xs, colors):
    """Test accuracy (or loss) from zero; accuracy up to 1."""
    means = best[f"{metric}_mean"].to_numpy(dtype=float)
    spread = executions_spread(best, metric)
    ax.bar(xs, means, width=0.6, color=colors,
           yerr=spread if spread.any() else None, capsize=4)
    top = 1.0 if metric == "test_accuracy" else max(1e-12, float(
        np.nanmax(means + spread))) * 1.15
    ax.set_ylim(0.0, top)
    plot_layout.label_bars(ax, xs, means - spread, means + spread,
                           [f"{mean:.3f}" for mean in means])
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')} of the best configuration"
                 + over_executions(spread))


def time_panel(ax, best, xs, colors):
    """train_seconds per rule; compile_seconds stacked on it (hatched)
    where the runs measured it apart (sweeps before did not: their
    train_seconds include compilation)."""
    from matplotlib.patches import Patch
    train = best["train_seconds_mean"].to_numpy(dtype=float)
    spread = executions_spread(best, "train_seconds")
    compiled = ("compile_seconds_mean" in best
                and best["compile_seconds_mean"].notna().any())
    compile_ = (np.nan_to_num(best["compile_seconds_mean"].to_numpy(
        dtype=float)) if compiled else np.zeros_like(train))
    ax.bar(xs, train, width=0.6, color=colors, capsize=4,
           yerr=spread if spread.any() else None)
    labels = [seconds(t) for t in train]
    if compiled:
        ax.bar(xs, compile_, width=0.6, bottom=train, color=colors,
               alpha=0.35, hatch="//", edgecolor="black", linewidth=0)
        labels = [f"{seconds(t)}\n+{seconds(c)} compile"
                  for t, c in zip(train, compile_)]
    tops = np.maximum(train + spread, train + compile_)
    ax.set_ylim(0.0, max(1e-3, float(np.nanmax(tops))) * 1.3)
    plot_layout.label_bars(ax, xs, train - spread, tops, labels)
    ax.set(ylabel="seconds", xticks=xs,
           xticklabels=best["algorithm"].astype(str), xlabel="rule")
    if compiled:
        ax.set_title("train time: train_seconds + compile_seconds "
                     "(hatched)" + over_executions(spread))
        plot_layout.legend_below(ax.figure, [
            Patch(facecolor="grey"),
            Patch(facecolor="grey", alpha=0.35, hatch="//")], [
            "train_seconds: training, compilation excluded",
            "compile_seconds: the first epoch's tracing and compiling"])
    else:
        ax.set_title("train time: train_seconds (compilation included)"
                     + over_executions(spread))


def seconds(value: float) -> str:
    """A bar's seconds: 1 decimal, as in the table, 2 under a second (a
    tiny sweep's 0.07 s would read 0.1)."""
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


# --- Alignment with backprop --------------------------------------------------


def alignment_figure(sweep: SweepRecords, best: pd.DataFrame):
    """Alignment with backprop per epoch (tracker_plots.alignment_figure), when
    the sweep tracked it; None otherwise."""
    if not sweep.tracked:
        return None
    histories = {str(row["algorithm"]): frames for _, row in best.iterrows()
                 if (frames := sweep.history_frames(row["trial_id"]))}
    return tracker_plots.alignment_figure(
        histories, title=f"Alignment with backprop: {what_ran(sweep)}") \
        if histories else None


PLOTS = {"learning_curves": plot_learning_curves,
         "best_per_rule": plot_best_per_rule,
         "alignment": alignment_figure}


def figures(sweep: SweepRecords, table: pd.DataFrame) -> dict:
    """{name: matplotlib figure} of the plots there is data for."""
    import matplotlib
    matplotlib.use("Agg")
    best = best_per_rule(table)
    drawn = {name: plot(sweep, best) for name, plot in PLOTS.items()}
    return {name: figure for name, figure in drawn.items()
            if figure is not None}


def save_figure(figure, path) -> str:
    import matplotlib.pyplot as plt
    with atomic.replacing(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)
    return path
