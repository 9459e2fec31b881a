"""What does freezing cost, or save? A real run with 90% of the hidden units frozen
against the same run unfrozen (issue 10's last figure; goal: step time <= 0.5x).

Both runs go through the real path (stream actor, DeepSpeed learner, MLflow) on
Permuted MNIST (full 60k-row tasks, MLP 784-400-400-10, Adam, batch 128), with
strategy_examples/freeze_strategy.py:FreezeUnits at ``fraction=0.9`` and ``fraction=0``
(whose all-ones masks leave every update dense), in interleaved rounds. Step time is
train seconds per optimizer step, not counting time blocked on the stream actor. It also
times the optimizer step alone (the plain engine, the same model, interleaved), where the
fused row-sparse kernel's saving shows, and forward + backward, which freezing does not
shrink (a frozen unit still computes its activation and passes gradients to earlier
layers): they bound what any sparse update can save.

    .venv/bin/python benchmarks/frozen_units.py [--rounds=3] [key=value overrides]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _runs import ROOT, measured_run, scratch_cwd

from lifelong.platform.config import OptimConfig  # noqa: E402
from lifelong.platform.engine import TorchEngine  # noqa: E402
from lifelong.platform.model import build_model  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
STRATEGY = f"strategy.name={ROOT / 'strategy_examples' / 'freeze_strategy.py'}:FreezeUnits"
RUN = ["stream.dataset=mnist", "stream.scenario=permuted", "stream.n_tasks=2", "stream.setting=domain",
       "model.hidden=[400,400]", "optim.name=adam", "optim.lr=0.001", "train.batch_size=128",
       "eval.every=2", "probes.enabled=false", STRATEGY]
FRACTIONS = {"unfrozen": 0.0, "90% frozen": 0.9}


def step_seconds(m: dict[str, float]) -> float:
    return (m["time/train_seconds"] - m["stream/wait_seconds"]) / m["time/steps"]


def components(fraction: float, steps: int = 100) -> tuple[float, float]:
    """Seconds per step of (forward + backward, the fused optimizer step) on the run's
    model and batch size, with the run's kind of masks: the plain engine, in process."""
    eng = TorchEngine(build_model_like_the_run(), OptimConfig(name="adam", lr=0.001))
    g = torch.Generator().manual_seed(0)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        rows = (torch.rand(400, generator=g) >= fraction).float()
        eng.update_mask(name, rows if fraction else None)
    x, y = torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)
    timed = {"backward": 0.0, "optimizer": 0.0}
    for i in range(steps + 5):
        eng.module.zero_grad(set_to_none=True)
        started = time.perf_counter()
        torch.nn.functional.cross_entropy(eng(x), y).backward()
        between = time.perf_counter()
        eng.optimizer.step()
        if i >= 5:  # warm-up
            timed["backward"] += between - started
            timed["optimizer"] += time.perf_counter() - between
    return timed["backward"] / steps, timed["optimizer"] / steps


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
    fb: dict[str, list[float]] = {k: [] for k in FRACTIONS}
    with scratch_cwd():
        for r in range(args.rounds):
            order = list(FRACTIONS) if r % 2 == 0 else list(reversed(FRACTIONS))
            for label in order:
                fraction = FRACTIONS[label]
                _, _, metrics = measured_run("permuted_mnist_ewc.yaml",
                                             RUN + [f"strategy.fraction={fraction}", *overrides])
                step[label].append(step_seconds(metrics))
                backward, optimizer = components(fraction)
                fb[label].append(backward)
                opt[label].append(optimizer)
                print(f"round {r + 1} {label:>10}: step {1e3 * step[label][-1]:.3f} ms; in process: "
                      f"forward+backward {1e3 * backward:.3f} ms, optimizer {1e3 * optimizer:.3f} ms",
                      flush=True)
    med = {k: statistics.median(v) for k, v in step.items()}
    med_opt = {k: statistics.median(v) for k, v in opt.items()}
    med_fb = {k: statistics.median(v) for k, v in fb.items()}
    print("\nmedian over rounds      unfrozen   90% frozen   ratio   goal")
    print(f"run step (ms)          {1e3 * med['unfrozen']:8.3f}   {1e3 * med['90% frozen']:10.3f}"
          f"   {med['90% frozen'] / med['unfrozen']:5.2f}x  <= 0.5x")
    print(f"optimizer step (ms)    {1e3 * med_opt['unfrozen']:8.3f}   {1e3 * med_opt['90% frozen']:10.3f}"
          f"   {med_opt['90% frozen'] / med_opt['unfrozen']:5.2f}x")
    print(f"forward+backward (ms)  {1e3 * med_fb['unfrozen']:8.3f}   {1e3 * med_fb['90% frozen']:10.3f}"
          f"   {med_fb['90% frozen'] / med_fb['unfrozen']:5.2f}x")
    whole = med_fb["unfrozen"] + med_opt["unfrozen"]
    print(f"forward+backward is {med_fb['unfrozen'] / whole:.0%} of the in-process step: a frozen unit still "
          "computes its activation and passes gradients back, so freezing can save at most the rest "
          f"(best ratio {(med_fb['90% frozen'] + med_opt['90% frozen']) / whole:.2f}x in process)")


if __name__ == "__main__":
    main()
