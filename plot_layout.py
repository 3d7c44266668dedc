"""What makes a report's plot readable, shared by report_plots.py and
tracker_plots.py: titles that fit the figure, epoch axes from 1 with integer
ticks, value labels inside the axes, legends off the data.  matplotlib only
(no TensorFlow); figures are made with layout="constrained", which makes
room for a wrapped suptitle and for legends placed outside the axes."""

from __future__ import annotations

import textwrap

# The share of the figure's (or a panel's) width a title may take.
TITLE_WIDTH = 0.96
# Title sizes: the figure's above its panels'.
SUPTITLE_SIZE = 12
PANEL_TITLE_SIZE = 10.5


def fit_suptitle(fig, text: str, fontsize: float = SUPTITLE_SIZE):
    """The figure's title, wrapped onto as many lines as it needs to fit
    the figure's width (a layout engine moves the axes down for it, but
    never shortens it: a long one is cut at the figure's edges)."""
    title = fig.suptitle(text, fontsize=fontsize)
    wrap_to_width(title, TITLE_WIDTH * fig.bbox.width)
    return title


def fit_panel_titles(fig, columns: int):
    """Each axes' title, smaller than the figure's, wrapped to its panel's
    width (`columns` panels per row), so that neighbouring titles do not
    overlap, and to twice its distance to the figure's nearer edge: it is
    centred on its axes, which the y label moves off the panel's centre."""
    fig.get_layout_engine().execute(fig)  # (where each axes is)
    for ax in fig.axes:
        if ax.get_title():
            ax.title.set_fontsize(PANEL_TITLE_SIZE)
            box = ax.get_window_extent()
            centre = (box.x0 + box.x1) / 2
            room = 2 * min(centre - fig.bbox.x0, fig.bbox.x1 - centre)
            wrap_to_width(ax.title, TITLE_WIDTH * min(
                room, fig.bbox.width / columns))


def wrap_to_width(text_artist, width_px: float):
    """Rewraps a Text artist's words onto more lines until its rendered
    width is at most `width_px` (a single word wider than that stays as
    it is: one too long word is better than a broken one)."""
    renderer = text_artist.figure.canvas.get_renderer()
    words = " ".join(text_artist.get_text().split())
    measured = text_artist.get_window_extent(renderer).width
    chars = len(words)
    while measured > width_px and chars > 8:
        # The first guess scales by the measured overflow, later ones
        # step down: characters differ in width.
        chars = min(chars - 1, int(chars * width_px / measured))
        text_artist.set_text(textwrap.fill(words, max(chars, 8)))
        measured = text_artist.get_window_extent(renderer).width


def epoch_ticks(epochs: int) -> list[int]:
    """Integer ticks from 1: every epoch up to 10, else 1 and multiples of
    a round step (at most about 8 of them)."""
    if epochs <= 10:
        return list(range(1, epochs + 1))
    step = next(s for s in round_steps() if epochs / s <= 8)
    return [1] + [k for k in range(step, epochs + 1, step)
                  if k - 1 >= step / 2]  # (not crowding the 1)


def round_steps():
    scale = 1
    while True:
        for factor in (1, 2, 5):
            yield factor * scale
        scale *= 10


def epoch_axis(ax, epochs: int):
    """An x axis of epochs 1..`epochs`: integer ticks with 1 among them,
    limits half an epoch either side (one epoch is drawn at x = 1 in a
    window of one epoch, not on matplotlib's fractional ticks around a
    single point)."""
    ax.set_xticks(epoch_ticks(epochs))
    pad = 0.5 if epochs <= 10 else 0.02 * (epochs - 1)
    ax.set_xlim(1 - pad, epochs + pad)
    ax.set_xlabel("epoch")


def label_bars(ax, xs, lows, highs, labels, fontsize: float = 8):
    """A value label per bar: above `highs` (the bar's top, or its error
    bar's) where the axes have room for it under their upper limit (set
    it first), else inside the bar under `lows` (its top, or the lower end
    of its error bar), in white: never over the frame."""
    low, high = ax.get_ylim()
    # The label's height in data units, from the axes' height before the
    # layout shrinks it a little (hence the margin of 1.6).
    inches = ax.get_position().height * ax.figure.get_figheight()
    line = 1.6 * fontsize / 72 / inches * (high - low)
    for x, bottom, top, label in zip(xs, lows, highs, labels):
        needed = line * (label.count("\n") + 1)
        if top + needed <= high:
            ax.text(x, top + 0.01 * (high - low), label, ha="center",
                    va="bottom", fontsize=fontsize)
        else:
            ax.text(x, bottom - 0.015 * (high - low), label, ha="center",
                    va="top", fontsize=fontsize, color="white",
                    fontweight="bold")


def legend_below(fig, handles, labels, fontsize="small"):
    """One legend for the whole figure, under its axes (off every panel's
    data), in as many columns as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    for columns in range(len(handles), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center",
                            ncols=columns, fontsize=fontsize)
        if (columns == 1 or legend.get_window_extent(renderer).width
                <= TITLE_WIDTH * fig.bbox.width):
            return legend
        legend.remove()
