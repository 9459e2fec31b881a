"""Fused parameter updates: SGD(-momentum) and Adam/AdamW with an optional element mask or
soft scale, a row-sparse mode and EWC's penalty gradient, in one pass over memory.

``reference.py`` is the specification (plain torch). ``select`` picks the fastest
implementation this process can use: the C/OpenMP kernel on CPU, Triton on CUDA, falling
back to the reference with one warning line when a kernel cannot be built. The warning
goes to the ``lifelong.kernels`` logger, whose warnings reach the console from Ray workers
too (``runlog.console_logging``), where ``warnings.warn`` output would only reach a log file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Union

import torch

from lifelong.kernels import reference


@dataclass(frozen=True)
class Kernels:
    """One implementation of the update spec in ``reference.py``."""

    name: str  # reference | cpu | triton
    sgd_update: Callable[..., None]
    adam_update: Callable[..., None]
    # Lists of ``reference.UpdateItem`` with shared hyper-parameters: one call per step.
    sgd_update_many: Callable[..., None]
    adam_update_many: Callable[..., None]


REFERENCE = Kernels("reference", reference.sgd_update, reference.adam_update,
                    reference.sgd_update_many, reference.adam_update_many)
log = logging.getLogger(__name__)

# One selection per (device type, choice) and process: the build, the import and the
# fallback warning happen once.
_selected: dict[tuple[str, str], Kernels] = {}


def select(device: Union[torch.device, str], choice: str = "auto") -> Kernels:
    """``choice``: auto (the fused kernel for ``device``, else the reference with a warning)
    or reference."""
    if choice not in ("auto", "reference"):
        raise ValueError(f"kernel choice must be 'auto' or 'reference', not {choice!r}")
    device_type = torch.device(device).type
    key = (device_type, choice)
    if key not in _selected:
        _selected[key] = REFERENCE if choice == "reference" else _fused_or_reference(device_type)
    return _selected[key]


def _fused_or_reference(device_type: str) -> Kernels:
    try:
        if device_type == "cpu":
            from lifelong.kernels import cpu
            return cpu.load_kernels()
        if device_type == "cuda":
            from lifelong.kernels import triton_update
            return Kernels("triton", triton_update.sgd_update, triton_update.adam_update,
                           triton_update.sgd_update_many, triton_update.adam_update_many)
        reason = f"no fused kernel for device type {device_type!r}"
    except Exception as exc:  # noqa: BLE001 - any failure to build or import means the reference
        reason = f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())  # one console line
    log.warning("kernels: using the reference updates on %s (%s) (engine.kernels=reference "
                "uses it without this warning)", device_type, reason)
    return REFERENCE
