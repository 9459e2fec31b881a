"""What does freezing cost, or save? A real run with 90% of the hidden units frozen
against the same run unfrozen (issue 10's last figure; goal: step time <= 0.5x).

Both runs go through the real path (stream actor, DeepSpeed learner, MLflow) on
Permuted MNIST (full 60k-row tasks, MLP 784-400-400-10, Adam, batch 128), with
strategy_examples/freeze_strategy.py:FreezeUnits at ``fraction=0.9`` and ``fraction=0``
(whose all-ones masks leave every update dense), in interleaved rounds. Step time is
train seconds per optimizer step, not counting time blocked on the stream actor. It also
times the optimizer step alone (the plain engine, the same model, interleaved), where the
fused row-sparse kernel's saving shows without forward and backward around it.

    .venv/bin/python benchmarks/frozen_units.py [--rounds=3] [key=value overrides]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _runs import measured_run, scratch_cwd

from lifelong.platform.config import OptimConfig  # noqa: E402
from lifelong.platform.engine import TorchEngine  # noqa: E402
from lifelong.platform.model import build_model  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
STRATEGY = "strategy.name=strategy_examples.freeze_strategy:FreezeUnits"
RUN = ["stream.dataset=mnist", "stream.scenario=permuted", "stream.n_tasks=2", "stream.setting=domain",
       "model.hidden=[400,400]", "optim.name=adam", "optim.lr=0.001", "train.batch_size=128",
       "eval.every=2", "probes.enabled=false", STRATEGY]
FRACTIONS = {"unfrozen": 0.0, "90% frozen": 0.9}


def step_seconds(m: dict[str, float]) -> float:
    return (m["time/train_seconds"] - m["stream/wait_seconds"]) / m["time/steps"]


def optimizer_step_seconds(fraction: float, steps: int = 200) -> float:
    """The fused optimizer step alone, on the run's model, with the run's masks."""
    eng = TorchEngine(build_model_like_the_run(), OptimConfig(name="adam", lr=0.001))
    g = torch.Generator().manual_seed(0)
    for name, p in eng.named.items():
        p.grad = torch.randn(p.shape, generator=g)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        rows = (torch.rand(400, generator=g) >= fraction).float()
        eng.update_mask(name, rows if fraction else None)
    eng.step()
    started = time.perf_counter()
    for _ in range(steps):
        eng.optimizer.step()
    return (time.perf_counter() - started) / steps


def build_model_like_the_run() -> torch.nn.Module:
    from lifelong.platform.config import ModelConfig

    torch.manual_seed(0)
    return build_model(ModelConfig(hidden=[400, 400]), 784, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(2)
    step: dict[str, list[float]] = {k: [] for k in FRACTIONS}
    opt: dict[str, list[float]] = {k: [] for k in FRACTIONS}
    with scratch_cwd():
        for r in range(args.rounds):
            order = list(FRACTIONS) if r % 2 == 0 else list(reversed(FRACTIONS))
            for label in order:
                fraction = FRACTIONS[label]
                _, _, metrics = measured_run("permuted_mnist_ewc.yaml",
                                             RUN + [f"strategy.fraction={fraction}", *overrides])
                step[label].append(step_seconds(metrics))
                opt[label].append(optimizer_step_seconds(fraction))
                print(f"round {r + 1} {label:>10}: step {1e3 * step[label][-1]:.3f} ms, "
                      f"optimizer step alone {1e3 * opt[label][-1]:.3f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in step.items()}
    med_opt = {k: statistics.median(v) for k, v in opt.items()}
    print("\nmedian over rounds      unfrozen   90% frozen   ratio   goal")
    print(f"run step (ms)          {1e3 * med['unfrozen']:8.3f}   {1e3 * med['90% frozen']:10.3f}"
          f"   {med['90% frozen'] / med['unfrozen']:5.2f}x  <= 0.5x")
    print(f"optimizer step (ms)    {1e3 * med_opt['unfrozen']:8.3f}   {1e3 * med_opt['90% frozen']:10.3f}"
          f"   {med_opt['90% frozen'] / med_opt['unfrozen']:5.2f}x")


if __name__ == "__main__":
    main()
