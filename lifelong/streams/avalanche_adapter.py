"""Expose a lifelong task stream as an Avalanche benchmark (``pip install lifelong[avalanche]``).

Use it to run Avalanche's strategies, metrics and loggers on the same real, offline,
checksummed streams lifelong trains on, e.g. to cross-check a result:

    from lifelong.streams.avalanche_adapter import to_avalanche
    benchmark = to_avalanche(build_stream(cfg.stream, cfg.seed))
    for experience in benchmark.train_stream: ...

Workaround, kept to this module: Avalanche imports torchvision, and the registry's
torchvision is a CUDA build whose C++ ops do not load beside the CPU build of torch
(``operator torchvision::nms does not exist``, raised while torchvision registers
fake kernels for those ops at import). Avalanche uses only torchvision's Python
parts, so where the ops are missing we stand in empty modules for the two
registration modules before the first import. Nothing else in lifelong imports
torchvision or Avalanche.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch

from lifelong.streams.batches import Featurizer, Samples
from lifelong.streams.scenarios import TaskStream

_TORCHVISION_OP_REGISTRATIONS = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def import_avalanche() -> Any:
    """``import avalanche``, working around a torchvision without its C++ ops."""
    if "torchvision" not in sys.modules and not _torchvision_ops_load():
        for name in _TORCHVISION_OP_REGISTRATIONS:
            sys.modules.setdefault(name, types.ModuleType(name))
    import avalanche

    return avalanche


def to_avalanche(stream: TaskStream) -> Any:
    """One Avalanche experience per task (train and test streams), features normalised and
    permuted exactly as lifelong's learners see them, task labels = task indices."""
    import_avalanche()
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )

    featurize = Featurizer(stream)
    streams: dict[str, list] = {"train": [], "test": []}
    for task in stream.tasks:
        for split in streams:
            batch = featurize(Samples.of(task, split))
            streams[split].append(tensor_dataset(batch.x, batch.y, task_labels=task.index,
                                                 targets=batch.y.tolist()))
    return benchmark_from_datasets(**streams)


def _torchvision_ops_load() -> bool:
    """Whether torchvision's compiled ops load here (a build matching torch)."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to work around
    libraries = glob.glob(f"{next(iter(spec.submodule_search_locations))}/_C*.so")
    try:
        torch.ops.load_library(libraries[0])
    except (IndexError, OSError, RuntimeError):
        return False
    return True
