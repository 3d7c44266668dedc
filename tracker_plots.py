"""Reading the trackers' columns of a history.csv and plotting alignment
with backprop over epochs (report.py, the README's figures).  TensorFlow-free:
a report does not import it."""

from __future__ import annotations

import os
from typing import Mapping

from runtime import atomic
import plot_layout


def columns(frame, tracker: str, layers: str = "hidden") -> list[str]:
    """The history columns of one tag family (e.g. `bp_cosine`): hidden
    blocks only (`hidden`) or every layer (`all`); validation columns
    excluded."""
    found = [c for c in frame.columns if c.startswith(f"{tracker}/")]
    if layers == "hidden":
        found = [c for c in found if not c.endswith("/output")]
    return found


def layer_mean(frame, tracker: str, layers: str = "hidden"):
    """Per epoch, the mean of a tag family over its layers (a Series), or
    None when the history has none of them."""
    found = columns(frame, tracker, layers)
    return frame[found].mean(axis=1) if found else None


PLOTTED = (("bp_cosine", "hidden"), ("signal_cosine", "hidden"),
           ("weight_alignment", "all"))


def alignment_figure(histories: Mapping[str, object], plotted=PLOTTED,
                     title: str | None = None):
    """Alignment over epochs, one line per rule: one panel per tracker
    (bp_cosine and signal_cosine averaged over hidden blocks,
    weight_alignment over the layers where it is defined), cosine on the
    y axis from -1 to 1, epochs from 1; the legend under the panels.

    `histories` maps a label (a rule) to a pandas DataFrame read from a
    run's history.csv, or to a list of them (seeds, trials): then the line
    is their mean per epoch and a band spans their min and max.  Returns a
    matplotlib figure, or None when no history has a tracker column.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.lines import Line2D

    panels = []
    for tracker, layers in plotted:
        lines = {}
        for label, frames in histories.items():
            if isinstance(frames, pd.DataFrame):
                frames = [frames]
            curves = [layer_mean(f, tracker, layers) for f in frames]
            curves = [c.set_axis(f["epoch"] + 1 if "epoch" in f else
                                 range(1, len(f) + 1))
                      for c, f in zip(curves, frames) if c is not None]
            if curves:
                lines[label] = pd.concat(curves, axis=1)
        if lines:
            panels.append((tracker, layers, lines))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(4.2 * len(panels), 4.0),
                             layout="constrained")
    # One colour per rule in every panel, also where a panel lacks a
    # rule's line (and in the order of report_plots' other figures).
    colors = {label: f"C{i % 10}" for i, label in enumerate(histories)}
    epochs = 1
    for ax, (tracker, layers, lines) in zip(axes[0], panels):
        for label, curves in lines.items():
            mean = curves.mean(axis=1)
            color = colors[label]
            ax.plot(mean.index, mean.values, marker="o", markersize=3,
                    color=color)
            if curves.shape[1] > 1:
                ax.fill_between(mean.index, curves.min(axis=1),
                                curves.max(axis=1), alpha=0.2, color=color)
            epochs = max(epochs, int(mean.index.max()))
        where = "hidden blocks" if layers == "hidden" else "layers"
        ax.set(title=f"{tracker} (mean over {where})",
               ylabel="cosine with backprop" if tracker != "weight_alignment"
               else "cosine of W and feedback", ylim=(-1.05, 1.05))
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        plot_layout.epoch_axis(ax, epochs)
    # Under the panels, not over them: a rule aligned with backprop
    # (bp itself) draws its lines along the top of every panel.
    drawn = [label for label in histories
             if any(label in lines for _, _, lines in panels)]
    plot_layout.legend_below(fig, [
        Line2D([], [], color=colors[label], marker="o", markersize=3)
        for label in drawn], drawn)
    if title:
        plot_layout.fit_suptitle(fig, title)
    plot_layout.fit_panel_titles(fig, len(panels))
    return fig


def plot_alignment(histories: Mapping[str, object], path: str,
                   plotted=PLOTTED, title: str | None = None) -> str | None:
    """`alignment_figure` written as a PNG to `path`; returns the path, or
    None (nothing written) when no history has a tracker column."""
    import matplotlib.pyplot as plt
    fig = alignment_figure(histories, plotted, title)
    if fig is None:
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path
