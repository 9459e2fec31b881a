"""Plasticity probes: how able the network still is to learn, measured while it trains.

Every ``probes.every`` steps and at each task end, the learner runs the current model on
a fixed probe batch of the current task (``probes.rows`` training rows, a seeded choice
made when the task starts) and records, per hidden layer, the measures of
``lifelong.metrics.plasticity``: dead, dormant and rarely active units, effective and
stable rank of the activations, mean |weight| and the norm of the loss gradient of the
layer's incoming weights and bias.

The probe is a functional forward (and backward) of the model's meta-device skeleton
with the full parameters passed in explicitly, so it never touches the engine: no
DeepSpeed hook, gradient buffer or optimizer state sees it, at any ZeRO stage.

A model whose network runs on generated weights (a hypernetwork) offers
``generated_network()``, the plain network, and ``generated_weights(params, context)``,
its weights for a context: the probe then measures that network with those weights, and
"the gradient of a layer's incoming weights" is the loss gradient of the generated ones.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lifelong.metrics.plasticity import layer_measures
from lifelong.platform.errors import ConfigError
from lifelong.platform.model import Contextual, mask_logits, model_args
from lifelong.streams.batches import Batch, Rows, Samples
from lifelong.strategies.units import HiddenLayer, hidden_layers


def probe_rows(rows: Rows, count: int, seed: int, task: int) -> Samples:
    """The task's fixed probe rows: a seeded subset, in row order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + task)
    chosen = torch.randperm(len(rows), generator=g)[:count].sort().values
    return rows[chosen]


class PlasticityProbe:
    def __init__(self, skeleton: nn.Module, masks: Optional[torch.Tensor], tau: float,
                 context_of: Callable[[torch.Tensor], Optional[torch.Tensor]] = lambda task: None) -> None:
        generated = getattr(skeleton, "generated_network", None)
        self.network: nn.Module = generated() if generated is not None else skeleton
        try:
            probe_layers = getattr(self.network, "probe_layers", None)  # a model that says where its units are
            self.layers: list[HiddenLayer] = (
                probe_layers() if probe_layers is not None
                else hidden_layers(self.network.body, "the plasticity probes", self.network.body_prefix)
                if isinstance(self.network, Contextual) else hidden_layers(self.network, "the plasticity probes"))
        except ConfigError as err:
            raise ConfigError(f"{err}; or turn them off with probes.enabled=false") from None
        self.skeleton, self.masks, self.tau, self.context_of = skeleton, masks, tau, context_of
        self.modules = dict(self.network.named_modules())

    def measure(self, params: dict[str, torch.Tensor], batch: Batch) -> dict[str, float]:
        """``{"plasticity/<layer>/<measure>": value}`` for the model ``params`` on ``batch``."""
        acts: dict[str, torch.Tensor] = {}
        hooks = [self.modules[layer.activation].register_forward_hook(self._keep(acts, layer.name))
                 for layer in self.layers]
        context = self.context_of(batch.task)
        if self.network is not self.skeleton:  # generated weights: the probe batch's context's
            params = self.skeleton.generated_weights(params, context)  # type: ignore[operator]
        try:
            live = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
            args = model_args(self.network, batch.x, context)
            logits = mask_logits(functional_call(self.network, live, args), batch.task, self.masks)
            loss = F.cross_entropy(logits, batch.y)
            grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
        finally:
            for hook in hooks:
                hook.remove()
        out: dict[str, float] = {}
        for layer in self.layers:
            grad = torch.cat([grads[layer.in_weight()].flatten(), grads[layer.in_bias()].flatten()])
            values = layer_measures(acts[layer.name], params[layer.in_weight()], grad, self.tau)
            out.update({f"plasticity/{layer.name}/{k}": float(v) for k, v in values.items()})
        return out

    @staticmethod
    def _keep(acts: dict[str, torch.Tensor], name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            acts[name] = output.detach()
        return hook
