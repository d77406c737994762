from collections import OrderedDict

import pytest
import torch
from torch import nn

from tutorials_pkg.definition import (
    MultiHeadNet,
    MySequential,
    ResidualMLP,
    UnregisteredListMLP,
    count_parameters,
    mlp_named,
    mlp_sequential,
    module_key,
)


def test_sequential_names_layers_by_position_or_by_our_names():
    assert list(mlp_sequential().state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(mlp_named().state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_named_and_positional_chains_compute_the_same_thing():
    positional, named = mlp_sequential(), mlp_named()
    named.load_state_dict(dict(zip(named.state_dict(), positional.state_dict().values())))
    x = torch.randn(5, 64)
    assert torch.equal(positional(x), named(x))


def test_my_sequential_matches_nn_sequential():
    layers = [nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)]
    ours, theirs = MySequential(*layers), nn.Sequential(*layers)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(ours._modules) == ["0", "1", "2"]
    x = torch.randn(4, 6)
    assert torch.equal(ours(x), theirs(x))


def test_residual_mlp_adds_a_skip_around_every_block():
    model = ResidualMLP(features=8, depth=2)
    for block in model.blocks:
        nn.init.zeros_(block.weight)
        nn.init.zeros_(block.bias)
    x = torch.randn(3, 8)
    assert torch.equal(model(x), x)  # zero blocks: only the skip path is left
    assert count_parameters(model) == 2 * (8 * 8 + 8)


def test_multi_head_net_picks_heads_by_name_and_names_the_choices():
    model = MultiHeadNet()
    x = torch.randn(2, 64)
    assert model(x, "digit").shape == (2, 10)
    assert model(x, "parity").shape == (2, 2)
    with pytest.raises(KeyError, match=r"unknown head 'colour'.*\['digit', 'parity'\]"):
        model(x, "colour")


def test_plain_list_layers_are_invisible_to_pytorch():
    model = UnregisteredListMLP(features=4)
    assert count_parameters(model) == 0
    assert model.state_dict() == OrderedDict()
    model = model.to(torch.float64)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("name, key", [
    ("fc1", "fc1"), ("layer1.0.conv1", "layer1_0_conv1"), ("type", "type_"), ("keys", "keys_"),
])
def test_module_key_gives_keys_module_dict_accepts(name, key):
    assert module_key(name) == key
    blocks = nn.ModuleDict()
    blocks[module_key(name)] = nn.Identity()
    assert list(blocks) == [key]


def test_module_key_refuses_an_empty_name():
    with pytest.raises(ValueError, match="cannot be empty"):
        module_key("")


def test_containers_move_their_layers(device):
    """Registered layers follow .to(); this is what the plain list gets wrong."""
    for model in (mlp_sequential(), mlp_named(), ResidualMLP(64), MultiHeadNet()):
        model = model.to(device)
        assert all(p.device.type == device.type for p in model.parameters())
    x = torch.randn(2, 64, device=device)
    assert MultiHeadNet().to(device)(x, "digit").device.type == device.type
    assert ResidualMLP(64).to(device)(x).device.type == device.type
