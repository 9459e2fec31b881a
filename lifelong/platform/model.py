"""The learner's network and the task-aware logits every part of the platform shares."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lifelong.platform.config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build_mlp(cfg: ModelConfig, input_dim: int, n_outputs: int) -> nn.Sequential:
    """Linear/activation stack; a flat ``nn.Sequential`` so strategies can find units by layer."""
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def mask_logits(logits: torch.Tensor, task: torch.Tensor, masks: Optional[torch.Tensor]) -> torch.Tensor:
    """Task-incremental setting: outputs not owned by a row's task can never win."""
    if masks is None:
        return logits
    return logits.masked_fill(~masks[task], torch.finfo(logits.dtype).min)
