"""The step time of ``hnet`` against ``naive`` on the same target (docs/hypernetworks.md).

One training step (forward, backward, Adam step; batch 128) of the target MLP
784-100-100-10 trained directly, which is what ``naive`` runs, against the same target
whose weights a hypernetwork generates (configs/permuted_mnist_hnet.yaml's generator),
while it regularises 0, 4 or 9 past tasks, all of them or ``reg_tasks=1`` of them.
Each case is timed in alternating rounds in one process and reported as a median, with
its ratio to naive: the machines are noisy, the ratios are what to read.

    .venv/bin/python benchmarks/hnet.py
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from _timing import alternating_medians, seconds_per_call
from lifelong.platform.config import ModelConfig
from lifelong.platform.model import build_model
from lifelong.strategies.hnet import HnetConfig
from lifelong.strategies.hypernet import HyperNet

BATCH, TASKS = 128, 10


def hypernet(target: torch.nn.Sequential) -> HyperNet:
    c = HnetConfig()  # the defaults: configs/permuted_mnist_hnet.yaml's hypernetwork
    return HyperNet(target, TASKS, c.embedding_dim, c.chunk_dim, list(c.hidden), c.chunk_size, 0,
                    c.per_task_chunks, c.embedding_std, c.chunk_std)


def step_fn(past: int | None, regularised: int = 0) -> Callable[[], None]:
    """One training step of naive (``past`` None) or of hnet on task ``past`` with
    ``regularised`` of its past tasks in the output regulariser."""
    torch.manual_seed(0)
    target = build_model(ModelConfig(hidden=[100, 100]), 784, 10)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    if past is None:
        model: torch.nn.Module = target
        forward = lambda: target(x)  # noqa: E731
    else:
        net = hypernet(target)
        model = net
        context = torch.full((BATCH,), past)
        if regularised:
            chosen = torch.arange(regularised)
            with torch.no_grad():
                net.reg = (chosen, net.generate_flat(chosen) + 0.01)
        forward = lambda: net(x, context)  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(forward(), y)
        if past is not None and model.reg_loss is not None:  # type: ignore[union-attr]
            loss = loss + 0.01 / regularised * model.reg_loss  # type: ignore[union-attr]
            model.reg_loss = None  # type: ignore[union-attr]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(rounds: int = 5) -> None:
    torch.set_num_threads(2)
    cases = {"naive (the target trained directly)": (None, 0), "hnet, first task (no regulariser)": (0, 0),
             "hnet, task 4, 4 past tasks": (4, 4), "hnet, task 9, 9 past tasks": (9, 9),
             "hnet, task 9, reg_tasks=1": (9, 1)}
    steps = {label: step_fn(*args) for label, args in cases.items()}
    med = alternating_medians({label: lambda step=step: seconds_per_call(step, 40) for label, step in steps.items()}, rounds)
    base = med["naive (the target trained directly)"]
    print(f"one training step, target MLP 784-100-100-10, batch {BATCH}, Adam, 2 threads (median of {rounds})")
    for label, s in med.items():
        print(f"  {label:<38} {1e3 * s:7.2f} ms   {s / base:5.2f}x naive")


if __name__ == "__main__":
    main()
