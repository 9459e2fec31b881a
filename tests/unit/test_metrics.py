"""ACC / BWT / FWT / forgetting on hand-computed accuracy matrices (0-based R[i][j])."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.metrics import (average_accuracy, backward_transfer, forgetting, forward_transfer,
                              summarize)

# R[i][j]: accuracy on task j after training task i.
R = [
    [0.90, 0.20, 0.10],
    [0.95, 0.80, 0.30],  # task 0 improved after task 1 (so max over earlier rows != diagonal)
    [0.60, 0.85, 0.95],  # task 1 ends above its diagonal value (negative forgetting)
]
B = [0.10, 0.15, 0.20]  # accuracy of each task at initialisation

approx = pytest.approx


def test_average_accuracy_after_each_task():
    # after task 0: 0.90
    assert average_accuracy(R[:1]) == approx(0.90)
    # after task 1: (0.95 + 0.80) / 2 = 1.75 / 2 = 0.875
    assert average_accuracy(R[:2]) == approx(0.875)
    # after task 2: (0.60 + 0.85 + 0.95) / 3 = 2.40 / 3 = 0.80
    assert average_accuracy(R) == approx(0.80)


def test_backward_transfer():
    # after task 1: R[1][0] - R[0][0] = 0.95 - 0.90 = 0.05
    assert backward_transfer(R[:2]) == approx(0.05)
    # after task 2: ((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2
    #             = ((0.60 - 0.90) + (0.85 - 0.80)) / 2 = (-0.30 + 0.05) / 2 = -0.125
    assert backward_transfer(R) == approx(-0.125)


def test_forward_transfer():
    # after task 1: R[0][1] - b[1] = 0.20 - 0.15 = 0.05
    assert forward_transfer(R[:2], B) == approx(0.05)
    # after task 2: ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2
    #             = ((0.20 - 0.15) + (0.30 - 0.20)) / 2 = (0.05 + 0.10) / 2 = 0.075
    assert forward_transfer(R, B) == approx(0.075)


def test_forgetting_uses_the_max_over_earlier_rows_only():
    # after task 1: max(R[0][0]) - R[1][0] = 0.90 - 0.95 = -0.05
    assert forgetting(R[:2]) == approx(-0.05)
    # after task 2: j=0: max(R[0][0], R[1][0]) - R[2][0] = max(0.90, 0.95) - 0.60 = 0.35
    #               j=1: max(R[0][1], R[1][1]) - R[2][1] = max(0.20, 0.80) - 0.85 = -0.05
    #               mean = (0.35 - 0.05) / 2 = 0.15
    assert forgetting(R) == approx(0.15)


def test_forgetting_differs_from_minus_bwt():
    # -BWT = 0.125 compares with the diagonal; forgetting (0.15) with the best earlier value
    assert forgetting(R) != approx(-backward_transfer(R))


def test_no_forgetting_matrix():
    perfect = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    # ACC = 3/3 = 1; BWT = ((1-1) + (1-1))/2 = 0; forgetting = ((1-1) + (1-1))/2 = 0
    # FWT with b = 0.1 everywhere: ((0 - 0.1) + (0 - 0.1)) / 2 = -0.1
    assert average_accuracy(perfect) == approx(1.0)
    assert backward_transfer(perfect) == approx(0.0)
    assert forgetting(perfect) == approx(0.0)
    assert forward_transfer(perfect, [0.1, 0.1, 0.1]) == approx(-0.1)


def test_numpy_input_gives_the_same_numbers():
    arr = np.array(R)
    assert average_accuracy(arr) == approx(0.80)
    assert backward_transfer(arr) == approx(-0.125)
    assert forward_transfer(arr, np.array(B)) == approx(0.075)
    assert forgetting(arr) == approx(0.15)


def test_undefined_values_are_none_after_one_task():
    first = R[:1]
    assert backward_transfer(first) is None
    assert forward_transfer(first, B) is None
    assert forgetting(first) is None
    assert average_accuracy(first) == approx(0.90)


def test_summarize_drops_none():
    assert summarize(R[:1], B) == {"acc": approx(0.90)}


def test_summarize_all_defined():
    s = summarize(R, B)
    assert set(s) == {"acc", "bwt", "fwt", "forgetting"}
    assert s["acc"] == approx(0.80)
    assert s["bwt"] == approx(-0.125)
    assert s["fwt"] == approx(0.075)
    assert s["forgetting"] == approx(0.15)
    assert all(isinstance(v, float) for v in s.values())


NAN = float("nan")


def test_seen_only_matrices_leave_fwt_undefined_and_the_rest_unchanged():
    """eval.tasks=seen: the entries of tasks not trained yet are NaN."""
    seen = [[a if j <= i else NAN for j, a in enumerate(row)] for i, row in enumerate(R)]
    assert forward_transfer(seen, B) is None
    assert "fwt" not in summarize(seen, B)
    for f in (average_accuracy, backward_transfer, forgetting):
        assert f(seen) == approx(f(R))  # forgetting: max over earlier rows that evaluated task j


def test_rows_skipped_by_eval_every_are_left_out():
    """eval.every=2 on 3 tasks: row 0 was not evaluated; task 0's diagonal is unknown."""
    every = [[NAN] * 3, R[1], R[2]]
    assert average_accuracy(every) == approx(0.80)
    # BWT over the tasks whose diagonal was evaluated: j=1 only: 0.85 - 0.80 = 0.05
    assert backward_transfer(every) == approx(0.05)
    # forgetting over earlier evaluated rows: j=0: 0.95 - 0.60; j=1: 0.80 - 0.85
    assert forgetting(every) == approx(((0.95 - 0.60) + (0.80 - 0.85)) / 2)
    assert forward_transfer(every, B) is None
