"""The figures behind docs/moe.md that are not a `lifelong run`:

- ``update``: the optimizer step of an MoE model (MLP 784-256-256-10, 10 experts per layer,
  Adam) with 8 of 10 experts frozen through the masked-update facility, against all
  experts training, and against torch.optim.Adam (foreach) on the same parameters: what a
  user would write, which steps every expert.
- ``gates``: task inference on Split MNIST's test rows (5 tasks x 2 digits) by
  reconstruction error, for three kinds of gate each fit on its task's training rows only:
  a sigmoid autoencoder per task trained by Adam (Expert Gate's kind), the closed-form
  linear one per task, and the closed-form linear one per class (what ``moe`` uses).
- ``budget``: the bytes the MoE model of configs/split_*_moe_free.yaml holds beyond a plain
  MLP of the same widths, as rows of a replay buffer (uint8 pixels + an int64 label):
  the equal-memory replay baseline of docs/moe.md.

    .venv/bin/python benchmarks/moe.py [update|gates|budget ...]   (default: all three)
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from _timing import alternating_medians, seconds_per_call
from lifelong.platform.config import ModelConfig, OptimConfig
from lifelong.platform.engine import TorchEngine
from lifelong.platform.model import build_model
from lifelong.strategies.experts import MoENet, RoutingTables
from lifelong.strategies.subspace_gates import SubspaceGates
from lifelong.streams.datasets import load_dataset

HIDDEN, EXPERTS, TASKS, K = [256, 256], 10, 5, 2


def moe_model() -> MoENet:
    torch.manual_seed(0)
    tables = RoutingTables(TASKS, EXPERTS, 10, None)
    tables.routable[:] = True
    return MoENet(build_model(ModelConfig(hidden=HIDDEN), 784, 10), EXPERTS, TASKS, K, tables, seed=0)


def optimizer_seconds(frozen: bool, torch_adam: bool, steps: int = 60) -> float:
    """Seconds per optimizer step after one real forward/backward (gradients on every expert)."""
    model = moe_model()
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    if torch_adam:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
        step = opt.step
    else:
        engine = TorchEngine(model, OptimConfig(name="adam", lr=1e-3))
        if frozen:
            train = torch.zeros(EXPERTS)
            train[-2:] = 1.0
            for name, p in model.named_parameters():
                if name.endswith(".weight") and p.dim() == 3 or name.endswith(".bias") and p.dim() == 2 \
                        and p.shape[0] == EXPERTS:
                    engine.update_mask(name, train)
        step = engine.optimizer.step
    # every row of the batch visits every expert once, so every expert has a gradient
    for i in range(4):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x, torch.full((64,), i % TASKS)), y).backward()
    for p in model.parameters():  # dense gradients everywhere: the worst case for the update
        if p.grad is None:
            p.grad = torch.randn_like(p) * 1e-3
    return seconds_per_call(step, steps)


def update(rounds: int = 3) -> None:
    torch.set_num_threads(2)
    cases = {"all experts training": (False, False), "8 of 10 frozen": (True, False),
             "torch.optim.Adam, all": (False, True)}
    med = alternating_medians({label: lambda args=args: optimizer_seconds(*args) for label, args in cases.items()},
                              rounds)
    base = med["all experts training"]
    print("optimizer step, MLP 784-256-256-10 with 10 experts per layer (2.7M parameters), Adam")
    for label, seconds in med.items():
        print(f"  {label:<24} {1e3 * seconds:8.3f} ms   {seconds / base:5.2f}x")


def gates(rank: int = 20) -> None:
    torch.set_num_threads(2)
    data = load_dataset("mnist")
    xtr, ytr = data.train.x.float() / 255, data.train.y.long()
    xte, yte = data.test.x.float() / 255, data.test.y.long()
    truth = yte // 2
    torch.manual_seed(0)
    errors = []
    for task in range(TASKS):
        rows = xtr[ytr // 2 == task]
        ae = nn.Sequential(nn.Linear(784, 32), nn.Sigmoid(), nn.Linear(32, 784), nn.Sigmoid())
        opt = torch.optim.Adam(ae.parameters(), 1e-3)
        for i in torch.randperm(len(rows)).split(128):
            loss = (ae(rows[i]) - rows[i]).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            errors.append((ae(xte) - xte).square().sum(1))
    sgd = float((torch.stack(errors, 1).argmin(1) == truth).double().mean())
    per_task, per_class = SubspaceGates(784, rank), SubspaceGates(784, rank)
    for task in range(TASKS):
        rows = ytr // 2 == task
        per_task.observe(xtr[rows], torch.zeros(int(rows.sum()), dtype=torch.int64))
        per_task.fit(task, [0], lambda t: t)
        per_class.observe(xtr[rows], ytr[rows])
        per_class.fit(task, [2 * task, 2 * task + 1], lambda t: t)
    print(f"task inference on Split MNIST's 10,000 test rows (5 tasks x 2 digits):")
    print(f"  sigmoid autoencoder per task (32 units, 1 epoch, Adam)   {sgd:.4f}")
    for label, gate in (("per task", per_task), ("per class (moe)", per_class)):
        accuracy = float((gate.infer(xte) == truth).double().mean())
        print(f"  linear autoencoder {label:<16} (rank {rank}, closed form) {accuracy:.4f}")


def budget() -> None:
    model = moe_model()
    plain = build_model(ModelConfig(hidden=HIDDEN), 784, 10)
    gate_floats = 10 * (784 + 784 * 20)  # a mean and a rank-20 basis per class
    moe_bytes = 4 * (sum(p.numel() for p in model.parameters()) + gate_floats)
    plain_bytes = 4 * sum(p.numel() for p in plain.parameters())
    row_bytes = 784 + 8
    print(f"moe: {moe_bytes / 2**20:.2f} MiB (parameters + gates); plain MLP: {plain_bytes / 2**20:.2f} MiB; "
          f"the difference holds {(moe_bytes - plain_bytes) // row_bytes} replay rows of {row_bytes} bytes")


if __name__ == "__main__":
    chosen = sys.argv[1:] or ["update", "gates", "budget"]
    for name in chosen:
        {"update": update, "gates": gates, "budget": budget}[name]()
