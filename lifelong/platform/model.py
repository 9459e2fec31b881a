"""The learner's network and the task-aware logits every part of the platform shares."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from lifelong.platform.config import ModelConfig
from lifelong.platform.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build_model(cfg: ModelConfig, input_dim: int, n_outputs: int) -> nn.Sequential:
    """A flat ``nn.Sequential`` so strategies can find units by layer: optional 3x3 stride-2
    convolutions (``model.conv`` channels, on the rows seen as square one-channel images),
    then Linear layers of ``model.hidden`` widths, each followed by the activation."""
    layers: list[nn.Module] = []
    width = input_dim
    if cfg.conv:
        side = math.isqrt(input_dim)
        if side * side != input_dim:
            raise ConfigError(f"model.conv: needs square images, but rows have {input_dim} values")
        layers.append(nn.Unflatten(1, (1, side, side)))
        channels = 1
        for out_channels in cfg.conv:
            layers += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1),
                       ACTIVATIONS[cfg.activation]()]
            channels, side = out_channels, (side - 1) // 2 + 1
        layers.append(nn.Flatten())
        width = channels * side * side
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


class Contextual(nn.Module):
    """A model whose forward also takes each row's *context* id: ``forward(x, context)``.

    ``Strategy.wrap_model`` returns one when the network depends on more than the input
    (GateON's context gates; a hypernetwork's task embedding). The platform then asks the
    strategy which context each row runs in (``Strategy.context``) and passes it at every
    forward: training, evaluation, probes and ``ctx.logits_fn``. ``body`` is the flat
    ``nn.Sequential`` inside, whose hidden layers the probes and unit strategies find."""

    body_prefix: str = "net."  # where the body's modules and parameters live by name
    INFER: int = -1  # a row's context to be inferred by the model from the row itself, which
    # then keeps its choices of the last forward in ``inferred`` (task-free strategies)
    inferred: Optional[torch.Tensor] = None

    @property
    def body(self) -> nn.Sequential:
        return getattr(self, self.body_prefix.rstrip("."))


def model_args(model: nn.Module, x: torch.Tensor, context: Optional[torch.Tensor]) -> tuple:
    """The forward arguments of ``model``: ``(x,)``, or ``(x, context)`` for a Contextual
    model (context 0 for every row where none is given: a dummy forward)."""
    if not isinstance(model, Contextual):
        return (x,)
    if context is None:
        context = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    return (x, context)


def mask_logits(logits: torch.Tensor, task: torch.Tensor, masks: Optional[torch.Tensor]) -> torch.Tensor:
    """Task-incremental setting: outputs not owned by a row's task can never win."""
    if masks is None:
        return logits
    return logits.masked_fill(~masks[task], torch.finfo(logits.dtype).min)
