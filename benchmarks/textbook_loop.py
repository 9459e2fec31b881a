"""The continual-learning loop a user writes by hand, run as its own process.

What `lifelong run` is measured against (benchmarks/overhead_vs_plain_loop.py): plain
torch, the textbook EWC -- the penalty lam/2 * sum F (theta - theta*)^2 through autograd,
the Fisher as squared mean-batch gradients over the whole task -- and, after each task,
accuracy on every task's full test set. Same data, permutations, initial weights, batches
and optimizer as the config. Prints one JSON line of timings.

    .venv/bin/python benchmarks/textbook_loop.py configs/permuted_mnist_ewc.yaml [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

STARTED = time.time()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lifelong.platform.config import load_config  # noqa: E402
from lifelong.streams.batches import epoch_seed  # noqa: E402
from lifelong.streams.registry import build_stream  # noqa: E402


@dataclass
class HandSetup:
    """What every hand-written loop starts with: data, the MLP, the optimizer, features."""

    stream: Any
    model: nn.Module
    opt: torch.optim.Optimizer
    feats: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

    def batches(self, cfg: Any, task: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The task's training batches, features and labels, in the platform's seeded order."""
        x, y, bs = task.train.x, task.train.y, cfg.train.batch_size
        for epoch in range(cfg.train.epochs):
            g = torch.Generator().manual_seed(epoch_seed(cfg.seed, task.index, epoch))
            order = torch.randperm(len(y), generator=g)
            for b in range(len(y) // bs):
                idx = order[b * bs:(b + 1) * bs]
                yield self.feats(x[idx], task.permutation), y[idx]

    def evaluate(self) -> list[float]:
        with torch.no_grad():
            return [float((self.model(self.feats(t.test.x, t.permutation)).argmax(1) == t.test.y)
                          .float().mean()) for t in self.stream.tasks]


def hand_setup(cfg: Any, threads: int) -> HandSetup:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    stream = build_stream(cfg.stream, cfg.seed)  # data prep, the same in every loop
    scale, shift = 1.0 / (stream.max_value * stream.std), stream.mean / stream.std
    sizes = [stream.input_dim, *cfg.model.hidden, stream.n_outputs]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    o = cfg.optim
    opt = (torch.optim.Adam(model.parameters(), lr=o.lr) if o.name == "adam" else
           torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum))

    def feats(x: torch.Tensor, perm: Optional[torch.Tensor]) -> torch.Tensor:
        return (x if perm is None else x[:, perm]).float().mul_(scale).sub_(shift)

    return HandSetup(stream, model, opt, feats)


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    hand = hand_setup(cfg, int(os.environ.get("THREADS", "2")))
    stream, model, opt, feats, evaluate = hand.stream, hand.model, hand.opt, hand.feats, hand.evaluate
    lam, bs = cfg.strategy.lam, cfg.train.batch_size  # type: ignore[attr-defined]
    penalties: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # (F, theta*)

    train_s = boundary_s = 0.0
    first_step = None
    R = []
    init = evaluate()
    for task in stream.tasks:
        x, y = task.train.x, task.train.y
        started = time.perf_counter()
        for xb, yb in hand.batches(cfg, task):
            loss = F.cross_entropy(model(xb), yb)
            for fisher, star in penalties:
                loss = loss + lam / 2 * sum((fisher[n] * (p - star[n]) ** 2).sum()
                                            for n, p in model.named_parameters())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            first_step = first_step or time.time()
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        batches = len(y) // bs
        for b in range(batches):
            model.zero_grad()
            F.cross_entropy(model(feats(x[b * bs:(b + 1) * bs], task.permutation)),
                            y[b * bs:(b + 1) * bs]).backward()
            for n, p in model.named_parameters():
                fisher[n] += p.grad.detach() ** 2 / batches
        penalties.append((fisher, {n: p.detach().clone() for n, p in model.named_parameters()}))
        R.append(evaluate())
        boundary_s += time.perf_counter() - started
    print(json.dumps({"train": train_s, "boundary": boundary_s, "first_step": first_step - STARTED,
                      "last_task_done": time.time() - STARTED, "R": R, "init": init}))


if __name__ == "__main__":
    main()
