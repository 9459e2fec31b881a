"""The MoE strategy through the plain learner on real digits (``strategies/moe.py``): an
expert layer's forward by hand; experts frozen after a task, their context's router row
and its classes' output rows stay bit-identical through later tasks (so the first task's
accuracy cannot move) while experts not yet activated keep their initial values; task-free
routing infers each test row's context; a conv model keeps its convs; bad options stop the
real CLI with one line before anything starts. The parts by hand: test_moe_routing.py."""

from __future__ import annotations

from typing import Any, Iterator, Optional

import pytest
import torch
from torch import nn

from lifelong.platform.errors import ConfigError
from lifelong.platform.learner import Learner
from lifelong.platform.model import Contextual
from lifelong.strategies.experts import ExpertLayer, RoutingTables
from lifelong.strategies.moe import MoE
from lifelong.strategies.routing import route
from lifelong.streams.batches import Samples
from lifelong.streams.feed import TaskEnd, TaskStart, TrainRows
from tests.conftest import make_config
from tests.unit.bad_options import fresh_process_lines, in_process_line

SPLIT = {"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 2, "setting": "task"}
PARAMS = ("weight", "bias", "router_weight", "router_bias")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The expert loop runs many tiny ops; on 2 shared cores, OpenMP's hand-off to a second
    thread costs more than each op (index_add: 12 ms on 2 threads, 0.05 ms on 1, under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(setting: str = "task", strategy: Optional[dict] = None, model: Optional[dict] = None,
           epochs: int = 1) -> Any:
    return make_config(stream={**SPLIT, "setting": setting}, model=model or {"hidden": [32, 32]},
                       strategy={"name": "moe", "experts": 6, "per_task": 2, "k": 2, "freeze": 2,
                                 **(strategy or {})},
                       optim={"name": "adam", "lr": 0.01},
                       train={"epochs": epochs, "batch_size": 16, "eval_batch_size": 512},
                       engine={"backend": "torch"}, probes={"enabled": False}, seed=0)


def test_an_expert_layer_is_the_gated_sum_of_its_chosen_experts():
    torch.manual_seed(0)
    tables = RoutingTables(contexts=2, experts=4, outputs=3, gates=None)
    tables.routable[0, :2] = True
    tables.routable[1, :] = True
    layer = ExpertLayer(nn.Linear(5, 3), nn.Tanh(), experts=4, contexts=2, k=2, index=0, tables=tables,
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.router_weight.normal_()
        layer.router_bias.normal_()
    x = torch.randn(6, 5)
    context = torch.tensor([0, 1, 1, 0, 1, 1])
    out = layer.eval()(x, context)
    for i in range(6):
        c = int(context[i])
        logits = layer.router_weight[c] @ x[i] + layer.router_bias[c]
        r = route(logits[None], 2, tables.routable[c][None])
        expected = sum(g * torch.tanh(layer.weight[e] @ x[i] + layer.bias[e])
                       for g, e in zip(r.gates[0], r.experts[0].tolist()))
        torch.testing.assert_close(out[i], expected)
        if c == 0:
            assert sorted(r.experts[0].tolist()) == [0, 1]  # context 0 may use experts 0 and 1 only
    assert torch.equal(layer.last.experts, route(layer.last.logits, 2).experts)  # eval: no noise


# -- freezing, through the learner -----------------------------------------------------------------

def test_frozen_experts_router_row_and_head_rows_stay_bit_identical_and_bwt_of_task_0_is_zero():
    """Task-incremental, k = per_task = freeze = 2: context 0 may route only to the two
    experts task 0 activated, both of which (every row uses both) are frozen after it, with
    router row 0 and the head rows of classes 0 and 1. Task 0's logits are then a function of
    frozen values only, so R[t][0] == R[0][0] exactly. Nothing is guaranteed for task 1: its
    context may route to experts that are not frozen after it."""
    learner = Learner(config(epochs=2))
    strategy: MoE = learner.strategy  # type: ignore[assignment]
    named = learner.engine.named
    model = learner.engine.module
    prefixes = [prefix for prefix, _ in strategy.layers]
    assert prefixes == ["net.0", "net.1"] and strategy.head == "net.2"
    init = {name: p.detach().clone() for name, p in named.items()}
    test0 = learner.featurize(Samples.of(learner.feed.server.stream.tasks[0], "test"))
    snaps: list[dict[str, torch.Tensor]] = []
    frozen: list[torch.Tensor] = []
    logits0: list[torch.Tensor] = []
    learner.result.init = learner.evaluate_all()
    for event in learner.feed.events(start_task=0):
        if isinstance(event, TrainRows):
            learner.train_rows(event)
        elif isinstance(event, TaskStart):
            learner.task_start(event)
        else:
            assert isinstance(event, TaskEnd)
            learner.task_end(event)
            snaps.append({name: p.detach().clone() for name, p in named.items()})
            frozen.append(strategy.frozen.clone())
            with torch.no_grad():
                logits0.append(model.eval()(test0.x, torch.zeros_like(test0.task)))
    R = learner.result.R

    assert frozen[0].tolist() == [[True, True, False, False, False, False]] * 2
    owned = strategy.tables.owned
    assert owned.sum(1).tolist() == [2, 2, 2] and owned.sum(0).max() == 1  # each task's own classes
    for t in (1, 2):
        assert bool((frozen[t] >= frozen[t - 1]).all())  # frozen stays frozen
    for t in range(3):  # every expert frozen after task t: bit-identical after the later ones
        for later in range(t + 1, 3):
            for i, prefix in enumerate(prefixes):
                rows = frozen[t][i]
                for name in ("weight", "bias"):
                    assert torch.equal(snaps[later][f"{prefix}.{name}"][rows], snaps[t][f"{prefix}.{name}"][rows])
                for name in ("router_weight", "router_bias"):  # a finished context's router row
                    assert torch.equal(snaps[later][f"{prefix}.{name}"][t], snaps[t][f"{prefix}.{name}"][t])
            for name in ("weight", "bias"):  # its classes' output rows (freeze_head)
                assert torch.equal(snaps[later][f"net.2.{name}"][owned[t]], snaps[t][f"net.2.{name}"][owned[t]])
    for prefix in prefixes:  # experts activated at task a: initial values until then, moved by its end
        for name in ("weight", "bias"):
            key = f"{prefix}.{name}"
            for activated, rows in ((1, slice(2, 4)), (2, slice(4, 6))):
                for t in range(activated):
                    assert torch.equal(snaps[t][key][rows], init[key][rows]), (key, t)
                for e in range(rows.start, rows.stop):
                    assert not torch.equal(snaps[activated][key][e], init[key][e]), (key, e)
            assert not torch.equal(snaps[0][key][:2], init[key][:2])
        assert float(snaps[1][f"{prefix}.router_weight"][2].abs().sum()) == 0.0  # context 2's router: zero init
        assert float(snaps[2][f"{prefix}.router_weight"][2].abs().sum()) > 0.0
    assert not torch.equal(snaps[2]["net.2.weight"][owned[2]], snaps[1]["net.2.weight"][owned[2]])  # the head learns

    mine = owned[0]  # the columns task 0's rows are scored on (the rest are masked)
    assert torch.equal(logits0[1][:, mine], logits0[0][:, mine]) and torch.equal(logits0[2][:, mine], logits0[0][:, mine])
    assert R[0][0] > 0.9 and R[1][1] > 0.9 and R[2][2] > 0.9
    assert R[1][0] == R[0][0] and R[2][0] == R[0][0]  # BWT of task 0: exactly 0


# -- task-free ----------------------------------------------------------------------------------------

def test_task_free_routing_infers_each_test_rows_context():
    learner = Learner(config("class", {"routing": "free"}))
    strategy: MoE = learner.strategy  # type: ignore[assignment]
    result = learner.run()
    assert strategy.inferred_contexts() == [0, 1, 2]
    assert len(strategy.inference) == 3  # after each task (not the evaluation before the first)
    last = strategy.inference[-1]
    assert len(last) == 3 and all(0.0 <= a <= 1.0 for a in last)
    assert min(last) > 0.8, last
    assert strategy.task_metrics(learner.spec.tasks[2])["moe/task_inference"] == pytest.approx(sum(last) / 3)
    assert strategy.matrices()["moe_task_inference"].values[-1] == last

    # by hand: every test row with context INFER, inferred by the gates, scored against its task
    model = learner.engine.module.eval()
    gates = strategy.tables.gates
    assert gates is not None and gates.contexts.tolist() == [0, 0, 1, 1, 2, 2]
    with torch.no_grad():
        for t, task in enumerate(learner.feed.server.stream.tasks):
            batch = learner.featurize(Samples.of(task, "test"))
            logits = model(batch.x, torch.full_like(batch.task, Contextual.INFER))
            assert torch.equal(model.inferred, gates.infer(batch.x))
            assert float((model.inferred == t).double().mean()) == pytest.approx(last[t], abs=1e-12)
            owned = strategy.tables.owned[model.inferred]  # a context predicts only its classes
            assert bool(owned[torch.arange(len(owned)), logits.argmax(1)].all())
            accuracy = float((logits.argmax(1) == batch.y).double().mean())
            assert result.R[-1][t] == pytest.approx(accuracy, abs=1e-12)
    assert strategy.tables.owned.sum(1).tolist() == [2, 2, 2]


def test_a_gate_rank_as_wide_as_the_rows_is_refused_before_training():
    """Digits rows have 64 values: 64 principal directions reconstruct every row exactly (all
    errors 0), more made the gates' fit crash at the end of the first task."""
    with pytest.raises(ConfigError, match=r"^strategy.gate_rank: must be smaller than the 64 values"):
        Learner(config("class", {"routing": "free", "gate_rank": 64}))
    Learner(config("task", {"gate_rank": 64}))  # task-aware routing has no gates


# -- conv models -------------------------------------------------------------------------------------

def test_a_conv_model_keeps_its_convs_and_trains_a_step():
    learner = Learner(config(model={"conv": [8], "hidden": [32]}))
    net = learner.engine.module
    assert [type(m).__name__ for m in net.net] == ["Unflatten", "Conv2d", "ReLU", "Flatten", "ExpertLayer", "Linear"]
    before = {name: p.detach().clone() for name, p in learner.engine.named.items()}
    events = learner.feed.events(start_task=0)
    start = next(events)
    assert isinstance(start, TaskStart)
    learner.task_start(start)
    rows = next(events)
    assert isinstance(rows, TrainRows)
    terms = learner.train_step(learner.featurize(rows.rows))
    assert all(bool(torch.isfinite(v)) for v in terms.values())
    assert float(terms["moe/balance"]) > 0 and float(terms["moe/router_z"]) > 0
    after = learner.engine.named
    assert not torch.equal(after["net.1.weight"], before["net.1.weight"])  # the conv learns
    assert not torch.equal(after["net.4.weight"][:2], before["net.4.weight"][:2])  # task 0's experts
    assert torch.equal(after["net.4.weight"][2:], before["net.4.weight"][2:])  # not activated yet


# -- bad options: one line, exit 2, before anything starts -----------------------------------------------

BAD = {
    "k": (["strategy.k=12"], "strategy.k: 12 is larger than the pool (strategy.experts=10)"),
    "pool": (["strategy.experts=5"], "strategy.experts: the pool is smaller than needed: 3 tasks x 2 fresh "
                                     "experts (strategy.per_task) need 6, the pool has 5"),
    "per_task": (["strategy.k=3"], "strategy.per_task: the first task can route only to its 2 fresh "
                                   "experts, fewer than strategy.k=3"),
    "routing": (["strategy.routing=soft"], "strategy.routing: 'soft' is not one of task, free"),
    "balance": (["strategy.balance_kind=l2"], "strategy.balance_kind: 'l2' is not one of switch, cv2"),
    "expert_parallel": (["engine.expert_parallel=2"], "engine.expert_parallel=2: experts split across workers"),
}


FRESH = ("pool", "expert_parallel")  # one refused at config time, one by the preflight


def test_bad_options_stop_the_real_cli_with_one_line_before_anything_starts(tmp_path):
    """As a user types it, in fresh processes. Nothing is left behind."""
    lines = fresh_process_lines(tmp_path, {name: ["strategy.name=moe", *BAD[name][0]] for name in FRESH})
    for name, line in lines.items():
        assert line.startswith(f"lifelong: error: {BAD[name][1]}"), (name, line)


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_bad_option_is_one_cli_line_and_exit_2_before_ray_starts(name, capsys, monkeypatch, tmp_path):
    line = in_process_line(["strategy.name=moe", *BAD[name][0]], capsys, monkeypatch, tmp_path)
    assert line.startswith(f"lifelong: error: {BAD[name][1]}"), line
