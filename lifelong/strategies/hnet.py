"""Task-conditioned hypernetworks (von Oswald et al., "Continual learning with
hypernetworks", ICLR 2020; code: hypercl, hypnettorch, posterior_replay_cl).

A hypernetwork h(e_t, Theta) generates every weight of the target network from a learned
task embedding e_t, in chunks (``hypernet.py``). Only the current task's embedding (and,
with ``per_task_chunks``, its chunk embeddings) trains: past ones are frozen through the
masked-update facility, optimizer state included. At
each task's start the outputs h(e_t', Theta*) of every past task are snapshotted as
targets, and the loss adds the output regulariser

    beta / |P| * sum over t' in P of ||h(e_t', Theta) - h(e_t', Theta*)||^2

with P every past task, or (``reg_tasks``) that many of them drawn afresh each step
(seeded by the step: every worker draws the same). Evaluation in the domain- and
class-incremental settings can infer each row's task (``inference=entropy``): the
embedding whose prediction has the lowest entropy (HNET+ENT).

beta multiplies a mean task loss: posterior_replay_cl's beta, on a loss summed over a task's
N rows, is ours times N. Left out: the look-ahead (Delta Theta) of the paper's regulariser,
which needs two backward passes per step (docs/hypernetworks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Matrix, Strategy, Support
from lifelong.strategies.hypernet import HyperNet
from lifelong.strategies.task_inference import expected_contexts, inference_matrix, latest_mean, record
from lifelong.streams.batches import Batch, Rows
from lifelong.streams.scenarios import TaskInfo


@dataclass
class HnetConfig(StrategyConfig):
    name: str = "hnet"
    # Defaults: posterior_replay_cl's run for Permuted MNIST-10 with a 100-100 target (95.05%);
    # configs/permuted_mnist_hnet.yaml and docs/hypernetworks.md say what each changes.
    embedding_dim: int = 32  # task embedding e_t
    chunk_dim: int = 16  # chunk embedding c_j
    hidden: list[int] = field(default_factory=lambda: [100, 100])  # the generator's hidden widths
    chunk_size: int = 750  # target weights per generated chunk
    per_task_chunks: bool = True  # a set of chunk embeddings per task (hypnettorch's use_cond_chunk_embs)
    embedding_std: float = 1.0  # init std of the task embeddings
    chunk_std: float = 0.1  # init std of the chunk embeddings
    beta: float = 0.01  # output regulariser strength, on a mean task loss
    reg_tasks: Optional[int] = None  # past tasks regularised per step (drawn afresh); None: all
    inference: str = "task"  # task: rows run in their task | entropy: evaluation infers it (HNET+ENT)


class Hnet(Strategy):
    name = "hnet"
    description = "hypernetwork CL: chunked task-conditioned weights, output regulariser, entropy task inference"
    Config = HnetConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: HnetConfig) -> None:  # type: ignore[override]
        for key in ("embedding_dim", "chunk_dim", "chunk_size"):
            require(getattr(config, key) >= 1, f"strategy.{key}", f"must be >= 1, got {getattr(config, key)}")
        require(all(h >= 1 for h in config.hidden), "strategy.hidden", f"widths must be >= 1, got {config.hidden}")
        for key in ("embedding_std", "chunk_std"):
            require(getattr(config, key) > 0, f"strategy.{key}", f"must be > 0, got {getattr(config, key)}")
        require(config.beta >= 0, "strategy.beta", f"must be >= 0, got {config.beta}")
        require(config.reg_tasks is None or config.reg_tasks >= 1, "strategy.reg_tasks",
                f"must be >= 1 or null (all past tasks), got {config.reg_tasks}")
        require(config.inference in ("task", "entropy"), "strategy.inference",
                f"{config.inference!r} is not one of task, entropy")

    def __init__(self, config: HnetConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.current = 0
        self.trained: list[int] = []
        self.targets = torch.zeros(0)  # [past tasks, target weights]: h(e_t', Theta*) at the task's start
        self.step = 0
        self.inference: list[list[float]] = []

    def wrap_model(self, model: nn.Module) -> nn.Module:
        require(isinstance(model, nn.Sequential), "strategy.name",
                f"strategy 'hnet' needs the platform's flat nn.Sequential model, got {type(model).__name__}")
        c = self.config
        self.net = HyperNet(model, self.ctx.n_tasks, c.embedding_dim, c.chunk_dim, list(c.hidden), c.chunk_size,
                            self.ctx.seed, c.per_task_chunks, c.embedding_std, c.chunk_std)
        return self.net

    def compression(self) -> float:
        """Hypernetwork parameters (without the task embeddings) over target parameters."""
        return self.net.hypernet_parameters() / self.net.n_target

    # -- contexts ----------------------------------------------------------------------------------
    def context(self, task: torch.Tensor) -> torch.Tensor:
        return task

    def inferred_contexts(self) -> Optional[list[int]]:
        if self.config.inference != "entropy":
            return None
        return expected_contexts(self.trained, self.ctx.n_tasks)

    def on_task_inference(self, accuracy: list[float]) -> None:
        record(self.inference, accuracy, self.trained)

    # -- per step ----------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        reg, self.net.reg_loss = self.net.reg_loss, None
        if reg is None or self.net.reg is None:
            return {}
        return {"hnet/reg": self.config.beta / len(self.net.reg[0]) * reg}

    def after_step(self, batch: Batch) -> dict[str, float]:
        self.step += 1
        self._choose_regularised()
        return {}

    def _choose_regularised(self) -> None:
        """The past tasks the next step regularises (all, or ``reg_tasks`` drawn by step)."""
        past = len(self.trained)
        if past == 0 or self.config.beta == 0:
            self.net.reg = None
            return
        chosen = torch.arange(past)
        if self.config.reg_tasks is not None and self.config.reg_tasks < past:
            g = torch.Generator().manual_seed(self.ctx.seed * 1_000_003 + self.step)
            chosen = torch.randperm(past, generator=g)[:self.config.reg_tasks].sort().values
        self.net.reg = (torch.tensor(self.trained)[chosen], self.targets[chosen])

    # -- task boundaries ---------------------------------------------------------------------------
    def on_task_start(self, task: TaskInfo) -> None:
        self.current = task.index
        mask = torch.zeros(self.ctx.n_tasks)
        mask[self.current] = 1.0
        self.ctx.update_mask("task_embeddings", mask)
        if self.net.per_task_chunks:
            self.ctx.update_mask("chunk_embeddings", mask)
        if self.trained:
            params = self.ctx.full_params()
            with torch.no_grad():
                self.targets = self.net.generate_flat(torch.tensor(self.trained), params).detach().clone()
        self._choose_regularised()

    def on_task_end(self, task: TaskInfo, data: Rows) -> None:
        self.trained = self.trained[:task.index] + [task.index]
        self.net.trained = list(self.trained)
        self.net.reg = None

    # -- reporting ----------------------------------------------------------------------------------
    def task_metrics(self, task: TaskInfo) -> dict[str, float]:
        out = {"hnet/compression": self.compression(), "hnet/task_parameters": float(self.net.task_parameters())}
        inferred = latest_mean(self.inference, self.trained)
        if inferred is not None:
            out["hnet/task_inference"] = inferred
        return out

    def matrices(self) -> dict[str, Matrix]:
        return {"hnet_task_inference": inference_matrix(self.inference, self.trained)} if self.inference else {}

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "trained": list(self.trained), "targets": self.targets.clone(),
                "step": self.step, "inference": [list(r) for r in self.inference]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current, self.step = int(state["current"]), int(state["step"])
        self.trained = list(state["trained"])
        self.targets = state["targets"].clone()
        self.inference = [list(r) for r in state["inference"]]
        self.net.trained = list(self.trained)
        # Checkpoints are taken at task boundaries, where on_task_end left no regulariser:
        # the next on_task_start snapshots the targets of every trained task, then chooses.
        # (Choosing here indexed targets of len(trained) - 1 rows with len(trained) tasks.)
        self.net.reg = None
