import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from tutorials_pkg.definition import (
    LayerListWithoutSuperInit,
    MLPWithExtraInput,
    MLPWithoutSuperInit,
    MultiHeadNet,
    MySequential,
    ResidualMLP,
    Standardize,
    UnregisteredDictMultiHeadNet,
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


def test_my_sequential_takes_an_ordered_dict_as_nn_sequential_does():
    layers = OrderedDict([("fc1", nn.Linear(6, 5)), ("act", nn.Tanh()), ("fc2", nn.Linear(5, 3))])
    ours, theirs = MySequential(layers), nn.Sequential(layers)
    assert list(ours._modules) == list(theirs._modules) == ["fc1", "act", "fc2"]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(4, 6)
    assert torch.equal(ours(x), theirs(x))
    assert type(ours._modules) is dict and type(theirs._modules) is dict  # not an OrderedDict
    # a single layer is a chain of one, as in nn.Sequential
    assert list(MySequential(nn.Linear(6, 5))._modules) == ["0"]


def test_the_source_misspelling_of_ordered_dict_fails_for_any_single_argument():
    """``isinstance(args[0], OrderDict)``: reached only when there is exactly one argument."""
    namespace = {"nn": nn}
    exec("""
class MySequentialAsPrinted(nn.Module):
    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)
""", namespace)
    printed = namespace["MySequentialAsPrinted"]
    assert len(printed(nn.Linear(2, 2), nn.ReLU())._modules) == 2
    for single in (OrderedDict([("fc", nn.Linear(2, 2))]), nn.Linear(2, 2)):
        with pytest.raises(NameError, match="'OrderDict' is not defined"):
            printed(single)


def test_grad_fn_names_carry_a_number_now():
    out = MultiHeadNet()(torch.randn(2, 64), head="digit")
    assert type(out.grad_fn).__name__ == "AddmmBackward0"
    assert "grad_fn=<AddmmBackward0>" in repr(out)


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
    with pytest.raises(RuntimeError, match="must have the same dtype, but got Double and Float"):
        model(torch.randn(2, 4, dtype=torch.float64))


def test_plain_dict_heads_are_invisible_to_pytorch():
    model = UnregisteredDictMultiHeadNet()
    assert list(model.state_dict()) == ["body.0.weight", "body.0.bias"]  # no head saved
    assert count_parameters(model) == count_parameters(model.body) == 64 * 32 + 32
    assert count_parameters(MultiHeadNet()) == count_parameters(model) + 32 * 10 + 10 + 32 * 2 + 2
    model = model.to(torch.float64)
    with pytest.raises(RuntimeError, match="must have the same dtype, but got Double and Float"):
        model(torch.randn(2, 64, dtype=torch.float64), "digit")


def test_forgetting_super_init_fails_when_the_first_layer_is_assigned():
    with pytest.raises(AttributeError, match=r"cannot assign module before Module.__init__\(\) call"):
        MLPWithoutSuperInit()


def test_a_module_list_subclass_that_forgets_super_init_fails_the_same_way():
    with pytest.raises(AttributeError, match=r"cannot assign module before Module.__init__\(\) call"):
        LayerListWithoutSuperInit([nn.Linear(2, 2)])


def test_sequential_passes_one_input_and_our_forward_takes_two():
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3 were given"):
        mlp_sequential()(torch.randn(2, 64), torch.randn(2, 1))
    model = MLPWithExtraInput(extra_features=1)
    x, extra = torch.randn(2, 64), torch.randn(2, 1)
    out = model(x, extra)
    assert out.shape == (2, 10)
    with torch.no_grad():
        model.head.weight[:, -1] += 1.0  # the extra input's weight: the output moves by extra
    assert torch.allclose(model(x, extra) - out, extra.expand(2, 10), atol=1e-6)


def test_module_list_grows_with_append_extend_and_insert():
    blocks = nn.ModuleList([nn.Linear(4, 4)])
    blocks.append(nn.Linear(4, 4))
    blocks.extend([nn.Linear(4, 2)])
    blocks.insert(1, nn.ReLU())
    assert [type(b).__name__ for b in blocks] == ["Linear", "ReLU", "Linear", "Linear"]
    assert list(blocks._modules) == ["0", "1", "2", "3"]
    assert list(nn.Sequential(*blocks).state_dict())[-1] == "3.bias"  # registered, renumbered


def test_module_dict_items_are_attributes_too():
    model = MultiHeadNet()
    assert model.heads.digit is model.heads["digit"]


def test_buffers_are_saved_and_moved_but_not_trained():
    model = Standardize(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    assert list(model.parameters()) == []
    assert list(model.state_dict()) == ["mean", "std"]
    assert torch.equal(model(torch.tensor([[3.0, 6.0]])), torch.tensor([[1.0, 1.0]]))
    model = model.to(torch.float64)
    assert model.mean.dtype == model.std.dtype == torch.float64
    hidden = nn.Module()
    hidden.register_buffer("table", torch.arange(3.0), persistent=False)
    assert list(hidden.state_dict()) == [] and [n for n, _ in hidden.named_buffers()] == ["table"]


@pytest.mark.parametrize("name, key", [
    ("fc1", "fc1"), ("layer1.0.conv1", "layer1/0/conv1"), ("type", "type/"), ("keys", "keys/"),
    ("training", "training/"), ("layer1_0_conv1", "layer1_0_conv1"),
])
def test_module_key_gives_keys_module_dict_accepts(name, key):
    assert module_key(name) == key
    blocks = nn.ModuleDict()
    blocks[module_key(name)] = nn.Identity()
    assert list(blocks) == [key]


def test_module_key_gives_distinct_names_distinct_keys():
    names = ["layer1.0", "layer1_0", "layer1/0", "layer1%2F0", "layer1%0", "type", "type/",
             "training", "_modules", "%", "%25", "a.b/c", "a/b.c", "forward", "__init__"]
    keys = [module_key(name) for name in names]
    assert len(set(keys)) == len(names), dict(zip(names, keys))
    blocks = nn.ModuleDict({key: nn.Identity() for key in keys})  # every one accepted
    assert list(blocks) == keys


@pytest.mark.parametrize("name", ["", "fc1.", ".fc1", "layer1..conv1"])
def test_module_key_refuses_what_is_not_a_layer_name(name):
    with pytest.raises(ValueError, match=rf"{re.escape(repr(name))} is not a layer name"):
        module_key(name)


def test_containers_move_their_layers(device):
    """Registered layers follow .to(); this is what the plain list gets wrong."""
    for model in (mlp_sequential(), mlp_named(), ResidualMLP(64), MultiHeadNet()):
        model = model.to(device)
        assert all(p.device.type == device.type for p in model.parameters())
    x = torch.randn(2, 64, device=device)
    assert MultiHeadNet().to(device)(x, "digit").device.type == device.type
    assert ResidualMLP(64).to(device)(x).device.type == device.type
