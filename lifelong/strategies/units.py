"""Hidden units of a flat ``nn.Sequential`` stack, for strategies that act on units
(continual backprop, ReDo) and for the plasticity probes.

A hidden layer is an activation module fed by a Linear or Conv2d (its *in* layer) and
feeding the next Linear or Conv2d (its *out* layer), possibly through a Flatten. Its units
are the in layer's output features (conv: channels). A unit's *incoming* weights are its
row of the in layer's weight (and its bias); its *outgoing* weights are its column of the
out layer's weight (conv: a slice of in-channels; through a Flatten: the ``positions``
columns its channel was flattened into, channel-major as ``nn.Flatten`` lays them out).

The edits are pure functions of a name -> tensor mapping, so they run unchanged on the
parameters ``ctx.gathered()`` hands out at any ZeRO stage; ``replace_units`` applies them,
and the optimizer-state resets, through the strategy context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from lifelong.platform.errors import ConfigError
from lifelong.strategies.base import StrategyContext

WEIGHTED = (nn.Linear, nn.Conv2d)
ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Sigmoid)


@dataclass(frozen=True)
class HiddenLayer:
    name: str  # "hidden0", "hidden1", ... in depth order
    in_layer: str  # module names inside the Sequential, e.g. "0"
    activation: str
    out_layer: str
    n_units: int
    fan_in: int  # inputs per unit (conv: in_channels * kernel area)
    conv: bool  # units are channels of a Conv2d
    positions: int  # out-layer inputs per unit: 1, a conv kernel's area, or H*W through a Flatten

    def in_weight(self) -> str:
        return f"{self.in_layer}.weight"

    def in_bias(self) -> str:
        return f"{self.in_layer}.bias"

    def out_weight(self) -> str:
        return f"{self.out_layer}.weight"

    def out_bias(self) -> str:
        return f"{self.out_layer}.bias"


def hidden_layers(model: nn.Module, who: str = "this strategy", prefix: str = "") -> list[HiddenLayer]:
    """The hidden layers of a Linear/Conv2d stack; ConfigError (before compute) otherwise.
    ``prefix`` is the stack's name inside a larger model (module and parameter names)."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError(f"{who} needs the platform's flat nn.Sequential model, got "
                          f"{type(model).__name__} (was it wrapped by another strategy?)")
    children = list(model.named_children())
    layers: list[HiddenLayer] = []
    for i, (name, module) in enumerate(children):
        if not isinstance(module, WEIGHTED):
            continue
        if i + 1 >= len(children) or not isinstance(children[i + 1][1], ACTIVATIONS):
            continue  # the output layer, or a linear map without a nonlinearity
        j = i + 2
        flatten = j < len(children) and isinstance(children[j][1], nn.Flatten)
        j += int(flatten)
        if j >= len(children) or not isinstance(children[j][1], WEIGHTED):
            raise ConfigError(f"{who}: the activation after layer {name!r} must feed a Linear or "
                              f"Conv2d (through at most a Flatten), found {type(children[j][1]).__name__}"
                              if j < len(children) else f"{who}: layer {name!r}'s units feed nothing")
        out = children[j][1]
        units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        layers.append(HiddenLayer(f"hidden{len(layers)}", prefix + name, prefix + children[i + 1][0],
                                  prefix + children[j][0],
                                  units, fan_in(module), isinstance(module, nn.Conv2d),
                                  _positions(out, units, name, who)))
        if module.bias is None or out.bias is None:
            raise ConfigError(f"{who}: layers {name!r} and {children[j][0]!r} need biases")
    if not layers:
        raise ConfigError(f"{who} needs at least one hidden layer (model.hidden or model.conv)")
    return layers


def fan_in(module: nn.Module) -> int:
    """From the module's shape attributes, so it also works on meta or partitioned weights."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * math.prod(module.kernel_size)


def _positions(out: nn.Module, units: int, name: str, who: str) -> int:
    if isinstance(out, nn.Conv2d):
        if out.groups != 1:
            raise ConfigError(f"{who}: grouped convolutions are not supported (layer after {name!r})")
        return math.prod(out.kernel_size)
    if out.in_features % units:
        raise ConfigError(f"{who}: {units} units of layer {name!r} do not divide the next "
                          f"layer's {out.in_features} inputs")
    return out.in_features // units


# -- activity: what the units did on a batch ----------------------------------------------------
def per_input_activity(acts: torch.Tensor) -> torch.Tensor:
    """[N, U] from a layer's output: conv channels averaged over positions."""
    return acts.flatten(2).mean(2) if acts.dim() == 4 else acts


# -- views of the outgoing weights ------------------------------------------------------------------
def outgoing(layer: HiddenLayer, out_weight: torch.Tensor) -> torch.Tensor:
    """The out layer's weight as [n_out, n_units, positions] (a view: edits write through)."""
    return out_weight.view(out_weight.shape[0], layer.n_units, layer.positions)


def outgoing_magnitude(layer: HiddenLayer, out_weight: torch.Tensor) -> torch.Tensor:
    """Per unit: the summed |weight| of every connection leaving it."""
    return outgoing(layer, out_weight).abs().sum((0, 2))


def incoming_magnitude(layer: HiddenLayer, in_weight: torch.Tensor) -> torch.Tensor:
    """Per unit: the mean |weight| of the connections entering it."""
    return in_weight.flatten(1).abs().mean(1)


# -- edits -----------------------------------------------------------------------------------------------
def reinit_units(params: dict[str, torch.Tensor], layer: HiddenLayer, units: torch.Tensor,
                 generator: torch.Generator, mean_activity: Optional[torch.Tensor] = None) -> None:
    """Replace ``units`` (bool [n_units]) by fresh ones that do not change the function:

    - incoming weights drawn from the layer's init distribution (PyTorch's default for
      Linear and Conv2d, U(-1/sqrt(fan_in), 1/sqrt(fan_in))), incoming bias 0;
    - if ``mean_activity`` is given (continual backprop), the out layer's bias absorbs the
      old unit's mean contribution, sum over its outgoing weights x its mean activation;
    - outgoing weights 0, so the new unit starts silent and grows only if it helps.
    """
    index = units.nonzero().flatten()
    if index.numel() == 0:
        return
    w_in = params[layer.in_weight()]
    bound = 1.0 / math.sqrt(layer.fan_in)
    fresh = torch.empty((index.numel(), *w_in.shape[1:]), dtype=torch.float32)
    fresh.uniform_(-bound, bound, generator=generator)
    w_in[index] = fresh.to(w_in)
    params[layer.in_bias()][index] = 0.0
    out = outgoing(layer, params[layer.out_weight()])
    if mean_activity is not None:
        bias = params[layer.out_bias()]
        contribution = (out[:, index, :] * mean_activity[index].to(out)[None, :, None]).sum((1, 2))
        bias += contribution.view(bias.shape[0], *([1] * (bias.dim() - 1)))
    out[:, index, :] = 0.0


def optimizer_masks(layer: HiddenLayer, units: torch.Tensor,
                    shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Where a replaced unit's optimizer state lives: its in-weight rows, in-bias entries
    and out-weight columns, as bool masks shaped like each parameter."""
    rows = units.view(-1, *([1] * (len(shapes[layer.in_weight()]) - 1)))
    out_shape = shapes[layer.out_weight()]
    columns = units[None, :, None].expand(out_shape[0], layer.n_units, layer.positions)
    return {layer.in_weight(): rows.expand(shapes[layer.in_weight()]),
            layer.in_bias(): units.clone(),
            layer.out_weight(): columns.reshape(out_shape)}


def replace_units(ctx: StrategyContext, chosen: list[tuple[HiddenLayer, torch.Tensor]],
                  generator: torch.Generator,
                  mean_activity: Optional[Callable[[HiddenLayer], torch.Tensor]] = None) -> None:
    """Re-initialise ``chosen`` (layer, bool unit mask) pairs, in depth order, inside one
    ``ctx.gathered`` of just the parameters they touch, then zero their optimizer state.
    ``mean_activity`` (continual backprop) turns on the next layer's bias correction."""
    names = sorted({n for layer, _ in chosen for n in (layer.in_weight(), layer.in_bias(),
                                                        layer.out_weight(), layer.out_bias())})
    with ctx.gathered(names) as params:
        shapes = {n: params[n].shape for n in names}
        for layer, units in chosen:
            reinit_units(params, layer, units, generator,
                         None if mean_activity is None else mean_activity(layer))
    for layer, units in chosen:
        for param, mask in optimizer_masks(layer, units, shapes).items():
            ctx.reset_optimizer_state(param, mask)
