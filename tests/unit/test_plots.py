"""Plots on long streams stay readable and cheap: no per-cell numbers or per-task legend
beyond a dozen tasks, and about 20 renders per run however many tasks it has."""

from __future__ import annotations

import numpy as np

from lifelong.platform import plots
from lifelong.platform.boundaries import PLOT_RENDERS, plots_due


def test_plots_are_rendered_after_every_task_on_short_streams():
    assert [plots_due(t, 5) for t in range(5)] == [True] * 5


def test_plots_are_rendered_about_20_times_on_long_streams_always_at_the_end():
    due = [t for t in range(300) if plots_due(t, 300)]
    assert len(due) == PLOT_RENDERS and due[-1] == 299 and due[0] == 14
    assert plots_due(306, 307) and len([t for t in range(307) if plots_due(t, 307)]) == 21


def test_long_streams_drop_cell_numbers_and_show_a_selection_of_task_curves():
    R = np.random.default_rng(0).uniform(size=(40, 40)).tolist()
    heat = plots.accuracy_heatmap(R)
    assert len(heat.axes[0].texts) == 0  # 1,600 numbers would be unreadable
    curves = plots.accuracy_over_time(R, [0.1] * 40)
    labels = [line.get_label() for line in curves.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels[0] == "task 0" and labels[-1] == "task 39" and len(labels) == plots.ANNOTATE_UP_TO
    short = plots.accuracy_heatmap(np.eye(3).tolist())
    assert len(short.axes[0].texts) == 9
    for fig in (heat, curves, short):
        plots.close(fig)


def test_new_task_accuracy_plots_the_diagonal_and_the_online_curve():
    R = [[0.9, 0.1], [0.5, 0.8]]
    fig = plots.new_task_accuracy(R, [0.7, 0.6])
    test, online = fig.axes[0].get_lines()
    assert list(test.get_ydata()) == [0.9, 0.8] and list(online.get_ydata()) == [0.7, 0.6]
    plots.close(fig)


def test_entries_not_evaluated_are_grey_cells_and_gaps_in_the_curves():
    """eval.tasks=seen and eval.every=2: NaN entries; the curves keep only evaluated points."""
    nan = float("nan")
    R = [[nan, nan, nan], [0.9, 0.8, nan], [0.7, 0.75, 0.9]]
    heat = plots.accuracy_heatmap(R)
    texts = [t.get_text() for t in heat.axes[0].texts]
    assert texts == ["0.90", "0.80", "0.70", "0.75", "0.90"]
    lines = plots.new_task_accuracy(R, [0.5, 0.6, 0.7]).axes[0].get_lines()
    assert list(lines[0].get_xdata()) == [1, 2] and list(lines[0].get_ydata()) == [0.8, 0.9]
    curves = plots.accuracy_over_time(R, [0.1, 0.1, 0.1]).axes[0].get_lines()
    assert all(not np.isnan(line.get_ydata()).any() for line in curves)
    plots.close(heat)


def test_figures_are_drawn_within_their_share_of_the_run_and_always_at_the_end():
    from lifelong.platform.boundaries import FIGURE_SHARE, figures_due

    assert figures_due(False, drawing_seconds=0.0, elapsed_seconds=1.0)
    assert not figures_due(False, drawing_seconds=FIGURE_SHARE * 10 + 0.1, elapsed_seconds=10.0)
    assert figures_due(True, drawing_seconds=100.0, elapsed_seconds=1.0)
