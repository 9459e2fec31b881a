"""How long does EWC's Fisher take for one task of the default experiment?

One task of configs/permuted_mnist_ewc.yaml's shape (MLP 784-400-400-10, 60,000 rows of
real MNIST, domain setting), single process, 2 threads, no Ray:

- ``old``: the previous path, a gradient per row (torch.func vmap(grad)) over 1,024 rows;
- ``new``: EWC.estimate_fisher today, exact, over all 60,000 rows (fisher.py's closed forms),
  at several ``fisher_batch_size`` values;
- ``hand``: what a hand-written loop does, squared mean-batch gradients over the whole
  task (batch 128, autograd on a plain nn.Sequential) -- an approximation, not the Fisher.

    .venv/bin/python benchmarks/fisher.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifelong.platform.config import load_config  # noqa: E402
from lifelong.platform.learner import Learner  # noqa: E402
from lifelong.strategies.ewc import EWC  # noqa: E402
from lifelong.streams.batches import Samples  # noqa: E402

THREADS = 2
BATCH_SIZES = (256, 1024, 4096)


def seconds(fn: Callable[[], object], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def old_vmap_fisher(ewc: EWC, data: Samples, rows: int = 1024, batch_size: int = 256) -> None:
    """The previous estimate_fisher: a seeded subset, one gradient per row, squared."""
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:rows].sort().values
    params = {k: v.detach() for k, v in ewc.ctx.full_params().items()}

    def row_loss(p, x, y, t):  # type: ignore[no-untyped-def]
        return F.cross_entropy(ewc.ctx.logits_fn(p, x[None], t[None]), y[None])

    per_row_grad = vmap(grad(row_loss), in_dims=(None, 0, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for batch in ewc.ctx.batches(data[keep], batch_size):
        for k, g in per_row_grad(params, batch.x, batch.y, batch.task).items():
            total[k] += g.pow(2).sum(0)


def hand_loop_fisher(learner: Learner, data: Samples, batch_size: int = 128) -> None:
    """Squared mean-batch gradients over the whole task, on a plain nn.Sequential."""
    model = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                          nn.Linear(400, 10))
    model.load_state_dict(learner.engine.module.state_dict())
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(data) - batch_size + 1, batch_size):
        batch = learner.featurize(data[torch.arange(start, start + batch_size)])
        grads = torch.autograd.grad(F.cross_entropy(model(batch.x), batch.y), params)
        for t, g in zip(total, grads):
            t.add_(g.square())


def main() -> None:
    torch.set_num_threads(THREADS)
    cfg = load_config(ROOT / "configs/permuted_mnist_ewc.yaml",
                      ["stream.n_tasks=1", "engine.backend=torch", "strategy.fisher_samples=null"])
    learner = Learner(cfg)
    ewc: EWC = learner.strategy  # type: ignore[assignment]
    task = learner.feed.server.stream.tasks[0]
    data = learner.feed.train_rows(0)
    old = seconds(lambda: old_vmap_fisher(ewc, data))
    hand = seconds(lambda: hand_loop_fisher(learner, data))
    new = {}
    for size in BATCH_SIZES:
        ewc.config.fisher_batch_size = size
        new[size] = seconds(lambda: ewc.estimate_fisher(task, data))
    print(f"EWC Fisher, one task: MLP 784-400-400-10, {len(data)} MNIST rows, {THREADS} threads")
    print(f"  old  vmap(grad), 1,024 rows, batch 256     {old:6.2f} s")
    print(f"  hand squared mean-batch grads, batch 128  {hand:6.2f} s   (an approximation)")
    for size, value in new.items():
        print(f"  new  exact, all {len(data)} rows, batch {size:<5d} {value:6.2f} s   "
              f"{value / old:5.2f}x old   {value / hand:5.2f}x hand")


if __name__ == "__main__":
    main()
