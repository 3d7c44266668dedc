"""The plots of a sweep's report (report.py): each titled with what ran
(dataset, arch, epochs), with labelled axes.

    learning_curves   per rule, the loss and accuracy per epoch of its best
                      configuration (mean over executions, their spread
                      where there are several)
    best_per_rule     per rule, the test accuracy (or loss) of its best
                      configuration: bars from zero, error bars only where
                      it has two or more executions
    alignment         per rule, alignment with backprop per epoch, when the
                      sweep ran with trackers (tracker_plots.alignment_figure)

Each returns a matplotlib figure (or None when there is nothing to draw),
so that its limits and labels can be read; `save_figure` writes one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

import atomic
import tracker_plots

if TYPE_CHECKING:
    from report import Sweep


def best_per_rule(table: pd.DataFrame) -> pd.DataFrame:
    """The first (best) finished configuration of each rule."""
    done = table[table["completed"] > 0]
    return done.groupby("algorithm", sort=False).head(1)


def what_ran(sweep: Sweep) -> str:
    """dataset, arch, epochs: for plot titles."""
    space = sweep.plan["space"]
    parts = [", ".join(map(str, space.get(name, ["?"])))
             for name in ("dataset", "arch")]
    epochs = ", ".join(map(str, space.get("epochs", ["?"])))
    return f"{parts[0]}, arch {parts[1]}, {epochs} epoch(s)"


CURVE_LABELS = {"loss": "training loss", "val_loss": "validation loss",
                "accuracy": "training accuracy",
                "val_accuracy": "validation accuracy"}


def plot_learning_curves(sweep: Sweep, best: pd.DataFrame):
    import matplotlib.pyplot as plt
    panels = [("loss", "val_loss"), ("accuracy", "val_accuracy")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for _, row in best.iterrows():
        frames = sweep.history_frames(row["trial_id"])
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
            mean = values.mean(0)
            line, = ax.plot(epochs, mean, marker="o", ms=3,
                            label=f"{row['algorithm']} ({row['trial_id']})")
            if len(values) > 1:  # the spread of the executions
                ax.fill_between(epochs, values.min(0), values.max(0),
                                alpha=0.2, color=line.get_color())
            ax.set_ylabel(CURVE_LABELS[name])
            ax.set_title(f"{CURVE_LABELS[name]} per epoch")
            drawn = True
    for ax in axes:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curves of each rule's best configuration: "
                 f"{what_ran(sweep)}")
    fig.tight_layout()
    return fig if drawn else plt.close(fig)


def plot_best_per_rule(sweep: Sweep, best: pd.DataFrame):
    """Bars from zero; error bars (std over executions) only where a rule's
    best configuration has two or more."""
    import matplotlib.pyplot as plt
    metric = ("test_accuracy" if "test_accuracy_mean" in best
              else "test_loss")
    if best.empty or f"{metric}_mean" not in best:
        return None
    means = best[f"{metric}_mean"].to_numpy(dtype=float)
    spread = np.where(best["completed"] >= 2,
                      best[f"{metric}_std"].to_numpy(dtype=float), 0.0)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(best)), 4))
    ax.bar(best["algorithm"].astype(str), means, color="tab:blue",
           yerr=spread if spread.any() else None, capsize=4)
    for x, (mean, std) in enumerate(zip(means, spread)):
        ax.text(x, mean + std, f"{mean:.3f}", ha="center", va="bottom",
                fontsize=8)
    top = 1.0 if metric == "test_accuracy" else max(1e-12, float(
        np.nanmax(means + spread))) * 1.15
    ax.set_ylim(0.0, top)
    several = " (mean ± std over executions)" if spread.any() else ""
    ax.set_ylabel(metric.replace("_", " ") + several)
    ax.set_xlabel("rule")
    ax.set_title(f"Best configuration of each rule: {what_ran(sweep)}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def alignment_figure(sweep: Sweep, best: pd.DataFrame):
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


def figures(sweep: Sweep, table: pd.DataFrame) -> dict:
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
