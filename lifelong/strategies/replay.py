"""Experience replay with a reservoir buffer (Chaudhry et al. 2019, "On Tiny Episodic Memories").

Every training row the learner has seen has the same chance of being in the buffer
(Vitter's reservoir sampling); each step trains on the batch plus rows drawn from it.

Consistent across data-parallel workers (the reason Mammoth refuses DDP): every worker
offers the *global* batch (all-gathered, in rank order) to its reservoir with the same
seed, so all buffers are identical and equal to a single worker's; each step draws one
global replay batch and each worker trains on its own slice of it. N workers therefore
take the same steps as one worker, which the sharding-equivalence tests check.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Strategy, Support
from lifelong.streams.batches import Batch


@dataclass
class ReplayConfig(StrategyConfig):
    buffer_size: int = 1000
    replay_batch_size: Optional[int] = None  # None = as many rows as the current batch
    seed: int = 0


class Replay(Strategy):
    name = "replay"
    description = "experience replay from a reservoir buffer of past rows"
    Config = ReplayConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: ReplayConfig) -> None:  # type: ignore[override]
        require(config.buffer_size >= 1, "strategy.buffer_size", f"must be >= 1, got {config.buffer_size}")
        require(config.replay_batch_size is None or config.replay_batch_size >= 1,
                "strategy.replay_batch_size", f"must be >= 1 or null, got {config.replay_batch_size}")

    def __init__(self, config: ReplayConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.buffer: Optional[Batch] = None
        self.filled = 0  # rows of the buffer in use
        self.seen = 0  # rows offered to the reservoir so far
        self.rng = random.Random(config.seed)  # the same on every worker, on purpose
        self.draw = torch.Generator().manual_seed(config.seed + 1)

    def augment_batch(self, batch: Batch) -> Batch:
        if self.filled == 0 or self.buffer is None:
            return batch
        world = self.ctx.world_size
        n = self.config.replay_batch_size or len(batch) * world  # global replay rows
        idx = torch.randint(self.filled, (n,), generator=self.draw).tensor_split(world)[self.ctx.rank]
        replayed = Batch(self.buffer.x[idx], self.buffer.y[idx], self.buffer.task[idx])
        return Batch.cat([batch, replayed])

    def after_step(self, batch: Batch) -> dict[str, float]:
        if self.ctx.world_size > 1:
            batch = Batch(*(torch.cat(self.ctx.all_gather(getattr(batch, f)))
                            for f in ("x", "y", "task")))
        size = self.config.buffer_size
        if self.buffer is None:
            self.buffer = Batch(batch.x.new_empty(size, batch.x.shape[1]),
                                batch.y.new_empty(size), batch.task.new_empty(size))
        for row in range(len(batch)):
            self.seen += 1
            if self.filled < size:
                slot = self.filled
                self.filled += 1
            else:
                slot = self.rng.randrange(self.seen)
                if slot >= size:
                    continue
            self.buffer.x[slot] = batch.x[row]
            self.buffer.y[slot] = batch.y[row]
            self.buffer.task[slot] = batch.task[row]
        return {}

    def state_dict(self) -> dict[str, Any]:
        buffer = None if self.buffer is None else (self.buffer.x, self.buffer.y, self.buffer.task)
        return {"buffer": buffer, "filled": self.filled, "seen": self.seen,
                "rng": self.rng.getstate(), "draw": self.draw.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = None if state["buffer"] is None else Batch(*state["buffer"])
        self.filled, self.seen = state["filled"], state["seen"]
        self.rng.setstate(state["rng"])
        self.draw.set_state(state["draw"])
