"""Hidden units of Linear and Conv2d stacks: finding them, and replacing one without
changing what the network computes (when the old unit's activation was its mean)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lifelong.platform.config import ModelConfig
from lifelong.platform.errors import ConfigError
from lifelong.platform.model import build_model
from lifelong.strategies.units import hidden_layers, optimizer_masks, outgoing_magnitude, reinit_units


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden=[6, 5]), 4, 3)


def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden=[7], conv=[4, 3]), 64, 2)  # 8x8 -> 4x4 -> 2x2


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.data for n, p in model.named_parameters()}


def test_hidden_layers_of_an_mlp():
    layers = hidden_layers(mlp())
    assert [(l.name, l.in_layer, l.activation, l.out_layer) for l in layers] == [
        ("hidden0", "0", "1", "2"), ("hidden1", "2", "3", "4")]
    assert [(l.n_units, l.fan_in, l.positions, l.conv) for l in layers] == [(6, 4, 1, False),
                                                                           (5, 6, 1, False)]


def test_hidden_layers_of_a_conv_stack():
    model = convnet()  # Unflatten, Conv, ReLU, Conv, ReLU, Flatten, Linear, ReLU, Linear
    layers = hidden_layers(model)
    assert [(l.in_layer, l.out_layer, l.n_units, l.fan_in, l.positions, l.conv) for l in layers] == [
        ("1", "3", 4, 9, 9, True),  # conv -> conv: a 3x3 kernel's taps per channel
        ("3", "6", 3, 36, 4, True),  # conv -> flatten -> linear: 2x2 positions per channel
        ("6", "8", 7, 12, 1, False)]


def test_models_without_hidden_units_are_refused():
    with pytest.raises(ConfigError, match="flat nn.Sequential"):
        hidden_layers(nn.Linear(3, 2), "strategy 'cbp'")
    with pytest.raises(ConfigError, match="at least one hidden layer"):
        hidden_layers(build_model(ModelConfig(hidden=[]), 4, 3))


def make_constant(model: nn.Sequential, layer_index: int, unit: int, value: float) -> None:
    """Unit ``unit`` of hidden layer ``layer_index`` outputs ``value`` on every input."""
    layer = hidden_layers(model)[layer_index]
    p = params_of(model)
    p[layer.in_weight()][unit] = 0.0
    p[layer.in_bias()][unit] = value


@pytest.mark.parametrize("build, layer_index, shape", [(mlp, 0, (9, 4)), (mlp, 1, (9, 4)),
                                                       (convnet, 1, (9, 64)), (convnet, 2, (9, 64))])
def test_replacing_a_constant_unit_keeps_the_function(build, layer_index, shape):
    model = build()
    make_constant(model, layer_index, unit=1, value=0.7)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    before = model(x).detach()
    layer = hidden_layers(model)[layer_index]
    units = torch.zeros(layer.n_units, dtype=torch.bool)
    units[1] = True
    params = params_of(model)
    old_in = params[layer.in_weight()].clone()
    old_out = params[layer.out_weight()].clone()
    mean = torch.full((layer.n_units,), 0.7, dtype=torch.float64)
    with torch.no_grad():
        reinit_units(params, layer, units, torch.Generator().manual_seed(2), mean)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    new_in = params[layer.in_weight()]
    bound = layer.fan_in ** -0.5
    assert not torch.equal(new_in[1], old_in[1]) and float(new_in[1].abs().max()) <= bound
    assert torch.equal(new_in[[0, 2]], old_in[[0, 2]])  # other units untouched
    assert float(params[layer.in_bias()][1]) == 0.0
    assert float(outgoing_magnitude(layer, params[layer.out_weight()])[1]) == 0.0
    assert torch.equal(outgoing_magnitude(layer, params[layer.out_weight()])[[0, 2]],
                       outgoing_magnitude(layer, old_out)[[0, 2]])


def test_conv_to_conv_bias_correction_is_exact_away_from_the_padding():
    model = convnet()
    make_constant(model, 0, unit=2, value=0.4)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    upto_second_conv = model[:4]  # its output is 4 channels... -> 3 channels at 2x2
    before = upto_second_conv(x).detach()
    layer = hidden_layers(model)[0]
    units = torch.tensor([False, False, True, False])
    with torch.no_grad():
        reinit_units(params_of(model), layer, units, torch.Generator().manual_seed(2),
                     torch.full((4,), 0.4, dtype=torch.float64))
    after = upto_second_conv(x)
    # 4x4 input, stride 2, padding 1: output (1, 1) reads rows/cols 1..3, inside the image
    torch.testing.assert_close(after[:, :, 1, 1], before[:, :, 1, 1], atol=1e-5, rtol=1e-5)


def test_optimizer_masks_cover_exactly_the_units_rows_and_columns():
    model = convnet()
    layer = hidden_layers(model)[1]  # conv (3 channels) -> flatten (2x2) -> linear(7)
    units = torch.tensor([False, True, False])
    shapes = {n: p.shape for n, p in model.named_parameters()}
    masks = optimizer_masks(layer, units, shapes)
    assert masks["3.weight"].shape == (3, 4, 3, 3) and masks["3.weight"][1].all()
    assert int(masks["3.weight"].sum()) == 4 * 9
    assert masks["3.bias"].tolist() == [False, True, False]
    out = masks["6.weight"]
    assert out.shape == (7, 12) and int(out.sum()) == 7 * 4
    assert out[:, 4:8].all()  # nn.Flatten is channel-major: channel 1 owns columns 4..7
