"""report_plots.py: the report's figures, titled with what ran, labelled,
bars from zero, every text inside the figure, value labels inside the
axes, the best configuration's settings under its bar, legends off the
data, epochs from 1, train time per rule (the table: tests/test_report.py)."""

import os

import numpy as np
import pandas as pd
import pytest

import report
import report_plots
import sweep_results



PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(report_sweep):
    written = report.write_report(report_sweep)
    for name in ("learning_curves", "best_per_rule"):
        with open(written[name], "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert os.path.getsize(written[name]) > 10_000


def test_a_sweep_with_trackers_gets_an_alignment_plot(tracked_sweep):
    written = report.write_report(tracked_sweep)
    with open(written["alignment"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert not [n for n in os.listdir(os.path.dirname(written["alignment"]))
                if n.startswith(".tmp")]


def test_plots_have_titles_labels_and_bars_from_zero(report_sweep,
                                                     tracked_sweep):
    for path, executions in ((tracked_sweep, 1), (report_sweep, 2)):
        data = sweep_results.load_records(path)
        drawn = report_plots.figures(data, report.configuration_table(data))
        assert set(drawn) == ({"learning_curves", "best_per_rule",
                               "alignment"} if path == tracked_sweep
                              else {"learning_curves", "best_per_rule"})
        for name, figure in drawn.items():
            title = (figure._suptitle.get_text() if figure._suptitle
                     else figure.axes[0].get_title())
            assert "digits, arch 8" in " ".join(title.split()), name
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
        if path == tracked_sweep:
            for ax in drawn["alignment"].axes:
                assert ax.get_ylim() == (-1.05, 1.05)
                assert "cosine" in ax.get_ylabel()
        import matplotlib.pyplot as plt
        for figure in drawn.values():
            plt.close(figure)


def drawn(path, only=tuple(report_plots.PLOTS), **space):
    """The report's figures of a sweep (those named `only`), rendered with
    the Agg canvas (so that every artist has its place), its plan's `space`
    overridden (a longer title) where given."""
    import matplotlib
    matplotlib.use("Agg")  # (as report_plots.figures does)
    data = sweep_results.load_records(path)
    data.plan["space"].update(space)
    best = report_plots.best_per_rule(report.configuration_table(data))
    figures = {name: report_plots.PLOTS[name](data, best) for name in only}
    figures = {name: f for name, f in figures.items() if f is not None}
    for figure in figures.values():
        figure.canvas.draw()
    return figures


def close(figures):
    import matplotlib.pyplot as plt
    for figure in figures.values():
        plt.close(figure)


LONG = {"arch": ["256-256-256-256-256-256"]}


@pytest.fixture(scope="module")
def plots(report_sweep, tracked_sweep, one_rule_sweep, timed_sweep,
          untimed_sweep):
    """{case: the report's figures}, drawn once for the tests below: two
    rules × two executions (with and without compile_seconds), trackers
    and one epoch, one rule and one epoch, and long titles."""
    cases = {"two_executions": drawn(timed_sweep),
             "older": drawn(untimed_sweep, only=["best_per_rule"]),
             "tracked": drawn(tracked_sweep),
             "one_rule": drawn(one_rule_sweep),
             "long_title": drawn(timed_sweep, ["learning_curves",
                                         "best_per_rule"], **LONG),
             "tracked_long_title": drawn(tracked_sweep, ["alignment"], **LONG),
             "bp_on_top": {"alignment": bp_on_top()}}
    yield cases
    for figures in cases.values():
        close(figures)


def bp_on_top():
    """The alignment plot of a tracked sweep of 3 epochs, drawn from
    histories like the one that hid bp's line under the legend: bp's
    cosines are all 1, along the top of every panel."""
    import tracker_plots
    epochs = np.arange(3)
    dfa = pd.DataFrame({"epoch": epochs, "bp_cosine/block1": [0.1, 0.4, 0.4],
                        "weight_alignment/block1": [0.0, 0.3, 0.35]})
    bp = pd.DataFrame({"epoch": epochs, "bp_cosine/block1": [1.0] * 3,
                       "weight_alignment/block1": [1.0] * 3})
    figure = tracker_plots.alignment_figure(
        {"dfa": dfa, "bp": bp}, title="Alignment with backprop: digits, "
        "arch 256-256, 3 epochs")
    figure.canvas.draw()
    return figure


def all_figures(plots):
    return [(f"{case} {name}", figure) for case, figures in plots.items()
            for name, figure in figures.items()]


def inside(inner, outer, slack=1.0) -> bool:
    return (inner.x0 >= outer.x0 - slack and inner.y0 >= outer.y0 - slack
            and inner.x1 <= outer.x1 + slack and inner.y1 <= outer.y1 + slack)


def texts(figure):
    """Every visible, non-empty Text of the figure but the tick labels
    (matplotlib keeps labels of ticks outside the view, not drawn)."""
    from matplotlib.text import Text
    ticks = {id(label) for ax in figure.axes for axis in (ax.xaxis, ax.yaxis)
             for tick in axis.get_major_ticks() + axis.get_minor_ticks()
             for label in (tick.label1, tick.label2)}
    return [t for t in figure.findobj(Text) if t.get_visible()
            and t.get_text().strip() and id(t) not in ticks]


def out_of_figure(figure) -> list[str]:
    renderer = figure.canvas.get_renderer()
    out = [t.get_text() for t in texts(figure)
           if not inside(t.get_window_extent(renderer), figure.bbox)]
    return out + [f"the tick labels of axes {i}"
                  for i, ax in enumerate(figure.axes)
                  if not inside(ax.get_tightbbox(renderer), figure.bbox)]


def overlapping_titles(figure) -> list[tuple]:
    renderer = figure.canvas.get_renderer()
    titles = [ax.title for ax in figure.axes if ax.get_title()]
    titles += [figure._suptitle] if figure._suptitle else []
    boxes = [t.get_window_extent(renderer) for t in titles]
    return [(a.get_text(), b.get_text())
            for i, (a, box) in enumerate(zip(titles, boxes))
            for b, other in zip(titles[i + 1:], boxes[i + 1:])
            if box.overlaps(other)]


def labels_longer_than_their_axes(figure) -> list[str]:
    """y labels that reach past their axes' top or bottom (into a title,
    or the panel above)."""
    renderer = figure.canvas.get_renderer()
    return [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()
            and ax.yaxis.label.get_window_extent(renderer).height
            > ax.get_window_extent(renderer).height + 1]


def test_every_title_and_text_lies_inside_its_figure(plots):
    for name, figure in all_figures(plots):
        assert not out_of_figure(figure), name
        assert not overlapping_titles(figure), name
        assert not labels_longer_than_their_axes(figure), name
    long_title = plots["long_title"]["best_per_rule"]._suptitle.get_text()
    assert "\n" in long_title  # (wrapped: it would not fit on one line)
    assert " ".join(long_title.split()) == ("Best configuration of each "
                                            "rule: digits, arch "
                                            f"{LONG['arch'][0]}, 2 epochs")


def value_labels_outside_their_axes(figure) -> list[str]:
    renderer = figure.canvas.get_renderer()
    return [t.get_text() for ax in figure.axes for t in ax.texts
            if not inside(t.get_window_extent(renderer),
                          ax.get_window_extent(renderer))]


def test_value_labels_lie_inside_the_axes_also_for_bars_at_the_top(
        timed_sweep):
    data = sweep_results.load_records(timed_sweep)
    table = report.configuration_table(data)
    near_one = table.assign(test_accuracy_mean=0.995,
                            test_accuracy_std=0.004)
    as_loss = table.drop(columns=["test_accuracy_mean", "test_accuracy_std"])
    for given in (table, near_one, as_loss):
        best = report_plots.best_per_rule(given)
        figure = report_plots.plot_best_per_rule(data, best)
        figure.canvas.draw()
        for ax in figure.axes:
            assert len(ax.texts) == len(best)
        assert not value_labels_outside_their_axes(figure)
        close({"": figure})


def test_best_per_rule_names_the_settings_and_draws_one_bar_narrow(
        one_rule_sweep, plots):
    from matplotlib.text import Text
    data = sweep_results.load_records(one_rule_sweep)
    best = report_plots.best_per_rule(report.configuration_table(data))
    assert len(best) == 1
    figure = plots["one_rule"]["best_per_rule"]
    words = [t.get_text() for t in figure.findobj(Text)]
    setting = f"lr={report.text(best.iloc[0]['lr'])}"
    assert [w for w in words if "dfa" in w and setting in w]
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    (bar,) = ax.patches
    share = (bar.get_window_extent(renderer).width
             / ax.get_window_extent(renderer).width)
    assert 0.1 < share < 0.3  # not the whole axes


def visible_ticks(ax):
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_epoch_axes_start_at_1_with_integer_ticks(plots):
    epochs = {"two_executions": 2, "long_title": 2, "tracked": 1,
              "tracked_long_title": 1, "one_rule": 1, "bp_on_top": 3}
    checked = 0
    for case, figures in plots.items():
        for ax in [ax for name in ("learning_curves", "alignment")
                   if name in figures for ax in figures[name].axes]:
            assert ax.get_xlabel() == "epoch"
            xs = np.concatenate([line.get_xdata() for line in ax.lines
                                 if line.get_transform() == ax.transData])
            assert xs.min() == 1 and xs.max() == epochs[case], case
            # One epoch: a tick at 1 alone, in a window of one epoch.
            assert visible_ticks(ax) == list(range(1, epochs[case] + 1))
            low, high = ax.get_xlim()
            assert 0 < low < 1 and high > epochs[case] and high - low >= 1
            checked += 1
    # Learning curves: 2 panels in 4 cases; alignment (of bp_cosine and
    # weight_alignment): 2 panels in 3.
    assert checked == 4 * 2 + 3 * 2


def covered(box, ax, dpi) -> list:
    """The lines of `ax` whose points or segments, drawn as wide as the
    line and its markers are, touch the display box `box`."""
    found = []
    for line in ax.lines:
        reach = max(line.get_linewidth(), line.get_markersize()) / 2
        near = box.padded(reach * dpi / 72)
        points = line.get_transform().transform(line.get_xydata())
        path = line.get_transform().transform_path(line.get_path())
        if near.count_contains(points) or path.intersects_bbox(
                near, filled=False):
            found.append(line)
    return found


def test_legends_cover_no_data_point_nor_bar(plots):
    checked = 0
    for name, figure in all_figures(plots):
        renderer = figure.canvas.get_renderer()
        legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes
                                      if ax.get_legend())]
        # (best_per_rule has one where it stacks compile_seconds)
        assert legends or name.endswith("best_per_rule"), name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in figure.axes:
                assert not covered(box, ax, figure.dpi), name
                assert not [p for p in ax.patches if box.overlaps(
                    p.get_window_extent(renderer))], name
            checked += 1
    assert checked >= 6


def test_train_time_per_rule_with_compile_seconds(timed_sweep, plots):
    data = sweep_results.load_records(timed_sweep)
    table = report.configuration_table(data)
    text = report.markdown(data, table)
    header = next(line for line in text.splitlines()
                  if line.startswith("| trial"))
    assert "| train_seconds | compile_seconds |" in header
    for _, row in table.iterrows():
        assert row["compile_seconds_mean"] == pytest.approx(2.5)
        assert (f"{row['train_seconds_mean']:.1f} ± "
                f"{row['train_seconds_std']:.1f} | 2.5 ± 0.5 |") in text
    assert "`compile_seconds`: the first epoch's" in text
    best = report_plots.best_per_rule(table)
    time_axes = plots["two_executions"]["best_per_rule"].axes[1]
    assert "seconds" in time_axes.get_ylabel()
    heights = [p.get_height() for p in time_axes.patches]
    bottoms = [p.get_y() for p in time_axes.patches]
    train = list(best["train_seconds_mean"])
    assert heights == pytest.approx(train + [2.5] * len(best))
    assert bottoms == pytest.approx([0.0] * len(best) + train)
    labels = [t.get_text() for t in time_axes.texts]
    assert labels == [report_plots.seconds(t) + "\n+2.5 s compile"
                      for t in train]
    assert report_plots.seconds(0.074) == "0.07 s"
    assert report_plots.seconds(4.13) == "4.1 s"
    assert [t.get_text() for t in time_axes.get_xticklabels()] == list(
        best["algorithm"])


def test_train_time_per_rule_of_a_sweep_without_compile_seconds(untimed_sweep,
                                                                plots):
    data = sweep_results.load_records(untimed_sweep)
    table = report.configuration_table(data)
    text = report.markdown(data, table)
    assert "compile_seconds |" not in text
    assert "did not record `compile_seconds`" in text
    best = report_plots.best_per_rule(table)
    time_axes = plots["older"]["best_per_rule"].axes[1]
    assert [p.get_height() for p in time_axes.patches] == pytest.approx(
        list(best["train_seconds_mean"]))
    assert "compilation included" in time_axes.get_title()
