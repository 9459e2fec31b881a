"""Where each parameter's elements live in the tensors this rank's optimizer steps.

A plain worker and ZeRO-0 step every parameter whole. ZeRO 1-3 step flat fp32 partitions:
each rank holds a slice of the concatenation of a parameter group's parameters, so one
parameter may be split across ranks, and one flat tensor holds slices of many parameters.
A mask or penalty given for a whole parameter must land on exactly the elements of this
rank's partition that belong to it. Instead of re-deriving DeepSpeed's partitioning, this
reads the mappings DeepSpeed keeps for its own ``safe_get_local_*`` accessors:

- ZeRO 1/2: ``param._hp_mapping`` (deepspeed/utils/tensor_fragment.py), whose
  ``lp_fragment_address`` is where the slice starts in the flattened parameter and
  ``hp_fragment_address`` where it starts in the flat partition of ``param_group_index``;
- ZeRO-3: ``safe_get_local_fp32_param(param)``, a view into the flat fp32 partition (found
  by its storage), holding elements ``[rank * n, (rank + 1) * n)`` of the padded, flattened
  parameter, ``n = param.partition_numel()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Fragment:
    """Elements ``[param_start, param_start + numel)`` of the flattened parameter are
    elements ``[flat_start, flat_start + numel)`` of ``flat``, the tensor the optimizer
    steps."""

    flat: torch.Tensor
    flat_start: int
    param_start: int
    numel: int


Layout = dict[str, list[Fragment]]


def whole_layout(named: dict[str, nn.Parameter]) -> Layout:
    """A plain worker, ZeRO-0: the optimizer steps each parameter itself."""
    return {name: [Fragment(p, 0, 0, p.numel())] for name, p in named.items() if p.requires_grad}


def zero12_layout(named: dict[str, nn.Parameter], zero_optimizer: Any) -> Layout:
    flats = zero_optimizer.single_partition_of_fp32_groups
    layout: Layout = {}
    for name, param in named.items():
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:  # no slice of this parameter on this rank
            layout[name] = []
            continue
        flat = flats[mapping.param_group_index]
        start = mapping.hp_fragment_address.start
        assert mapping.hp_fragment.data_ptr() == flat[start:].data_ptr(), name
        layout[name] = [Fragment(flat, start, mapping.lp_fragment_address.start,
                                 mapping.lp_fragment_address.numel)]
    return layout


def zero3_layout(named: dict[str, nn.Parameter], zero_optimizer: Any, rank: int) -> Layout:
    from deepspeed.utils import safe_get_local_fp32_param

    flats = list(zero_optimizer.fp32_partitioned_groups_flat)
    layout: Layout = {}
    for name, param in named.items():
        local = safe_get_local_fp32_param(param)
        flat = next(f for f in flats if _same_storage(f, local))
        size = param.partition_numel()
        first = rank * size
        real = max(0, min(size, param.ds_numel - first))  # the rest is padding
        layout[name] = ([Fragment(flat, local.storage_offset() - flat.storage_offset(), first, real)]
                        if real else [])
    return layout


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def slice_of(values: torch.Tensor, fragment: Fragment) -> torch.Tensor:
    """The part of a whole parameter's ``values`` (any shape, flattened) in ``fragment``."""
    return values.reshape(-1)[fragment.param_start:fragment.param_start + fragment.numel]


def flat_slice(fragment: Fragment, tensor: torch.Tensor) -> torch.Tensor:
    """``fragment``'s elements of ``tensor``, a tensor laid out like ``fragment.flat``."""
    return tensor.view(-1)[fragment.flat_start:fragment.flat_start + fragment.numel]
