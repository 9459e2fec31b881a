"""A group of learner processes on Ray: one actor per rank, joined in one process group.

Why not Ray Train: on a 2-core machine its controller and helper actors (placement-group
cleaner, preemption watcher, dataset manager, synchronisation and autoscaling actors)
took about 10 s before the first step, printed their own lines, and broke when two runs
each started a local Ray. A learner needs little of it: ranks, a torch process group
(``env://``, which DeepSpeed's ``init_distributed`` then uses), all ranks placed at once,
fail-fast when any rank fails, and restarts from the last checkpoint (``fit``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lifelong.platform.errors import LifelongError, TrainingError, first_line

WorkerFn = Callable[[int, int, dict], Any]  # (rank, world_size, payload) -> rank's result
PLACEMENT_NOTICE_S = 10.0  # say what we wait for if the cluster cannot place the group by then


@dataclass(frozen=True)
class Placement:
    workers: int
    cpus_per_worker: int
    gpu: bool = False
    runtime_env: Optional[dict] = None  # e.g. the user's own strategy files (plugin_shipping.py)


@ray.remote(num_cpus=0)
class LearnerProcess:
    """One rank. Sets the ``env://`` variables torch.distributed reads, then runs the function."""

    def node(self) -> str:
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def run(self, fn: WorkerFn, rank: int, world_size: int, master: tuple[str, int],
            local_rank: int, payload: dict) -> Any:
        os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
        return fn(rank, world_size, payload)


class WorkerGroup:
    """``placement.workers`` learner processes, placed together (a placement group), so a
    group starts whole or waits whole: never half a process group blocking on the rest."""

    def __init__(self, placement: Placement, notice: Optional[Callable[[str], None]] = None) -> None:
        bundle = {"CPU": placement.cpus_per_worker, **({"GPU": 1} if placement.gpu else {})}
        self.gpu = placement.gpu
        self.group = placement_group([bundle] * placement.workers, strategy="PACK")
        if not _ready(self.group, timeout=PLACEMENT_NOTICE_S):
            if notice is not None:
                notice(f"waiting for the cluster to free {placement.workers} x {bundle} for the "
                       f"learners (another run may hold them)")
            ray.get(self.group.ready())
        self.actors = [
            LearnerProcess.options(
                num_cpus=placement.cpus_per_worker, num_gpus=1 if placement.gpu else 0,
                runtime_env=placement.runtime_env,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, i),
            ).remote()
            for i in range(placement.workers)]

    def run(self, fn: WorkerFn, payload: dict) -> list[Any]:
        """Run ``fn`` on every rank; the first rank to fail fails the group (the others
        would block in their next collective)."""
        nodes = ray.get([a.node.remote() for a in self.actors])
        master = (nodes[0], ray.get(self.actors[0].free_port.remote()))
        world = len(self.actors)
        # A GPU learner sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES per actor), which
        # is device 0 to it; CPU learners are numbered within their node.
        local_ranks = [0 if self.gpu else nodes[:i].count(node) for i, node in enumerate(nodes)]
        refs = [a.run.remote(fn, rank, world, master, local_ranks[rank], payload)
                for rank, a in enumerate(self.actors)]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done[0])  # raises the rank's error at once
        return ray.get(refs)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self.group)


def fit(fn: WorkerFn, payload: dict, placement: Placement, max_failures: int,
        on_restart: Optional[Callable[[int, str], None]] = None,
        notice: Optional[Callable[[str], None]] = None) -> list[Any]:
    """Run the group; if a rank dies or fails with anything but a ``LifelongError`` (which a
    restart would only repeat: divergence, a bad checkpoint), start a fresh group, up to
    ``max_failures`` times. ``fn`` resumes from the last checkpoint itself."""
    failures = 0
    while True:
        group = WorkerGroup(placement, notice)
        try:
            return group.run(fn, payload)
        except Exception as err:  # noqa: BLE001 - classified below
            ours = lifelong_cause(err)
            if ours is not None:
                raise ours from None
            if failures >= max_failures:
                raise TrainingError(f"training failed{_after(failures)}: {describe(err)}") from None
            failures += 1
            if on_restart is not None:
                on_restart(failures, describe(err))
        finally:
            group.shutdown()


def lifelong_cause(err: BaseException) -> Optional[LifelongError]:
    """The ``LifelongError`` a rank raised, under Ray's wrapping, if that is what failed.
    (Ray's wrapper also subclasses the error's type, but its message is the traceback.)"""
    seen: set[int] = set()
    node: Optional[BaseException] = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        inner = getattr(node, "cause", None)
        if isinstance(inner, BaseException):
            node = inner
            continue
        if isinstance(node, LifelongError):
            return node
        node = node.__cause__
    return None


def describe(err: BaseException) -> str:
    """One line for a rank's failure: the root cause's last line, not Ray's wrapping."""
    if isinstance(err, ray.exceptions.RayActorError):
        return "a learner process died (killed, or out of memory)"
    cause = getattr(err, "cause", None)
    return first_line(cause if isinstance(cause, BaseException) else err, last=True)[:300]


def _after(failures: int) -> str:
    return f" after {failures} restart{'s' * (failures != 1)}" if failures else ""


def _ready(group: Any, timeout: float) -> bool:
    ready, _ = ray.wait([group.ready()], timeout=timeout)
    return bool(ready)
