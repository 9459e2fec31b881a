"""GateON through the plain learner on real digits (``strategies/gateon.py``): a unit of
availability 0 keeps its weights *and* Adam state bit-identical through a whole task while
partly available ones move; a saturated layer regains availability only with eps > 0; task
gates keep an old task's accuracy; unsupervised detection finds the boundaries and
evaluation picks each test set's context; bad options stop the real CLI with one line.
Hand computations of the parts: test_gates_and_availability.py; detection alone:
test_context_detection.py."""

from __future__ import annotations

import io
import subprocess
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F

from lifelong.platform import cli
from lifelong.platform.config import load_config
from lifelong.platform.learner import Learner
from lifelong.strategies.context_detection import detection_scores
from lifelong.strategies.gateon import GateON
from lifelong.streams.batches import Samples, epoch_seed, train_batches
from lifelong.streams.feed import TaskStart, TrainRows
from tests.conftest import make_config
from tests.e2e.user_shell import LIFELONG, ROOT, repository_copy, user_env

PERMUTED = {"dataset": "digits", "scenario": "permuted", "n_tasks": 2, "setting": "domain",
            "train_samples_per_task": 320, "test_samples_per_task": 64}


def config(strategy: dict, stream: Optional[dict] = None, hidden: int = 32, seed: int = 0,
           probes: bool = False, **optim: Any) -> Any:
    return make_config(stream=stream or PERMUTED, model={"hidden": [hidden]},
                       strategy={"name": "gateon", **strategy},
                       optim={"name": "adam", "lr": 0.03, **optim},
                       train={"epochs": 1, "batch_size": 16, "eval_batch_size": 64},
                       engine={"backend": "torch"}, probes={"enabled": probes}, seed=seed)


def drive(learner: Learner, at_start: Optional[Callable[[int], None]] = None,
          at_end: Optional[Callable[[int], None]] = None) -> None:
    """``Learner.run``'s loop over the stream, with a look after each task's start hooks
    and before its end hooks (the strategy commits and restarts the optimizer there)."""
    for event in learner.feed.events(start_task=0):
        if isinstance(event, TrainRows):
            learner.train_rows(event)
        elif isinstance(event, TaskStart):
            learner.task_start(event)
            if at_start is not None:
                at_start(event.task.index)
        else:
            if at_end is not None:
                at_end(event.task.index)
            learner.task_end(event)


def task_batches(learner: Learner, task: int = 0) -> list:
    return list(train_batches(Samples.of(learner.feed.server.stream.tasks[task]), learner.featurize,
                              16, epoch_seed(0, task, 0)))


# -- through the learner, on real digits ---------------------------------------------------------

def optimizer_rows(learner: Learner, name: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    param = learner.engine.named[name]
    state = learner.engine.optimizer.state[param]
    return {"value": param.detach()[rows].clone(), "exp_avg": state["exp_avg"][rows].clone(),
            "exp_avg_sq": state["exp_avg_sq"][rows].clone()}


def test_an_unavailable_unit_keeps_weights_and_adam_state_bit_identical_through_a_task():
    """Task 1 starts with committed availability 0 (frozen), 0.5 and 1 on units its gates
    open; the frozen rows' Adam moments are set non-zero by hand, so that a gradient mask
    (Adam still decays the moments and moves the weights) or weight decay would show."""
    learner = Learner(config({}, weight_decay=0.01))
    strategy: GateON = learner.strategy  # type: ignore[assignment]
    units: dict[str, torch.Tensor] = {}
    before: dict[str, dict[str, torch.Tensor]] = {}
    checked: list[int] = []

    def at_start(task: int) -> None:
        if task != 1:
            return
        # task 0's end committed its availability and restarted the optimizer (step counts too)
        assert torch.equal(strategy.committed["hidden0"], strategy.available["hidden0"])
        assert float(strategy.committed["hidden0"].min()) < 1.0  # eta 0.01 x 20 steps: some moved
        assert torch.equal(learner.ctx.update_masks()["net.0.bias"], strategy.committed["hidden0"].float())
        assert all(float(v.abs().sum()) == 0.0 for state in learner.engine.optimizer.state.values()
                   for v in state.values())
        open_ = (learner.engine.named["gates.0.weight"].detach()[1] > 0).nonzero().flatten()
        assert len(open_) >= 9
        units.update(frozen=open_[:3], half=open_[3:6], full=open_[6:9])
        available = torch.ones(32, dtype=torch.float64)
        available[units["frozen"]], available[units["half"]] = 0.0, 0.5
        strategy.available["hidden0"] = available
        strategy._commit()  # as at a context switch: masks, then a fresh optimizer
        g = torch.Generator().manual_seed(7)
        for name in ("net.0.weight", "net.0.bias"):
            state = learner.engine.optimizer.state[learner.engine.named[name]]
            for key in ("exp_avg", "exp_avg_sq"):
                rows = state[key][units["frozen"]]
                state[key][units["frozen"]] = torch.rand(rows.shape, generator=g) + 0.1
            for part in ("frozen", "half", "full"):
                before[f"{name}/{part}"] = optimizer_rows(learner, name, units[part])
        before["readout"] = {"value": learner.engine.named["net.2.weight"].detach()[:, units["frozen"]].clone()}

    def at_end(task: int) -> None:
        if task != 1:
            return
        masks = learner.ctx.update_masks()
        assert torch.equal(masks["net.0.weight"], strategy.committed["hidden0"].float())
        for name in ("net.0.weight", "net.0.bias"):
            frozen = optimizer_rows(learner, name, units["frozen"])
            for key, value in before[f"{name}/frozen"].items():
                assert torch.equal(frozen[key], value), (name, key)
            for part in ("half", "full"):
                moved = optimizer_rows(learner, name, units[part])["value"]
                for row, old in zip(moved, before[f"{name}/{part}"]["value"]):
                    assert not torch.equal(row, old), (name, part)
        readout = learner.engine.named["net.2.weight"].detach()[:, units["frozen"]]
        assert not torch.equal(readout, before["readout"]["value"])  # the output layer always learns
        assert float(strategy.available["hidden0"][units["frozen"]].abs().sum()) == 0.0  # 0 is absorbing
        checked.append(task)

    drive(learner, at_start, at_end)
    assert checked == [1] and learner.result.steps == 40


def test_p_gateon_freezes_single_weights_with_their_adam_state():
    """p-GateON, with availability driven to 0 by training (eta = 1) rather than by hand."""
    learner = Learner(config({"mode": "p", "eta": 1.0}))
    strategy: GateON = learner.strategy  # type: ignore[assignment]
    seen: dict[str, Any] = {}

    def at_start(task: int) -> None:
        if task != 1:
            return
        frozen = strategy.committed["net.0.weight"] == 0
        assert 0 < int(frozen.sum()) < frozen.numel()
        state = learner.engine.optimizer.state[learner.engine.named["net.0.weight"]]
        g = torch.Generator().manual_seed(8)
        for key in ("exp_avg", "exp_avg_sq"):
            state[key][frozen] = torch.rand(int(frozen.sum()), generator=g) + 0.1
        seen.update(frozen=frozen, value=learner.engine.named["net.0.weight"].detach().clone(),
                    state={k: state[k].clone() for k in ("exp_avg", "exp_avg_sq")})

    def at_end(task: int) -> None:
        if task != 1:
            return
        frozen, free = seen["frozen"], strategy.committed["net.0.weight"] == 1
        value = learner.engine.named["net.0.weight"].detach()
        state = learner.engine.optimizer.state[learner.engine.named["net.0.weight"]]
        assert torch.equal(value[frozen], seen["value"][frozen])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key][frozen], seen["state"][key][frozen])
        assert bool((value[free] != seen["value"][free]).any())
        seen["checked"] = True

    drive(learner, at_start, at_end)
    assert seen.get("checked")


@pytest.mark.parametrize("eps", [1.0, 0.0])
def test_a_saturated_layer_regains_availability_in_training_only_with_eps(eps):
    learner = Learner(config({"eta": 0.5, "eps": eps}))
    strategy: GateON = learner.strategy  # type: ignore[assignment]
    strategy.available["hidden0"].fill_(0.01)
    closed = learner.engine.named["gates.0.weight"].detach()[0] <= 0  # relevance 0 in context 0
    assert 0 < int(closed.sum()) < 32
    for batch in task_batches(learner)[:8]:
        learner.train_step(batch)
    available = strategy.available["hidden0"]
    if eps:  # every step: A <- A (1 + 0.5 x 1) where relevance is 0
        torch.testing.assert_close(available[closed], torch.full((int(closed.sum()),), 0.01 * 1.5 ** 8,
                                                                 dtype=torch.float64))
        assert strategy.available_fraction()["hidden0"] >= float(closed.double().mean())
    else:
        assert torch.equal(available[closed], torch.full((int(closed.sum()),), 0.01, dtype=torch.float64))
        assert float(available.max()) <= 0.01 and strategy.available_fraction()["hidden0"] == 0.0


def test_task_gates_keep_the_first_tasks_accuracy_where_naive_forgets():
    split = {"dataset": "digits", "scenario": "split", "n_tasks": 2, "classes_per_task": 5,
             "setting": "task", "train_samples_per_task": 320, "test_samples_per_task": 128}
    gateon = Learner(config({"eta": 1.0}, stream=split, hidden=64)).run().R
    naive = Learner(make_config(stream=split, model={"hidden": [64]}, strategy={"name": "naive"},
                                optim={"name": "adam", "lr": 0.03},
                                train={"epochs": 1, "batch_size": 16, "eval_batch_size": 64},
                                engine={"backend": "torch"}, probes={"enabled": False}, seed=0)).run().R
    assert gateon[0][0] > 0.8 and gateon[1][1] > 0.8 and naive[1][1] > 0.8  # both learn
    assert gateon[1][0] >= gateon[0][0] - 0.02  # kept (0.969 -> 0.969 when written)
    assert naive[1][0] < naive[0][0] - 0.05 and gateon[1][0] > naive[1][0] + 0.05  # 0.961 -> 0.820


def test_detect_mode_finds_the_task_switches_and_evaluation_picks_each_tasks_context():
    stream = {**PERMUTED, "n_tasks": 3}
    learner = Learner(config({"context": "detect", "contexts": 8, "ratio": 1.1, "window": 5,
                              "confidence_rate": 0.2}, stream=stream, hidden=64, probes=True))
    strategy: GateON = learner.strategy  # type: ignore[assignment]
    at_switches: list[tuple[bool, bool]] = []
    after_step = strategy.after_step

    def watched(batch: Any) -> dict[str, float]:
        known = len(strategy.switches)
        out = after_step(batch)
        if len(strategy.switches) > known:  # committed as it was (the batch ran in the old
            at_switches.append((  # context: its relevance is not used), optimizer restarted
                all(torch.equal(strategy.available[k], strategy.committed[k]) for k in strategy.available),
                all(float(v.abs().sum()) == 0.0 for state in learner.engine.optimizer.state.values()
                    for v in state.values())))
        return out

    strategy.after_step = watched  # type: ignore[method-assign]
    result = learner.run()
    assert strategy.boundaries == [0, 20, 40]
    assert at_switches == [(True, True)] * len(strategy.switches)
    scores = detection_scores(strategy.switches, strategy.boundaries[1:])
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0 and scores["delay_steps"] <= 2
    assert strategy.detector.known == 3 and strategy.eval_chosen == [0, 1, 2]
    metrics = strategy.task_metrics(learner.spec.tasks[2])
    assert metrics["gateon/contexts"] == 3.0 and metrics["gateon/detect/recall"] == 1.0
    usage = strategy.matrices()["gateon_context_per_task"].values
    assert [max(range(len(row)), key=row.__getitem__) for row in usage] == [0, 1, 2]

    # the last row, by hand: each task's whole test set in each known context, lowest loss wins
    model = learner.engine.module.eval()
    with torch.no_grad():
        for t, task in enumerate(learner.feed.server.stream.tasks):
            batch = learner.featurize(Samples.of(task, "test"))
            runs = [model(batch.x, torch.full_like(batch.task, k)) for k in range(3)]
            best = min(range(3), key=lambda k: float(F.cross_entropy(runs[k], batch.y)))
            assert best == strategy.eval_chosen[t]
            accuracy = float((runs[best].argmax(1) == batch.y).double().mean())
            assert result.R[-1][t] == pytest.approx(accuracy, abs=1e-12)
        # the detector's measurement of a batch in other contexts: the plain loss there
        batch = task_batches(learner, 1)[0]
        tried = strategy._try([0, 2], batch)
        for k, loss in zip((0, 2), tried):
            assert loss == pytest.approx(float(F.cross_entropy(model(batch.x, torch.full_like(batch.task, k)),
                                                               batch.y)), rel=1e-6)
    assert all(len(row) == 3 for row in result.R) and len(learner.result.probes) == 3  # probes ran

    # resume: the state survives a checkpoint's save and weights-only load
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    resumed = GateON(strategy.config, learner.ctx)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.detector.state_dict() == strategy.detector.state_dict()
    assert (resumed.switches, resumed.boundaries, resumed.usage, resumed.eval_chosen) == (
        strategy.switches, strategy.boundaries, strategy.usage, strategy.eval_chosen)
    for key in ("available", "committed"):
        assert torch.equal(getattr(resumed, key)["hidden0"], getattr(strategy, key)["hidden0"])


# -- bad options: one line, exit 2, before any compute ------------------------------------------------

def test_bad_options_stop_the_real_cli_with_one_line_before_anything_runs(tmp_path):
    """As a user types it: the venv's ``lifelong`` in a fresh process (two at once: each
    costs the interpreter's start-up)."""
    cases = {"mode": ("strategy.mode=q", "strategy.mode: 'q' is not one of n, p"),
             "confident": ("strategy.confident=1.0", "strategy.confident: must be in [0, 1), got 1.0")}
    procs = {}
    for name, (override, _) in cases.items():
        root = repository_copy(tmp_path / name, "configs")
        procs[name] = (root, subprocess.Popen(
            [LIFELONG, "run", "configs/split_digits_ewc.yaml", "strategy.name=gateon", override],
            cwd=root, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (root, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.splitlines() == [f"lifelong: error: {cases[name][1]}"] and out == ""
        assert sorted(p.name for p in root.iterdir()) == ["configs"]  # no run, no log, no store


@pytest.mark.parametrize("override, key", [
    ("strategy.context=tasks", "strategy.context"),
    ("strategy.eta=0", "strategy.eta"),
    ("strategy.eta=-0.5", "strategy.eta"),
    ("strategy.eps=-0.1", "strategy.eps"),
    ("strategy.gate_init=0", "strategy.gate_init"),
    ("strategy.confident=-0.1", "strategy.confident"),
    ("strategy.contexts=0", "strategy.contexts"),
    ("strategy.ratio=0.9", "strategy.ratio"),
    ("strategy.window=0", "strategy.window"),
    ("strategy.confidence_rate=0", "strategy.confidence_rate"),
])
def test_every_bad_option_is_one_cli_line_naming_it(override, key, capsys):
    code = cli.main(["run", str(ROOT / "configs" / "split_digits_ewc.yaml"), "strategy.name=gateon", override])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"lifelong: error: {key}: ")


def test_good_options_load():
    cfg = load_config(None, ["strategy.name=gateon", "strategy.mode=p", "strategy.context=detect",
                             "strategy.gate_init=null", "strategy.eps=0", "strategy.confident=0"])
    assert (cfg.strategy.mode, cfg.strategy.context, cfg.strategy.gate_init) == ("p", "detect", None)
