"""The MoE network: each hidden layer a pool of expert blocks with one router per context.

An expert block is Linear + activation. A layer's experts are stacked tensors
``weight [E, out, in]`` and ``bias [E, out]``, so that one row of the stack *is* one
expert: the masked-update facility freezes or trains an expert by its row
(``ctx.update_mask(weight, m)`` with ``m [E]``), and a frozen expert costs nothing in the
optimizer step. Routers are stacked the same way per context (``[C, E, in]``), so that a
finished context's router is frozen by its row too.

A row's output is sum_j g_j act(W_{e_j} x + b_{e_j}) over its k chosen experts
(``routing.route``); each expert runs once on the rows routed to it.

What changes while a run goes on (which experts each context may route to, which output
classes a context owns, the task-free gates, the noise seed) is held in ``RoutingTables``,
plain tensors the strategy owns and saves; the model and its meta-device skeleton (a deep
copy) read the same object.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from lifelong.platform.model import Contextual
from lifelong.strategies.routing import Routing, route
from lifelong.strategies.subspace_gates import SubspaceGates
from lifelong.strategies.units import HiddenLayer


class RoutingTables:
    """Run state the MoE model reads at every forward (shared by reference, not copied)."""

    def __init__(self, contexts: int, experts: int, outputs: int, gates: Optional[SubspaceGates]) -> None:
        self.routable = torch.zeros(contexts, experts, dtype=torch.bool)  # experts each context may use
        self.owned = torch.zeros(contexts, outputs, dtype=torch.bool)  # classes each context has seen
        self.mask_owned = gates is not None  # task-free: a context predicts only the classes it saw
        self.gates = gates
        self.noise_std = 0.0
        self.noise_seed = 0
        self.step = 0  # training steps so far: the noise differs at each
        self.global_rows = 0  # training rows per step on all workers together
        self.row_offset = 0  # where this worker's rows start among them

    def __deepcopy__(self, memo: dict) -> "RoutingTables":
        return self  # the skeleton and the live model read one state

    def noise(self, layer: int, rows: int, experts: int, device: torch.device) -> torch.Tensor:
        """This worker's rows of the step's noise for ``layer``: drawn for the global batch
        and sliced, so the rows get the same noise on any number of workers."""
        generator = torch.Generator().manual_seed(
            (self.noise_seed * 1_000_003 + self.step) * 131 + layer)
        total = max(self.global_rows, self.row_offset + rows)
        draws = torch.randn(total, experts, generator=generator)
        return (self.noise_std * draws[self.row_offset:self.row_offset + rows]).to(device)


class ExpertLayer(nn.Module):
    """A hidden layer as ``experts`` blocks Linear(in, out) + activation, routed per context."""

    def __init__(self, linear: nn.Linear, activation: nn.Module, experts: int, contexts: int, k: int,
                 index: int, tables: RoutingTables, generator: torch.Generator) -> None:
        super().__init__()
        fan_in, width = linear.in_features, linear.out_features
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, for each expert
        self.weight = nn.Parameter(torch.empty(experts, width, fan_in).uniform_(-bound, bound, generator=generator))
        self.bias = nn.Parameter(torch.empty(experts, width).uniform_(-bound, bound, generator=generator))
        self.router_weight = nn.Parameter(torch.zeros(contexts, experts, fan_in))  # Shazeer: zero init
        self.router_bias = nn.Parameter(torch.zeros(contexts, experts))
        self.activation, self.k, self.index, self.tables = activation, k, index, tables
        self.last: Optional[Routing] = None  # the last forward's routing (for the losses)

    @property
    def n_experts(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        logits = x.new_zeros(x.shape[0], self.n_experts)
        for c in context.unique().tolist():
            rows = (context == c).nonzero().squeeze(1)
            logits = logits.index_put((rows,), x[rows] @ self.router_weight[c].T + self.router_bias[c])
        allowed = self.tables.routable.to(x.device)[context]
        noise = None
        if self.training and self.tables.noise_std > 0:
            noise = self.tables.noise(self.index, x.shape[0], self.n_experts, x.device)
        routing = route(logits, self.k, allowed, noise)
        self.last = routing
        pre, picked = [], []
        for e in routing.experts.unique().tolist():
            chosen = routing.experts == e  # [rows, k]
            rows = chosen.any(1).nonzero().squeeze(1)
            picked.append((rows, (routing.gates * chosen).sum(1)[rows]))
            pre.append(x[rows] @ self.weight[e].T + self.bias[e])
        # The activation (a submodule) runs once per forward, however many experts were
        # chosen: ZeRO-3 traces submodule calls and expects the same ones on every rank at
        # every step (one call per chosen expert hung a 2-worker stage-3 run).
        y = self.activation(torch.cat(pre) if pre else x.new_zeros(0, self.weight.shape[1]))
        out = x.new_zeros(x.shape[0], self.weight.shape[1])
        for (rows, gate), part in zip(picked, y.split([len(rows) for rows, _ in picked])):
            out = out.index_add(0, rows, gate[:, None] * part)
        return out


class MoENet(Contextual):
    """The body with each hidden Linear (+ its activation) replaced by an ``ExpertLayer``;
    the output layer stays one shared Linear. A row whose context is ``INFER`` (-1) has it
    inferred from its input by the task-free gates; ``inferred`` keeps the last forward's
    choices (evaluation reports task-inference accuracy from them)."""

    body_prefix = "net."

    def __init__(self, net: nn.Sequential, experts: int, contexts: int, k: int, tables: RoutingTables,
                 seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed * 1_000_033 + 29)
        children = list(net.children())
        layers: list[nn.Module] = []
        i = 0
        while i < len(children):
            module = children[i]
            if isinstance(module, nn.Linear) and i + 1 < len(children) and not isinstance(children[i + 1], nn.Linear):
                layers.append(ExpertLayer(module, children[i + 1], experts, contexts, k,
                                          len(layers), tables, generator))
                i += 2
            else:
                layers.append(module)
                i += 1
        self.net = nn.Sequential(*layers)
        self.tables = tables
        self.inferred: Optional[torch.Tensor] = None

    def expert_layers(self) -> list[tuple[str, ExpertLayer]]:
        return [(f"{self.body_prefix}{name}", m) for name, m in self.net.named_children()
                if isinstance(m, ExpertLayer)]

    def probe_layers(self) -> list[HiddenLayer]:
        """For the plasticity probes: an expert layer's units are its output features (the
        gated mixture of its experts' activations); its incoming weights, every expert's."""
        names = [name for name, _ in self.expert_layers()]
        out = []
        for i, (name, layer) in enumerate(self.expert_layers()):
            after = names[i + 1] if i + 1 < len(names) else f"{self.body_prefix}{len(self.net) - 1}"
            out.append(HiddenLayer(f"hidden{i}", name, name, after, int(layer.weight.shape[1]),
                                   int(layer.weight.shape[2]), False, 1))
        return out

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if bool((context < 0).any()):
            guess = self.tables.gates.infer(x) if self.tables.gates is not None else torch.zeros_like(context)
            context = torch.where(context < 0, guess.to(context.device), context)
            self.inferred = context.detach()
        h = x
        for module in self.net:
            h = module(h, context) if isinstance(module, ExpertLayer) else module(h)
        if self.tables.mask_owned:
            owned = self.tables.owned.to(h.device)[context]
            owned = owned | ~owned.any(1, keepdim=True)  # a context that owns nothing yet: no mask
            h = h.masked_fill(~owned, torch.finfo(h.dtype).min)
        return h
