"""The hypernetwork strategy (``strategies/hnet.py``, ``strategies/hypernet.py``): the chunked
generator reproduces the target's parameters shape for shape and the forward runs the target
with each row's generated weights; the output regulariser is exactly 0 at its snapshot, its
gradient agrees with an independent float64 re-implementation (itself checked by finite
differences), and ``reg_tasks`` draws its past tasks by step; through the real learner, past
task embeddings (and chunk embeddings, when per task) and their optimizer state stay
bit-identical, each task start snapshots the targets h(e_t', Theta*) and nothing moves them
within the task; entropy inference (HNET+ENT) picks the confident context;
bad options stop the CLI with one line; a run resumes exactly after task 1."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Iterator, Optional

import pytest
import torch
from torch.func import functional_call

from lifelong.platform import checkpoint
from lifelong.platform.config import ModelConfig
from lifelong.platform.learner import Learner
from lifelong.platform.model import Contextual, build_model
from lifelong.platform.probes import PlasticityProbe
from lifelong.strategies.hnet import Hnet, HnetConfig
from lifelong.strategies.hypernet import HyperNet
from lifelong.streams.feed import TaskEnd, TaskStart, TrainRows
from lifelong.streams.registry import build_stream
from tests.conftest import make_config, same
from tests.unit.bad_options import fresh_process_lines, in_process_line
from tests.unit.test_checkpoint import stopped_after
from tests.unit.test_gateon_resume import final_state

SMALL = {"name": "hnet", "embedding_dim": 8, "chunk_dim": 4, "hidden": [16], "chunk_size": 500, "beta": 0.1}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny ops on 2 shared cores: a second OpenMP thread costs more than it brings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(strategy: Optional[dict] = None, epochs: int = 1, probes: Optional[dict] = None) -> Any:
    return make_config(stream={"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 2,
                               "setting": "task", "train_samples_per_task": 120, "test_samples_per_task": 60},
                       model={"hidden": [32]}, strategy={**SMALL, **(strategy or {})},
                       optim={"name": "adam", "lr": 0.01},
                       train={"epochs": epochs, "batch_size": 16, "eval_batch_size": 512},
                       engine={"backend": "torch"}, probes=probes or {"enabled": False}, seed=0)


def chunks_by_hand(net: HyperNet, context: int, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat weights of one context, chunk by chunk, layer by layer, in the dtype of ``p``."""
    layers = len(net.weights)
    out = []
    chunks = p["chunk_embeddings"] if p["chunk_embeddings"].dim() == 2 else p["chunk_embeddings"][context]
    for j in range(chunks.shape[0]):
        h = torch.cat([p["task_embeddings"][context], chunks[j]])
        for i in range(layers):
            h = p[f"weights_{i}"] @ h + p[f"biases_{i}"]
            h = h.clamp(min=0) if i < layers - 1 else h
        out.append(h)
    return torch.cat(out)[:net.n_target]


# -- 1. the chunked generator --------------------------------------------------------------------

@pytest.mark.parametrize("model, chunk_size, per_task_chunks", [({"hidden": [32, 16]}, 300, False),
                                                                ({"conv": [4], "hidden": [16]}, 500, False),
                                                                ({"hidden": [32, 16]}, 300, True)])
def test_the_generator_makes_every_target_parameter_in_chunks_and_runs_the_target(model, chunk_size, per_task_chunks):
    target = build_model(ModelConfig(**model), 64, 6)
    net = HyperNet(target, contexts=2, embedding_dim=5, chunk_dim=3, hidden=[8], chunk_size=chunk_size, seed=0,
                   per_task_chunks=per_task_chunks)
    shapes = {name: p.shape for name, p in target.named_parameters()}
    n_target = sum(p.numel() for p in target.parameters())
    assert net.n_target == n_target and n_target % chunk_size  # the last chunk is cut short
    n_chunks = math.ceil(n_target / chunk_size)
    assert net.chunk_embeddings.shape[-2] == n_chunks and net.weights[-1].shape[0] == chunk_size
    assert net.chunk_embeddings.shape[:-2] == ((2,) if per_task_chunks else ())  # a set per context, or one

    flat = net.generate_flat(torch.tensor([0, 1]))
    assert flat.shape == (2, n_target)
    weights = net.unflatten(flat[0])
    assert list(weights) == list(shapes) and {k: v.shape for k, v in weights.items()} == shapes
    assert sum(v.numel() for v in weights.values()) == n_target
    p = {n: v.detach() for n, v in net.named_parameters()}
    for c in (0, 1):  # chunk j of context c is g([e_c, c_j]); the last one keeps its first values only
        torch.testing.assert_close(flat[c].detach(), chunks_by_hand(net, c, p), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(flat[0], flat[1])

    g = torch.Generator().manual_seed(1)
    x = torch.rand(7, 64, generator=g)
    context = torch.tensor([1, 0, 0, 1, 1, 0, 1])
    with torch.no_grad():
        out = net.eval()(x, context)
        for i in range(7):  # the target module itself, with context i's generated weights
            own = net.unflatten(flat[int(context[i])].detach())
            torch.testing.assert_close(out[i], functional_call(target, own, (x[i:i + 1],))[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[i], net.run_target(own, x[i:i + 1])[0], rtol=1e-5, atol=1e-6)
    own = 5 + (n_chunks * 3 if per_task_chunks else 0)  # e_t, and c_j if per task
    assert net.task_parameters() == own
    assert sum(p.numel() for p in net.parameters()) == net.hypernet_parameters() + 2 * own


# -- 2. the output regulariser -------------------------------------------------------------------

def regulariser64(net: HyperNet, p: dict[str, torch.Tensor], past: list[int], targets: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """beta/|P| sum ||h(e_t') - target_t'||^2 in float64, from ``chunks_by_hand``."""
    return beta / len(past) * sum((chunks_by_hand(net, c, p) - targets[i].double()).square().sum()
                                  for i, c in enumerate(past))


def test_the_regulariser_is_zero_at_the_snapshot_and_its_gradient_is_right():
    beta = 0.7
    learner = Learner(config({"beta": beta}))
    strategy: Hnet = learner.strategy  # type: ignore[assignment]
    net: HyperNet = learner.engine.module  # type: ignore[assignment]
    events = learner.feed.events(start_task=0)
    for event in events:
        if isinstance(event, TrainRows):
            learner.train_rows(event)
        elif isinstance(event, TaskEnd):
            learner.task_end(event)
        else:
            learner.task_start(event)
            if event.task.index == 1:
                break
    assert strategy.trained == [0] and strategy.targets.shape == (1, net.n_target)
    first = next(events)
    assert isinstance(first, TrainRows) and first.task == 1
    terms = learner.train_step(learner.featurize(first.rows))
    assert float(terms["hnet/reg"]) == 0.0  # Theta is Theta* on the first step
    assert terms["loss"] == terms["task_loss"]
    second = next(events)
    assert isinstance(second, TrainRows)
    batch = learner.featurize(second.rows)

    net.train()
    logits = learner.forward(batch.x, batch.task)
    term = strategy.loss_terms(batch, logits)["hnet/reg"]
    assert net.reg_loss is None  # taken: a later step computes its own
    learner.engine.optimizer.zero_grad(set_to_none=True)
    learner.engine.backward(term)
    got = {n: p.grad.clone() for n, p in learner.engine.named.items()}
    learner.engine.optimizer.zero_grad(set_to_none=True)

    p64 = {n: v.detach().double().requires_grad_(True) for n, v in learner.engine.named.items()}
    reg64 = regulariser64(net, p64, [0], strategy.targets, beta)
    assert term.item() > 0 and term.item() == pytest.approx(reg64.item(), rel=1e-5)
    want = dict(zip(p64, torch.autograd.grad(reg64, list(p64.values()))))
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-4,
                                   atol=1e-6 * float(want[name].abs().max()) + 1e-12)
    assert float(want["task_embeddings"][0].abs().sum()) > 0  # e_0 feels it; its mask freezes it
    assert float(want["task_embeddings"][1:].abs().sum()) == 0.0

    g = torch.Generator().manual_seed(2)  # the float64 reference by central differences
    for name in ("weights_0", "weights_1", "chunk_embeddings", "task_embeddings"):
        for _ in range(2):
            index = tuple(int(torch.randint(s, (1,), generator=g)) for s in p64[name].shape)
            if name == "task_embeddings":
                index = (0, index[1])
            eps = 1e-6
            values = []
            for sign in (1, -1):
                q = {n: v.detach().clone() for n, v in p64.items()}
                q[name][index] += sign * eps
                values.append(float(regulariser64(net, q, [0], strategy.targets, beta)))
            assert (values[0] - values[1]) / (2 * eps) == pytest.approx(float(want[name][index]), rel=1e-5, abs=1e-9)


def fake_strategy(**options: Any) -> tuple[Hnet, HyperNet]:
    ctx = SimpleNamespace(n_tasks=4, seed=3, update_mask=lambda name, mask: None)
    strategy = Hnet(HnetConfig(embedding_dim=4, chunk_dim=3, hidden=[8], chunk_size=40, **options), ctx)
    net = strategy.wrap_model(build_model(ModelConfig(hidden=[8]), 6, 3))
    assert isinstance(net, HyperNet)
    strategy.trained = net.trained = [0, 1, 2]
    strategy.targets = torch.randn(3, net.n_target, generator=torch.Generator().manual_seed(4))
    return strategy, net


def test_reg_tasks_draws_its_past_tasks_by_step_and_scales_by_how_many():
    strategy, net = fake_strategy(reg_tasks=1, beta=0.5)
    drawn = []
    for step in range(12):
        strategy.step = step
        strategy._choose_regularised()
        assert net.reg is not None
        past, targets = net.reg
        assert len(past) == 1 and torch.equal(targets, strategy.targets[past])
        drawn.append(int(past[0]))
    assert len(set(drawn)) > 1 and set(drawn) <= {0, 1, 2}  # it changes with the step ...
    for step in (7, 3, 11):  # ... and is the same for the same step
        strategy.step = step
        strategy._choose_regularised()
        assert int(net.reg[0][0]) == drawn[step]  # type: ignore[index]
    strategy.step = 4
    strategy.after_step(None)  # type: ignore[arg-type]
    assert strategy.step == 5 and int(net.reg[0][0]) == drawn[5]  # type: ignore[index]

    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(5))
    for reg_tasks, scale in ((1, 0.5), (2, 0.25), (None, 0.5 / 3)):
        strategy.config.reg_tasks = reg_tasks
        strategy._choose_regularised()
        past, targets = net.reg  # type: ignore[misc]
        assert len(past) == (reg_tasks or 3)
        logits = net.train()(x, torch.full((5,), 3))
        term = strategy.loss_terms(None, logits)["hnet/reg"]  # type: ignore[arg-type]
        p = {n: v.detach() for n, v in net.named_parameters()}
        by_hand = sum((chunks_by_hand(net, int(c), p) - strategy.targets[int(c)]).square().sum() for c in past)
        assert term.item() == pytest.approx(scale * float(by_hand), rel=1e-5)
    strategy.config.beta = 0.0
    strategy._choose_regularised()
    assert net.reg is None and strategy.loss_terms(None, net(x, torch.full((5,), 3))) == {}  # type: ignore[arg-type]


# -- 3. past embeddings, their optimizer state and the targets, through the learner ---------------------

def embedding_state(learner: Learner, name: str) -> dict[str, torch.Tensor]:
    param = learner.engine.named[name]
    state = learner.engine.optimizer.state[param]
    return {"value": param.detach().clone(), "exp_avg": state["exp_avg"].clone(),
            "exp_avg_sq": state["exp_avg_sq"].clone()}


@pytest.mark.parametrize("per_task_chunks", [False, True])
def test_past_embeddings_and_their_adam_state_stay_bit_identical_and_targets_are_snapshotted(per_task_chunks):
    learner = Learner(config({"per_task_chunks": per_task_chunks}))
    strategy: Hnet = learner.strategy  # type: ignore[assignment]
    net: HyperNet = learner.engine.module  # type: ignore[assignment]
    owned = ["task_embeddings", "chunk_embeddings"] if per_task_chunks else ["task_embeddings"]
    init = {name: getattr(net, name).detach().clone() for name in owned}
    starts: list[dict[str, dict[str, torch.Tensor]]] = []  # after the past rows' moments were set
    ends: list[dict[str, dict[str, torch.Tensor]]] = []
    generated: list[torch.Tensor] = []  # h(e_t, Theta) of every task so far, at each task's end
    targets: list[torch.Tensor] = []
    masks: list[dict[str, torch.Tensor]] = []
    g = torch.Generator().manual_seed(8)
    for event in learner.feed.events(start_task=0):
        if isinstance(event, TrainRows):
            learner.train_rows(event)
        elif isinstance(event, TaskStart):
            learner.task_start(event)
            t = event.task.index
            masks.append({k: v.clone() for k, v in learner.ctx.update_masks().items()})
            targets.append(strategy.targets.clone())
            if t:  # past rows' Adam moments: made distinctive, so that any step that touches them shows
                for name in owned:
                    state = learner.engine.optimizer.state[learner.engine.named[name]]
                    for key in ("exp_avg", "exp_avg_sq"):
                        state[key][:t] = torch.rand(state[key][:t].shape, generator=g) + 0.1
            starts.append({name: embedding_state(learner, name) for name in owned} if t else {})
        else:
            assert torch.equal(strategy.targets, targets[-1])  # the snapshot never moves within a task
            learner.task_end(event)
            ends.append({name: embedding_state(learner, name) for name in owned})
            with torch.no_grad():
                generated.append(net.generate_flat(torch.arange(event.task.index + 1)).clone())

    assert [sorted(m) for m in masks] == [sorted(owned)] * 3  # a task's own rows only; Theta is shared
    for name in owned:
        assert [m[name].tolist() for m in masks] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        for t in range(3):
            assert not torch.equal(ends[t][name]["value"][t], init[name][t])  # the current task's rows train
            for later in range(t + 1, 3):  # then they never move again ...
                assert torch.equal(ends[later][name]["value"][t], ends[t][name]["value"][t]), (name, t, later)
                for key in ("exp_avg", "exp_avg_sq"):  # ... nor do their Adam moments through a task
                    assert torch.equal(ends[later][name][key][t], starts[later][name][key][t]), (name, t, key)
            for earlier in range(t):  # and before their task they keep their initial value
                assert torch.equal(ends[earlier][name]["value"][t], init[name][t])
    # Targets: at each task start, h(e_t', Theta*) of every past task with Theta* the
    # parameters then (re-snapshotted each task, as in the paper and hypercl).
    assert targets[0].numel() == 0
    assert torch.equal(targets[1], generated[0])
    assert torch.equal(targets[2], generated[1][:2])
    assert not torch.equal(targets[2][0], targets[1][0])  # Theta moved during task 1
    assert strategy.trained == [0, 1, 2] and net.trained == [0, 1, 2]
    # the regulariser held h(e_0) near its target through task 1
    drift = (generated[1][0] - generated[0][0]).norm() / generated[0][0].norm()
    assert float(drift) < 0.3, float(drift)  # 0.11 shared, 0.07 per-task chunks; 0.64 shared with beta=0


# -- 4. entropy task inference (HNET+ENT) ----------------------------------------------------------

def test_entropy_inference_picks_the_confident_context():
    """Weights set by hand: context t's target reads only inputs 2t and 2t+1, where task t's
    rows live (the other inputs are small noise), so it is confident on its own rows only.
    Contexts 0, 2 and 3 are trained; context 1 is not and must never be chosen."""
    target = build_model(ModelConfig(hidden=[]), 8, 2)  # Linear(8, 2): 18 weights, 4 chunks of 5
    net = HyperNet(target, contexts=4, embedding_dim=4, chunk_dim=4, hidden=[16], chunk_size=5, seed=0)
    assert net.n_target == 18 and net.chunk_embeddings.shape[0] == 4
    with torch.no_grad():
        net.task_embeddings.copy_(torch.eye(4))
        net.chunk_embeddings.copy_(torch.eye(4))
        first, last = net.weights[0], net.weights[1]
        first.zero_(), last.zero_(), net.biases[0].fill_(-1.0), net.biases[1].zero_()
        for t in range(4):
            weight = torch.zeros(2, 8)
            weight[0, 2 * t], weight[0, 2 * t + 1] = 5.0, -5.0
            weight[1] = -weight[0]
            flat = torch.cat([weight.flatten(), torch.zeros(2 + 2)])  # bias 0, padding to 20
            for j in range(4):  # hidden unit (t, j) is 1 exactly for e_t with c_j
                unit = 4 * t + j
                first[unit, t], first[unit, 4 + j] = 1.0, 1.0
                last[:, unit] = flat[5 * j:5 * j + 5]
    for t in range(4):
        weights = net.unflatten(net.generate_flat(torch.tensor([t]))[0].detach())
        assert float(weights["0.weight"][0, 2 * t]) == 5.0 and float(weights["0.weight"].abs().sum()) == 20.0

    net.trained = [0, 2, 3]
    g = torch.Generator().manual_seed(6)
    xs, truth = [], []
    for t in net.trained:
        x = torch.randn(40, 8, generator=g) * 0.02
        x[:, 2 * t:2 * t + 2] = torch.rand(40, 2, generator=g)
        xs.append(x)
        truth.append(torch.full((40,), t))
    x, truth = torch.cat(xs), torch.cat(truth)
    with torch.no_grad():
        logits = net.eval()(x, torch.full_like(truth, Contextual.INFER))
        inferred = net.inferred
        assert inferred is not None and set(inferred.tolist()) <= {0, 2, 3}
        assert float((inferred == truth).double().mean()) >= 0.9
        torch.testing.assert_close(logits, net(x, inferred))  # each row's logits: its chosen context's
        net.trained = []  # nothing trained yet: everything runs in context 0
        net(x, torch.full_like(truth, Contextual.INFER))
        assert net.inferred.tolist() == [0] * len(x)


# -- 5. bad options --------------------------------------------------------------------------------

BAD = {
    "beta": (["strategy.beta=-0.5"], "strategy.beta: must be >= 0, got -0.5"),
    "reg_tasks": (["strategy.reg_tasks=0"], "strategy.reg_tasks: must be >= 1 or null (all past tasks), got 0"),
    "inference": (["strategy.inference=oracle"], "strategy.inference: 'oracle' is not one of task, entropy"),
    "chunk_size": (["strategy.chunk_size=0"], "strategy.chunk_size: must be >= 1, got 0"),
    "chunk_std": (["strategy.chunk_std=0"], "strategy.chunk_std: must be > 0, got 0.0"),
}
FRESH = ("beta", "chunk_std")
OK = ["strategy.name=hnet"]


def test_bad_options_stop_the_real_cli_with_one_line_before_anything_starts(tmp_path):
    lines = fresh_process_lines(tmp_path, {name: [*OK, *BAD[name][0]] for name in FRESH})
    for name, line in lines.items():
        assert line == f"lifelong: error: {BAD[name][1]}", (name, line)


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_bad_option_is_one_cli_line_and_exit_2_before_ray_starts(name, capsys, monkeypatch, tmp_path):
    line = in_process_line([*OK, *BAD[name][0]], capsys, monkeypatch, tmp_path)
    assert line == f"lifelong: error: {BAD[name][1]}", line


# -- 6. plasticity probes on the generated network ---------------------------------------------

def test_the_probes_measure_the_target_as_a_plain_network_holding_the_generated_weights():
    """Through the real learner (probes on, the default): every measure of a task-1 probe is
    the one a plain MLP gets when it holds h(e_1, Theta) as its own parameters."""
    cfg = config(probes={"enabled": True, "every": 0})
    learner = Learner(cfg)
    net: HyperNet = learner.engine.module  # type: ignore[assignment]
    measured: dict[str, float] = {}
    for event in learner.feed.events(start_task=0):
        if isinstance(event, TrainRows):
            learner.train_rows(event)
        elif isinstance(event, TaskStart):
            learner.task_start(event)
        else:
            if event.task.index == 1:
                measured = learner.run_probe()
                break
            learner.task_end(event)
    assert learner.probe is not None and learner.probe_batch is not None
    assert measured and all(k.startswith(("plasticity/hidden0/", "plasticity/hidden1/")) for k in measured)

    with torch.no_grad():
        generated = net.unflatten(net.generate_flat(torch.tensor([1]))[0]).items()
    plain = build_model(cfg.model, learner.spec.input_dim, learner.spec.n_outputs)
    with torch.no_grad():
        for name, value in generated:
            plain.get_parameter(name).copy_(value)
    by_hand = PlasticityProbe(plain, learner.masks, cfg.probes.dormant_tau).measure(
        dict(plain.named_parameters()), learner.probe_batch)
    assert measured.keys() == by_hand.keys()
    for key, value in by_hand.items():
        assert measured[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert by_hand["plasticity/hidden0/grad_norm"] > 0  # the loss gradient of the generated weights


# -- 7. resume -------------------------------------------------------------------------------------

def test_hnet_resumes_exactly_after_task_1(tmp_path):
    cfg = config({"reg_tasks": 1}, epochs=2)
    stream = build_stream(cfg.stream, seed=0)
    uninterrupted = Learner(cfg, stream=stream)
    result = uninterrupted.run()
    state = stopped_after(cfg, stream, task=1)

    saved = state["strategy"]
    assert saved["trained"] == [0, 1] and saved["current"] == 1 and saved["step"] > 0
    assert saved["targets"].shape == (1, uninterrupted.engine.module.n_target)
    assert state["engine"]["update_masks"]["task_embeddings"].tolist() == [0, 1, 0]

    resumed = Learner(cfg, stream=stream)
    checkpoint.restore(resumed, checkpoint.read(checkpoint.write(state, tmp_path), cfg))
    assert same(resumed.strategy.state_dict(), saved)
    assert resumed.engine.module.trained == [0, 1]
    assert same(resumed.ctx.update_masks(), state["engine"]["update_masks"])
    assert resumed.run().R == result.R
    want, got = final_state(uninterrupted), final_state(resumed)
    assert same(got["strategy"], want["strategy"])
    assert want["strategy"]["trained"] == [0, 1, 2]
    for part in ("masks", "params"):
        assert got[part].keys() == want[part].keys()
        for name, value in want[part].items():
            assert torch.equal(got[part][name], value), (part, name)
