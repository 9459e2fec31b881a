"""GateON's parts on hand-built activations (``strategies/gates.py``, ``availability.py``):
ReTanh, the context gate per row and per conv channel, each hidden unit's relevance from
real hooks on a gated net against a hand autograd computation, normalisation, p-GateON's
per-weight relevance and the availability update. Through the learner: test_gateon.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.strategies.availability import (UnitRelevance, normalised, parameter_relevance,
                                              unit_relevance_terms, update_availability)
from lifelong.strategies.gates import ContextGate, GatedNet, retanh
from lifelong.strategies.units import hidden_layers


# -- gates, on hand-built activations ---------------------------------------------------------

def test_retanh_is_zero_up_to_zero_and_tanh_squared_above():
    x = torch.tensor([-3.0, -1e-4, 0.0, 1e-4, 0.5, 4.0], requires_grad=True)
    y = retanh(x)
    assert torch.equal(y[:3], torch.zeros(3))
    torch.testing.assert_close(y[3:], torch.tensor([math.tanh(v) ** 2 for v in (1e-4, 0.5, 4.0)]))
    y.sum().backward()  # a closed gate gets no gradient: it stays closed
    assert torch.equal(x.grad[:3], torch.zeros(3))
    t = torch.tanh(x.detach()[3:])
    torch.testing.assert_close(x.grad[3:], 2 * t * (1 - t * t))


GATE_WEIGHT = torch.tensor([[1.0, -1.0, 0.5, 0.0],
                            [-2.0, 2.0, 0.0, 3.0],
                            [0.2, 0.2, -0.2, 1.0]])


def hand_gate() -> ContextGate:
    gate = ContextGate(3, 4, 0.5, torch.Generator().manual_seed(0))
    assert gate.weight.shape == (3, 4) and float(gate.weight.detach().abs().max()) <= 0.5  # U(-b, b)
    with torch.no_grad():
        gate.weight.copy_(GATE_WEIGHT)
    return gate


def test_the_gate_multiplies_each_row_by_its_own_contexts_row():
    pre = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    context = torch.tensor([2, 0, 1, 2, 0])  # contexts mixed in one batch
    out = hand_gate()(pre, context)
    for i, c in enumerate(context.tolist()):
        torch.testing.assert_close(out[i], pre[i] * torch.tanh(GATE_WEIGHT[c].clamp(min=0)) ** 2)
    assert torch.equal(out[1, [1, 3]], torch.zeros(2)) and torch.equal(out[2, [0, 2]], torch.zeros(2))


def test_a_conv_gate_scales_each_channel_at_every_position():
    pre = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    context = torch.tensor([1, 1, 0, 2, 0])
    out = hand_gate()(pre, context)
    gates = retanh(GATE_WEIGHT)
    expected = torch.stack([pre[i] * gates[c].view(4, 1, 1) for i, c in enumerate(context.tolist())])
    torch.testing.assert_close(out, expected)


def test_gate_init_is_seeded_and_bounded():
    def gates(seed: int) -> torch.Tensor:
        body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        return GatedNet(body, hidden_layers(body, prefix="net."), 5, 0.3, True, seed).gates[0].weight.detach()

    a, b, c = gates(0), gates(0), gates(1)
    assert a.shape == (5, 4) and float(a.abs().max()) <= 0.3  # (contexts, units), U(-0.3, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- relevance and availability, against hand computations --------------------------------------

def own_row_gradients(h: torch.Tensor, row_losses: torch.Tensor) -> torch.Tensor:
    """d l_i / d h_i for every row i, each from its own loss alone."""
    return torch.stack([torch.autograd.grad(row_losses[i], h, retain_graph=True)[0][i]
                        for i in range(h.shape[0])])


@pytest.mark.parametrize("shape", [(6, 4), (6, 3, 2, 2)], ids=["dense", "conv"])
def test_unit_relevance_terms_are_each_rows_own_dl_dh_times_h_squared(shape):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(*shape, generator=g).requires_grad_(True)
    readout = torch.randn(math.prod(shape[1:]), 5, generator=g)
    y = torch.randint(0, 5, (shape[0],), generator=g)
    row_losses = F.cross_entropy(h.flatten(1) @ readout, y, reduction="none")
    mean_grad = torch.autograd.grad(row_losses.mean(), h, retain_graph=True)[0]  # what the hook sees
    own = own_row_gradients(h, row_losses)
    per_unit = (own * h).detach().flatten(2).sum(2) if len(shape) > 2 else (own * h).detach()
    expected = per_unit.double().square().sum(0)  # summed over rows (collect divides)
    got = unit_relevance_terms(h.detach(), mean_grad)
    assert got.dtype == torch.float64 and got.shape == (shape[1],)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)  # float32 products, summed in float64


def gated_net() -> GatedNet:
    torch.manual_seed(4)
    body = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    net = GatedNet(body, hidden_layers(body, prefix="net."), 3, 1.0, True, seed=0)
    with torch.no_grad():  # most gates open, a few closed
        for gate in net.gates:
            gate.weight.uniform_(-0.5, 1.5, generator=torch.Generator().manual_seed(5))
    return net


def hand_forward(net: GatedNet, x: torch.Tensor, c: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One row through the gated net, written out: h_l = normalise(relu(g_c * (W_l h + b_l)))."""
    p = dict(net.named_parameters())
    hs, a = [], x
    for layer, (w, gate) in enumerate((("net.0", "gates.0"), ("net.2", "gates.1"))):
        pre = a @ p[f"{w}.weight"].T + p[f"{w}.bias"]
        h = torch.relu(pre * torch.tanh(p[f"{gate}.weight"][c].clamp(min=0)) ** 2)
        a = h / h.norm().clamp(min=1e-12)
        hs.append(a)
    return a @ p["net.4.weight"].T + p["net.4.bias"], hs


def test_unit_relevance_from_real_hooks_equals_a_hand_autograd_computation():
    net = gated_net().train()
    relevance = UnitRelevance(net.taps, [5, 4])
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(8, 6, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
                torch.randint(0, 3, (8,), generator=g)),
               (torch.randn(4, 6, generator=g), torch.tensor([2, 2, 1, 0]), torch.randint(0, 3, (4,), generator=g))]
    expected = [torch.zeros(5, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]
    for x, context, y in batches:  # two training steps' forwards and backwards
        logits = net(x, context)
        F.cross_entropy(logits, y).backward()
        for i in range(len(y)):
            row, hs = hand_forward(net, x[i], int(context[i]))
            torch.testing.assert_close(row, logits[i].detach())  # the hand model is the model
            grads = torch.autograd.grad(F.cross_entropy(row[None], y[i:i + 1]), hs)
            for layer, (gr, h) in enumerate(zip(grads, hs)):
                expected[layer] += (gr * h).detach().double().square()
    with torch.no_grad():  # not training: never seen
        net(*batches[0][:2])
    net.eval()
    F.cross_entropy(net(*batches[0][:2]), batches[0][2]).backward()
    net.train()
    got, extra = relevance.collect(lambda t: 2 * t, torch.tensor([3.0, 4.0]))  # two identical workers
    for layer in range(2):
        assert float(expected[layer].sum()) > 0
        torch.testing.assert_close(got[layer], expected[layer] / 12)  # the mean over 12 rows
    assert extra.tolist() == [6.0, 8.0]
    assert [float(r.sum()) for r in relevance.collect(lambda t: t)[0]] == [0.0, 0.0]  # cleared


def test_normalised_relevance_has_mean_one_and_zeros_stay_zeros():
    torch.testing.assert_close(normalised(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([0.5, 1.0, 1.5]))
    assert torch.equal(normalised(torch.zeros(4)), torch.zeros(4))


def test_parameter_relevance_is_grad_times_weight_squared_over_the_layers_common_mean():
    grads = {"w": torch.tensor([[1.0, -2.0], [0.5, 0.0]]), "b": torch.tensor([3.0, -1.0]),
             "other": torch.ones(3)}
    params = {"w": torch.tensor([[2.0, 1.0], [-4.0, 7.0]]), "b": torch.tensor([0.5, 2.0]),
              "other": torch.ones(3)}
    got = parameter_relevance(grads, params, ["w", "b"])
    mean = (4 + 4 + 4 + 0 + 2.25 + 4) / 6  # (dL/dw * w)^2 over the weight's and the bias's entries
    assert set(got) == {"w", "b"}
    torch.testing.assert_close(got["w"], torch.tensor([[4.0, 4.0], [4.0, 0.0]], dtype=torch.float64) / mean)
    torch.testing.assert_close(got["b"], torch.tensor([2.25, 4.0], dtype=torch.float64) / mean)
    zero = parameter_relevance({"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)}, ["w"])
    assert torch.equal(zero["w"], torch.zeros(2, 2, dtype=torch.float64))


def test_update_availability_follows_the_formula_and_clips_to_0_1():
    available = torch.tensor([1.0, 0.5, 0.2, 1.0, 0.01, 0.0], dtype=torch.float64)
    relevance = torch.tensor([0.5, 3.0, 0.0, 0.0, 200.0, 0.0])
    out = update_availability(available, relevance, eta=0.1, eps=0.2)
    assert out is available  # in place
    # A - eta A (r - eps): 1 - 0.03; 0.5 - 0.14; 0.2 + 0.004; 1.02 -> 1; 0.01 - 0.1998 -> 0; 0 stays 0
    torch.testing.assert_close(available, torch.tensor([0.97, 0.36, 0.204, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_a_saturated_layer_regains_availability_only_with_eps():
    relevance = normalised(torch.tensor([0.0, 0.2, 1.0, 2.8]))  # mean 1 already
    for eps, expected in ((0.5, [0.04 * 1.25 ** 10, 0.04 * 1.15 ** 10, 0.04 * 0.75 ** 10, 0.0]),
                          (0.0, [0.04, 0.04 * 0.9 ** 10, 0.04 * 0.5 ** 10, 0.0])):
        available = torch.full((4,), 0.04, dtype=torch.float64)  # all below 0.05, none at 0
        for _ in range(10):
            update_availability(available, relevance, eta=0.5, eps=eps)
        torch.testing.assert_close(available, torch.tensor(expected, dtype=torch.float64))
        assert (available >= 0.05).any() == (eps > 0)
