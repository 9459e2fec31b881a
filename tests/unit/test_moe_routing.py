"""The MoE strategy's parts by hand (``strategies/routing.py``, ``experts.RoutingTables``,
``strategies/subspace_gates.py``): top-k routing on hand-built logits, the balance and
z-losses and their gradients (cv^2 split over simulated workers), the noise any number of
workers agree on, and the task-free gates on synthetic contexts. The strategy through the
learner: test_moe.py."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from lifelong.strategies.experts import RoutingTables
from lifelong.strategies.routing import cv2, cv2_surrogate, route, slot_counts, switch_balance, z_loss
from lifelong.strategies.subspace_gates import SubspaceGates, fit_classes
from tests.conftest import same

INF = float("inf")
LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5],
                       [4.0, -1.0, 0.0, 2.0]])


# -- route ------------------------------------------------------------------------------------------

def test_route_picks_the_k_largest_and_gates_are_a_softmax_over_them():
    r = route(LOGITS, 2)
    assert r.experts.tolist() == [[1, 2], [0, 3]]
    torch.testing.assert_close(r.gates, torch.softmax(torch.tensor([[3.0, 2.0], [4.0, 2.0]]), 1))
    torch.testing.assert_close(r.gates.sum(1), torch.ones(2))
    torch.testing.assert_close(r.probs, torch.softmax(LOGITS, 1))
    assert torch.equal(r.logits, LOGITS)
    assert route(LOGITS, 1).experts.tolist() == [[1], [0]]
    assert torch.equal(route(LOGITS, 1).gates, torch.ones(2, 1))


def test_disallowed_experts_are_never_chosen_even_with_large_noise():
    allowed = torch.tensor([[True, False, True, True],
                            [False, True, True, True]])
    r = route(LOGITS, 2, allowed)
    assert r.experts.tolist() == [[2, 0], [3, 2]]
    torch.testing.assert_close(r.gates, torch.softmax(torch.tensor([[2.0, 1.0], [2.0, 0.0]]), 1))
    clean = LOGITS.masked_fill(~allowed, -INF)
    assert torch.equal(r.logits, clean)
    assert torch.equal(r.probs[~allowed], torch.zeros(2))  # probabilities over the allowed only
    torch.testing.assert_close(r.probs[0, [0, 2, 3]], torch.softmax(torch.tensor([1.0, 2.0, 0.5]), 0))
    loud = route(LOGITS, 2, allowed, noise=(~allowed).float() * 1e6)  # all noise on the disallowed
    assert loud.experts.tolist() == [[2, 0], [3, 2]]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        noisy = route(LOGITS, 3, allowed, noise=10.0 * torch.randn(2, 4, generator=g))
        chosen = torch.zeros(2, 4, dtype=torch.bool).scatter(1, noisy.experts, True)
        assert torch.equal(chosen, allowed)  # 3 allowed per row, k = 3: exactly them


def test_noise_changes_the_choice_but_not_the_clean_probs_and_logits():
    noise = torch.tensor([[0.0, 0.0, 0.0, 10.0],
                          [0.0, 0.0, 0.0, 0.0]])
    clean, noisy = route(LOGITS, 2), route(LOGITS, 2, noise=noise)
    assert noisy.experts.tolist() == [[3, 1], [0, 3]]
    torch.testing.assert_close(noisy.gates[0], torch.softmax(torch.tensor([10.5, 3.0]), 0))  # Shazeer: noisy
    assert torch.equal(noisy.gates[1], clean.gates[1])
    assert torch.equal(noisy.probs, clean.probs) and torch.equal(noisy.logits, clean.logits)


def test_slot_counts_count_rows_times_k():
    r = route(LOGITS, 2)  # experts [[1, 2], [0, 3]]
    assert slot_counts(r, 5).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert slot_counts(r, 5).dtype == torch.float64
    assert slot_counts(route(LOGITS, 1), 4).tolist() == [1.0, 1.0, 0.0, 0.0]


# -- switch_balance ------------------------------------------------------------------------------------

def test_switch_balance_is_one_when_uniform_and_e_when_all_go_to_one():
    e = 4
    assert float(switch_balance(torch.full((6, e), 1 / e), torch.full((e,), 1 / e), e)) == pytest.approx(1.0)
    one_hot = torch.zeros(6, e)
    one_hot[:, 2] = 1.0
    share = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert float(switch_balance(one_hot, share, e)) == pytest.approx(float(e))
    # only 3 of 5 experts allowed, uniform over them: 1 again (E is the allowed count)
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]]).expand(4, 5)
    assert float(switch_balance(probs, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]), 3)) == pytest.approx(1.0)


def test_switch_balance_gradient_wrt_probs_is_e_share_over_rows():
    g = torch.Generator().manual_seed(1)
    rows, e = 5, 6
    probs = torch.softmax(torch.randn(rows, e, generator=g, dtype=torch.float64), 1).requires_grad_(True)
    share = torch.rand(e, generator=g, dtype=torch.float64)
    share = share / share.sum()
    loss = switch_balance(probs, share, e)
    (grad,) = torch.autograd.grad(loss, probs)
    torch.testing.assert_close(grad, (e * share / rows).expand(rows, e))
    assert float(loss.detach()) == pytest.approx(float(e * (share * probs.detach().mean(0)).sum()), rel=1e-12)
    share.requires_grad_(False)
    empty = torch.zeros(0, e, requires_grad=True)
    assert float(switch_balance(empty, share, e).detach()) == 0.0  # a worker with no rows this step


# -- cv2 and its sharded surrogate ---------------------------------------------------------------------

def test_cv2_on_hand_built_mass():
    allowed = torch.tensor([True, True, True, False])
    # mass 1, 2, 3 (and 100 masked out): mean 2, population variance 2/3
    assert float(cv2(torch.tensor([1.0, 2.0, 3.0, 100.0]), allowed)) == pytest.approx((2 / 3) / 4, rel=1e-6)
    assert float(cv2(torch.tensor([5.0, 5.0, 5.0, 0.0]), allowed)) == 0.0
    assert float(cv2(torch.tensor([4.0, 0.0, 0.0, 0.0]), allowed)) == pytest.approx(2.0, rel=1e-6)  # var 32/9, mean^2 16/9
    assert float(cv2(torch.tensor([4.0, 1.0]), torch.tensor([True, False]))) == 0.0  # one expert: nothing to balance


def _mass(x: torch.Tensor, w: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    r = route(x @ w, k, allowed.expand(x.shape[0], -1))
    return torch.zeros(w.shape[1], dtype=x.dtype).index_add(0, r.experts.flatten(), r.gates.flatten())


def test_cv2_surrogate_over_two_workers_gives_the_one_worker_gradient():
    g = torch.Generator().manual_seed(2)
    rows, dim, e, k = 12, 5, 6, 2
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    w = torch.randn(dim, e, generator=g, dtype=torch.float64).requires_grad_(True)
    allowed = torch.tensor([True, True, True, True, True, False])

    whole = _mass(x, w, allowed, k)
    reference = cv2(whole, allowed)
    (expected,) = torch.autograd.grad(reference, w)

    halves = [x[:rows // 2], x[rows // 2:]]
    local = [_mass(part, w, allowed, k) for part in halves]
    total = (local[0] + local[1]).detach()  # the all-reduce
    torch.testing.assert_close(total, whole.detach())
    grads = []
    for mass in local:
        loss, value = cv2_surrogate(mass, total, allowed, workers=2)
        assert float(value) == pytest.approx(float(reference.detach()), rel=1e-12)
        assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)  # logs the global value
        (grad,) = torch.autograd.grad(loss, w)
        grads.append(grad)
    assert float(expected.abs().sum()) > 0
    torch.testing.assert_close((grads[0] + grads[1]) / 2, expected)  # data-parallel average

    # one worker: the surrogate is cv2 itself, value and gradient
    again = _mass(x, w, allowed, k)
    loss, _ = cv2_surrogate(again, again.detach(), allowed, workers=1)
    torch.testing.assert_close(torch.autograd.grad(loss, w)[0], expected)


# -- z_loss ---------------------------------------------------------------------------------------

def test_z_loss_is_the_mean_squared_logsumexp_ignoring_minus_inf():
    logits = torch.tensor([[0.0, -INF, 1.0],
                           [2.0, 3.0, -INF]])
    by_hand = (math.log(math.exp(0.0) + math.exp(1.0)) ** 2 + math.log(math.exp(2.0) + math.exp(3.0)) ** 2) / 2
    assert float(z_loss(logits)) == pytest.approx(by_hand, rel=1e-6)
    assert float(z_loss(torch.zeros(3, 4))) == pytest.approx(math.log(4.0) ** 2, rel=1e-6)
    empty = z_loss(torch.zeros(0, 3))
    assert float(empty) == 0.0 and math.isfinite(float(empty))


# -- RoutingTables.noise --------------------------------------------------------------------------

def tables(row_offset: int = 0, step: int = 7) -> RoutingTables:
    t = RoutingTables(contexts=3, experts=5, outputs=4, gates=None)
    t.noise_std, t.noise_seed, t.step, t.global_rows, t.row_offset = 0.5, 3, step, 8, row_offset
    return t


def test_noise_rows_of_a_two_worker_split_are_the_one_worker_draw():
    one = tables().noise(0, 8, 5, torch.device("cpu"))
    assert one.shape == (8, 5) and float(one.std()) > 0.2
    split = torch.cat([tables(0).noise(0, 4, 5, torch.device("cpu")), tables(4).noise(0, 4, 5, torch.device("cpu"))])
    assert torch.equal(split, one)
    uneven = torch.cat([tables(0).noise(0, 5, 5, torch.device("cpu")), tables(5).noise(0, 3, 5, torch.device("cpu"))])
    assert torch.equal(uneven, one)
    assert torch.equal(tables().noise(0, 8, 5, torch.device("cpu")), one)  # a pure function of the step


def test_noise_differs_between_steps_and_layers():
    cpu = torch.device("cpu")
    one = tables().noise(0, 8, 5, cpu)
    assert not torch.equal(tables(step=8).noise(0, 8, 5, cpu), one)
    assert not torch.equal(tables().noise(1, 8, 5, cpu), one)
    quiet = tables()
    quiet.noise_std = 0.0
    assert float(quiet.noise(0, 8, 5, cpu).abs().sum()) == 0.0


# -- SubspaceGates ------------------------------------------------------------------------------------

DIM, RANK = 20, 3


def synthetic(n_per_class: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """3 contexts x 2 classes; each class a Gaussian blob spread along its own 3 directions
    around its own mean, plus small isotropic noise. Classes 2c, 2c + 1 are context c's."""
    structure = torch.Generator().manual_seed(100)  # the same classes for every draw
    means = 2.0 * torch.randn(6, DIM, generator=structure)
    bases = torch.linalg.qr(torch.randn(6, DIM, RANK, generator=structure)).Q
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for context in range(3):
        x, y = [], []
        for c in (2 * context, 2 * context + 1):
            codes = 3.0 * torch.randn(n_per_class, RANK, generator=g)
            x.append(means[c] + codes @ bases[c].T + 0.2 * torch.randn(n_per_class, DIM, generator=g))
            y.append(torch.full((n_per_class,), c, dtype=torch.int64))
        xs.append(torch.cat(x))
        ys.append(torch.cat(y))
    return xs, ys


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def fitted_on_one_worker(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> SubspaceGates:
    gates = SubspaceGates(DIM, RANK)
    for context, (x, y) in enumerate(zip(xs, ys)):
        gates.observe(x, y)
        gates.fit(context, fit_classes(gates.observed_classes(), 6, identity), identity)
    return gates


def packed(gates: SubspaceGates, classes: list[int]) -> torch.Tensor:
    """What this worker hands the all-reduce at ``fit`` (read off a copy's fit)."""
    seen: list[torch.Tensor] = []
    copy.deepcopy(gates).fit(0, classes, lambda p: seen.append(p.clone()) or p)
    return seen[0]


def test_gates_infer_the_context_of_fresh_rows():
    xs, ys = synthetic(200, seed=1)
    gates = fitted_on_one_worker(xs, ys)
    assert gates.contexts.tolist() == [0, 0, 1, 1, 2, 2] and gates.classes.tolist() == list(range(6))
    assert gates.means.shape == (6, DIM) and gates.bases.shape == (6, DIM, RANK)
    fresh, _ = synthetic(100, seed=2)
    for context, x in enumerate(fresh):
        right = float((gates.infer(x) == context).double().mean())
        assert right >= 0.95, (context, right)
    # the error is ||x - mu||^2 - ||V^T (x - mu)||^2, by hand
    x = fresh[1][:5]
    centred = x[:, None, :] - gates.means[None]
    by_hand = centred.square().sum(2) - torch.einsum("bpd,pdr->bpr", centred, gates.bases).square().sum(2)
    torch.testing.assert_close(gates.errors(x), by_hand, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gates.bases.transpose(1, 2) @ gates.bases, torch.eye(RANK).expand(6, RANK, RANK),
                               rtol=0, atol=1e-5)  # orthonormal
    # before any fit: context 0
    assert SubspaceGates(DIM, RANK).infer(fresh[2]).tolist() == [0] * len(fresh[2])


def test_gates_fitted_from_two_workers_moments_are_the_one_worker_gates():
    xs, ys = synthetic(200, seed=1)
    kept_x, kept_y = [], []  # the rows the workers saw, for the one-worker reference
    workers = [SubspaceGates(DIM, RANK), SubspaceGates(DIM, RANK)]
    for context, (x, y) in enumerate(zip(xs, ys)):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(context))
        parts = order.tensor_split(2)
        workers[0].observe(x[parts[0]], y[parts[0]])
        workers[1].observe(x[parts[1]][y[parts[1]] != 2 * context], y[parts[1]][y[parts[1]] != 2 * context])
        seen = [torch.zeros(6, dtype=torch.float64) for _ in workers]  # worker 1 lacks a class
        for s, w in zip(seen, workers):
            s[w.observed_classes()] = 1.0
        classes = [fit_classes(w.observed_classes(), 6, lambda s: seen[0] + seen[1]) for w in workers]
        assert classes[0] == classes[1] == [2 * context, 2 * context + 1]
        assert workers[1].observed_classes() == [2 * context + 1]
        moments = [packed(w, classes[0]) for w in workers]
        for w in workers:
            w.fit(context, classes[0], lambda p: moments[0] + moments[1])
        kept = torch.cat([parts[0], parts[1][y[parts[1]] != 2 * context]])
        kept_x.append(x[kept])
        kept_y.append(y[kept])
    single = fitted_on_one_worker(kept_x, kept_y)
    assert same(workers[0].state_dict(), workers[1].state_dict())  # every rank fits the same gates
    state = workers[0].state_dict()
    assert same(state["contexts"], single.contexts) and same(state["classes"], single.classes)
    torch.testing.assert_close(state["means"], single.means)
    # bases are eigenvectors: equal up to sign; the subspaces they span are the same
    projectors = state["bases"] @ state["bases"].transpose(1, 2)
    torch.testing.assert_close(projectors, single.bases @ single.bases.transpose(1, 2), rtol=0, atol=1e-5)
    fresh, _ = synthetic(50, seed=3)
    for x in fresh:
        assert torch.equal(workers[0].infer(x), single.infer(x))


def test_gates_state_dict_round_trip():
    xs, ys = synthetic(100, seed=4)
    gates = fitted_on_one_worker(xs, ys)
    buffer = io.BytesIO()
    torch.save(gates.state_dict(), buffer)
    buffer.seek(0)
    loaded = SubspaceGates(DIM, RANK)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert same(loaded.state_dict(), gates.state_dict())
    fresh, _ = synthetic(30, seed=5)
    x = torch.cat(fresh)
    assert torch.equal(loaded.infer(x), gates.infer(x)) and torch.equal(loaded.errors(x), gates.errors(x))
    gates.observe(x, torch.zeros(len(x), dtype=torch.int64))  # a later context's moments: not in the state
    assert same(loaded.state_dict(), gates.state_dict())
