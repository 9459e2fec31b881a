"""Plasticity probes on hand-built activations whose answers are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.metrics.plasticity import (MEASURES, dead_fraction, dormant_fraction, effective_rank,
                                         layer_measures, rarely_active_fraction, stable_rank,
                                         unit_matrix)
from lifelong.platform import plots

approx = pytest.approx


def _rare_layer() -> torch.Tensor:
    """[200, 4]: unit 0 always on, unit 1 on half the rows, unit 2 dead, unit 3 on 1 row."""
    h = torch.zeros(200, 4)
    h[:, 0] = 1.0
    h[::2, 1] = 2.0
    h[7, 3] = 5.0
    return h


def test_unit_matrix_shapes_and_order():
    acts = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    m = unit_matrix(acts)
    assert m.shape == (8, 3)
    # column c holds exactly channel c's values, over all inputs and positions
    for c in range(3):
        assert sorted(m[:, c].tolist()) == sorted(acts[:, c].flatten().tolist())
    assert unit_matrix(torch.ones(5, 7)).shape == (5, 7)
    with pytest.raises(ValueError):
        unit_matrix(torch.ones(2, 3, 4))


def test_dead_fraction_one_of_four():
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                      [0.0, 3.0, 0.0, 0.0],
                      [2.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 4.0],
                      [0.0, 1.0, 0.0, 0.0],
                      [5.0, 0.0, 0.0, 0.0]])  # unit 2 never fires
    assert dead_fraction(h) == 0.25


def test_negative_tanh_like_activations_count_as_active():
    h = torch.tensor([[-0.7, 0.0, 0.3],
                      [-0.2, 0.0, -0.9],
                      [-0.5, 0.0, 0.0]])  # unit 0 only negative: active, not dead
    assert dead_fraction(h) == approx(1 / 3)
    assert rarely_active_fraction(h, threshold=0.5) == approx(1 / 3)  # only unit 1 (0 of 3)
    assert dormant_fraction(h, tau=0.1) == approx(1 / 3)  # only unit 1 (score 0)


def test_rarely_active_counts_unit_on_one_of_200_rows():
    h = _rare_layer()
    # shares: 1.0, 0.5, 0.0, 1/200 = 0.005 < 0.01 -> units 2 and 3
    assert rarely_active_fraction(h, threshold=0.01) == 0.5
    # 0.005 is not < 0.005: only the dead unit
    assert rarely_active_fraction(h, threshold=0.005) == 0.25
    assert dead_fraction(h) == 0.25


def test_dormant_fraction_counts_the_small_units():
    # mean |h| per unit: 1, 1, 0.1, 0.01 -> layer average 2.11 / 4 = 0.5275
    # scores: 1.896, 1.896, 0.190, 0.019
    h = torch.tensor([[1.0, -1.0, 0.1, 0.01],
                      [-1.0, 1.0, -0.1, -0.01]])
    assert dormant_fraction(h, tau=0.0) == 0.0
    assert dormant_fraction(h, tau=0.1) == 0.25   # only the 0.01 unit
    assert dormant_fraction(h, tau=0.25) == 0.5   # both small units
    assert dormant_fraction(h, tau=2.0) == 1.0


def test_dormant_score_is_scale_free():
    h = torch.tensor([[1.0, -1.0, 0.1, 0.01]])
    assert dormant_fraction(h * 1e4, tau=0.1) == dormant_fraction(h, tau=0.1) == 0.25


def test_effective_rank_of_equal_singular_values_is_their_count():
    for r in (1, 3, 5):
        h = torch.zeros(8, 6)
        h[torch.arange(r), torch.arange(r)] = 2.5
        assert effective_rank(h) == approx(r, abs=1e-9)


def test_effective_rank_of_rank_one_is_one():
    u = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0])
    v = torch.tensor([0.3, 1.0, -0.7, 2.0])
    assert effective_rank(torch.outer(u, v)) == approx(1.0, abs=1e-9)


def test_effective_rank_of_unequal_spectrum():
    # sigma = (3, 1): p = (0.75, 0.25), exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548...
    h = torch.diag(torch.tensor([3.0, 1.0]))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(h) == approx(expected, abs=1e-9)
    assert 1.75 < effective_rank(h) < 1.76


def test_stable_rank():
    # sum = 11.000002; 99% = 10.89 > 10 -> k = 2
    assert stable_rank(torch.diag(torch.tensor([10.0, 1.0, 1e-6, 1e-6]))) == 2
    # sum = 10.2: 10 / 10.2 = 0.9804 < 0.99 <= 10.1 / 10.2 = 0.9902
    assert stable_rank(torch.diag(torch.tensor([10.0, 0.1, 0.1]))) == 2
    assert stable_rank(torch.diag(torch.tensor([10.0, 0.1, 0.1])), mass=0.98) == 1
    # sum = 2.5: 2 / 2.5 = 0.8 < 0.99 -> all three
    assert stable_rank(torch.diag(torch.tensor([1.0, 1.0, 0.5]))) == 3
    assert stable_rank(torch.diag(torch.tensor([1.0, 0.0, 0.0]))) == 1


def test_stable_rank_exactly_at_the_mass_boundary():
    # 100 equal singular values: 99 hold exactly 99%, which rounding must not push to 100
    assert stable_rank(torch.eye(100)) == 99
    assert stable_rank(torch.eye(100), mass=1.0) == 100
    # equal values of 0.1, where float rounding of the sums lands just below mass * total
    assert stable_rank(torch.eye(8, dtype=torch.float64) * 0.1, mass=0.75) == 6
    assert stable_rank(torch.eye(10, dtype=torch.float64) * 0.1, mass=0.8) == 8


def test_conv_shape_matches_flattened_matrix():
    # [3, 5, 4, 4]: 48 (input, position) samples per channel
    conv = torch.zeros(3, 5, 4, 4)
    conv[:, 0] = 1.0                                    # always on, mean |h| 1
    # channel 1 dead
    conv[:, 2, :, ::2] = 2.0                            # on half the positions, mean |h| 1
    conv[0, 3, 2, 1] = 0.7                              # on 1 of 48, mean |h| 0.0146
    conv[:, 4] = 0.25 * torch.arange(1, 5).view(4, 1)   # rows 0.25..1.0, mean |h| 0.625
    # layer average 2.6396 / 5 = 0.528: scores 1.89, 0, 1.89, 0.028, 1.18
    flat = conv.permute(0, 2, 3, 1).reshape(48, 5)
    assert dead_fraction(conv) == dead_fraction(flat) == 0.2
    # 1/48 = 0.021 < 0.05: channels 1 and 3
    assert rarely_active_fraction(conv, threshold=0.05) == rarely_active_fraction(flat, threshold=0.05) == 0.4
    assert dormant_fraction(conv, tau=0.1) == dormant_fraction(flat, tau=0.1) == 0.4
    assert effective_rank(conv) == approx(effective_rank(flat), abs=1e-9)
    assert stable_rank(conv) == stable_rank(flat)
    # a wrong flattening (no channel-last permute) would mix channels into one column
    assert dead_fraction(conv.reshape(48, 5)) != 0.2


def test_all_zero_activations_do_not_crash_or_nan():
    for h in (torch.zeros(6, 4), torch.zeros(2, 3, 2, 2)):
        assert dead_fraction(h) == 1.0
        assert dormant_fraction(h, tau=0.0) == 1.0
        assert rarely_active_fraction(h) == 1.0
        assert effective_rank(h) == 0.0
        assert stable_rank(h) == 0


def test_layer_measures_keys_and_values():
    h = _rare_layer()
    weight = torch.tensor([[1.0, -3.0], [0.5, -0.5]])      # mean |w| = 5 / 4
    grad = torch.tensor([[3.0, 0.0], [0.0, -4.0]])         # L2 norm = 5
    m = layer_measures(h, weight, grad, tau=0.1)
    assert tuple(m) == MEASURES
    assert m["dead"] == 0.25
    assert m["rarely_active"] == 0.5
    # mean |h|: 1, 1 (2 on half), 0, 0.025 -> average 0.50625; scores 1.98, 1.98, 0, 0.049
    assert m["dormant"] == 0.5
    assert m["mean_abs_weight"] == 1.25
    assert m["grad_norm"] == 5.0
    assert m["stable_rank"] == 3
    assert math.isnan(layer_measures(h, weight, None, tau=0.1)["grad_norm"])


def _history() -> list[tuple[int, dict[str, float]]]:
    history = []
    for step in (0, 50, 100, 150):
        values = {}
        for layer, scale in (("hidden0", 1.0), ("hidden1", 2.0)):
            for i, measure in enumerate(MEASURES):
                values[f"plasticity/{layer}/{measure}"] = 0.1 * scale * (i + 1) + step / 1000
        values["train/loss"] = 1.0  # not a probe: ignored
        history.append((step, values))
    return history


def _assert_png(path) -> None:
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plasticity_curves_renders_png(tmp_path):
    fig = plots.plasticity_curves(_history(), task_starts=[0, 100], title="toy")
    ax = fig.axes[MEASURES.index("grad_norm")]
    assert ax.get_yscale() == "log"
    assert len(fig.axes[0].get_lines()) == 2  # two layers
    (starts,) = fig.axes[0].collections  # task starts: one collection of vertical lines
    assert [segment[0][0] for segment in starts.get_segments()] == [0, 100]
    fig.savefig(tmp_path / "plasticity.png")
    plots.close(fig)
    _assert_png(tmp_path / "plasticity.png")


def test_plasticity_curves_single_point_and_empty(tmp_path):
    fig = plots.plasticity_curves(_history()[:1], task_starts=[0])
    fig.savefig(tmp_path / "one.png")
    plots.close(fig)
    _assert_png(tmp_path / "one.png")

    fig = plots.plasticity_curves([], task_starts=[])
    assert any("no probes yet" in t.get_text() for t in fig.axes[0].texts)
    fig.savefig(tmp_path / "empty.png")
    plots.close(fig)
    _assert_png(tmp_path / "empty.png")
