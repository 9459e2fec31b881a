"""An expert layer's submodule calls do not depend on the routing. ZeRO-3 records the
order of submodule calls in a step and expects every rank to repeat it at every step (a
rank that sees another order re-checks it with a collective the others never join): an
activation called once per chosen expert hung a 2-worker stage-3 run."""

from __future__ import annotations

import torch
from torch import nn

from lifelong.strategies.experts import ExpertLayer, RoutingTables


def calls_per_forward(rows: int) -> tuple[list[str], int]:
    """Which submodules a forward on ``rows`` rows calls, in order, and how many experts it used."""
    tables = RoutingTables(contexts=1, experts=6, outputs=3, gates=None)
    tables.routable[:] = True
    layer = ExpertLayer(nn.Linear(4, 5), nn.ReLU(), 6, 1, 2, 0, tables, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.router_weight.normal_(generator=torch.Generator().manual_seed(1))
    seen: list[str] = []
    for name, module in layer.named_modules():
        module.register_forward_pre_hook(lambda m, args, name=name: seen.append(name))
    x = torch.randn(rows, 4, generator=torch.Generator().manual_seed(2))
    out = layer(x, torch.zeros(rows, dtype=torch.int64))
    assert out.shape == (rows, 5)
    return seen, int(layer.last.experts.unique().numel())


def test_an_expert_layer_calls_its_submodules_alike_whatever_the_routing():
    few, many, none = calls_per_forward(1), calls_per_forward(64), calls_per_forward(0)
    assert (few[1], many[1], none[1]) == (2, 6, 0)  # one row: k experts; many rows: all of them
    assert few[0] == many[0] == none[0] == ["", "activation"]
