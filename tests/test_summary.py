"""tutorials_pkg.summary."""

import re

import pytest
import torch
import torchinfo
import torchsummary
import torchvision
from torch import nn

from handbook_tools import assert_state_unchanged, model_state, no_hooks_left
from tutorials_pkg.definition import count_parameters
from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.summary import summary


class KeptTwice(nn.Module):
    """A child kept as ``self.base_model`` and inside a ModuleList: torchsummary's bug."""

    def __init__(self):
        super().__init__()
        self.base_model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.ModuleList([self.base_model])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.base_model(x).mean((2, 3)))


class TiedWithScale(nn.Module):
    """Decoder weight tied to the embedding, plus a parameter on the model itself."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.decode = nn.Linear(4, 10)
        self.decode.weight = self.embed.weight
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, tokens):
        return self.decode(self.embed(tokens) * self.scale)


class CallsTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)

    def forward(self, x):
        return self.block(torch.relu(self.block(x)))


def torchsummary_total(model, input_size, capsys) -> int:
    torchsummary.summary(model, input_size, device="cpu")
    printed = capsys.readouterr().out
    return int(re.search(r"Total params: ([\d,]+)", printed).group(1).replace(",", "")), printed


def test_torchsummary_counts_a_module_kept_twice_twice(capsys):
    model = KeptTwice()
    total, printed = torchsummary_total(model, (3, 16, 16), capsys)
    base = count_parameters(model.base_model)
    assert total == count_parameters(model) + base  # the base model counted once per parent
    assert printed.count("Conv2d-") == 2


def test_our_summary_lists_each_module_once_and_counts_each_parameter_once():
    model = KeptTwice()
    result = summary(model, input_size=(1, 3, 16, 16))
    assert result.total_params == count_parameters(model) == 330
    assert len(result.rows) == len(list(model.modules()))  # modules() dedupes by identity
    conv_rows = [row for row in result.rows if row.type == "Conv2d"]
    assert len(conv_rows) == 1 and conv_rows[0].name == "base_model.0"
    assert conv_rows[0].aliases == ["stages.0.0"]
    assert str(result).count("(Conv2d)") == 1


def unet():
    from tutorials_pkg.blocks.unet import UNet

    return UNet(n_channels=3, n_classes=2)


def mobilenet_v1():
    from tutorials_pkg.blocks.mobilenet import MobileNetV1

    return MobileNetV1(num_classes=1000)


@pytest.mark.parametrize("make", [torchvision.models.resnet18, torchvision.models.mobilenet_v2,
                                  tiny_resnet, unet, mobilenet_v1])
def test_summary_agrees_with_torchinfo_and_with_the_parameters(make):
    model = make()
    for param in list(model.parameters())[:6]:  # some frozen, so trainable != total
        param.requires_grad_(False)
    ours = summary(model, input_size=(1, 3, 32, 32))
    theirs = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0)
    assert ours.total_params == theirs.total_params == count_parameters(model)
    assert ours.trainable_params == theirs.trainable_params
    assert ours.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ours.trainable_params < ours.total_params


def test_resnet18_parameter_count_is_torchvisions():
    # 11,689,512: the figure torchvision's model docs give for resnet18
    assert summary(torchvision.models.resnet18(), input_size=(1, 3, 32, 32)).total_params == 11_689_512


def test_tied_weights_and_parameters_of_the_model_itself_count_once(capsys):
    model = TiedWithScale()
    tokens = torch.tensor([[1, 2, 3]])
    result = summary(model, input_data=tokens)
    assert result.total_params == count_parameters(model) == 10 * 4 + 10 + 4
    root = result.rows[0]
    assert root.name == "" and root.params == 4  # the scale, which no submodule owns
    decode = next(row for row in result.rows if row.name == "decode")
    assert decode.params == 10 and decode.shared_params == ["weight = embed.weight"]
    assert "weight = embed.weight (shared)" in str(result)


def test_reused_modules_are_marked_and_unused_ones_said():
    result = summary(CallsTwice(), input_size=(2, 6))
    rows = {row.name: row for row in result.rows}
    assert rows["block"].calls == 2 and rows["block"].reused
    assert rows["unused"].calls == 0 and not rows["unused"].reused
    assert rows[""].calls == 1 and not rows[""].reused
    table = str(result)
    assert "called 2x" in table and "not called" in table
    assert result.total_params == count_parameters(CallsTwice())


def test_rows_record_shapes_of_the_first_call():
    result = summary(tiny_resnet(), input_size=(2, 3, 16, 16))
    rows = {row.name: row for row in result.rows}
    assert rows[""].input_shape == [2, 3, 16, 16] and rows[""].output_shape == [2, 10]
    assert rows["4.conv1"].input_shape == [2, 8, 16, 16]
    assert rows["4.conv1"].output_shape == [2, 16, 8, 8]
    assert rows["6"].output_shape == [2, 16]


def test_memory_estimate_counts_input_leaf_outputs_and_parameters():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5), nn.BatchNorm1d(5))
    result = summary(model, input_size=(3, 10))
    assert result.input_bytes == 3 * 10 * 4
    assert result.output_bytes == 4 * (3 * 20 + 3 * 20 + 3 * 5 + 3 * 5)  # leaf modules only
    assert result.param_bytes == 4 * count_parameters(model)
    assert result.buffer_bytes == 4 * 5 + 4 * 5 + 8  # running mean, var, int64 counter
    assert result.total_bytes == (result.input_bytes + result.output_bytes
                                  + result.param_bytes + result.buffer_bytes)
    assert "Estimated total size" in str(result) and repr(result) == str(result)


def test_summary_leaves_modes_and_batchnorm_statistics_alone(device):
    model = torchvision.models.resnet18().to(device)
    model.layer2.eval()  # a part frozen in eval mode must stay in eval mode
    before = model_state(model)
    summary(model, input_size=(2, 3, 32, 32))
    assert_state_unchanged(model, before)
    assert model.training and not model.layer2.training
    assert no_hooks_left(model)


def test_torchsummary_changes_batchnorm_statistics(capsys):
    """The pitfall our summary avoids: a forward pass in training mode."""
    model = KeptTwice()
    mean = model.base_model[1].running_mean.clone()
    torchsummary_total(model, (3, 16, 16), capsys)
    assert not torch.equal(model.base_model[1].running_mean, mean)
    assert model.base_model[1].num_batches_tracked.item() == 1


def test_summary_runs_on_the_models_device_and_dtype(device):
    model = tiny_resnet().to(device, torch.float64)
    result = summary(model, input_size=(1, 3, 16, 16))
    assert result.input_bytes == 3 * 16 * 16 * 8
    data = torch.randn(1, 3, 16, 16, device=device, dtype=torch.float64)
    assert summary(model, input_data=data).total_params == count_parameters(model)


def test_several_inputs_by_shape_and_by_data():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    by_shape = summary(Pair(), input_size=[(2, 3), (2, 5)])
    assert by_shape.input_shape == [[2, 3], [2, 5]]
    assert by_shape.rows[0].input_shape == [[2, 3], [2, 5]]
    by_data = summary(Pair(), input_data=(torch.randn(2, 3), torch.randn(2, 5)))
    assert by_data.total_params == by_shape.total_params == 2 * (3 * 4 + 4) + 4 * 2


@pytest.mark.parametrize("kwargs", [{}, {"input_size": (1, 3), "input_data": torch.randn(1, 3)}])
def test_exactly_one_kind_of_input(kwargs):
    with pytest.raises(ValueError, match="exactly one of input_size .* or input_data"):
        summary(nn.Linear(3, 2), **kwargs)


@pytest.mark.parametrize("size", [(1, 0, 3), (1, -3), "1, 3", 3, [], [(1, 3), "x"]])
def test_bad_input_size_is_named(size):
    with pytest.raises(ValueError, match="input_size must be a shape"):
        summary(nn.Linear(3, 2), input_size=size)


@pytest.mark.parametrize("data", [[1.0, 2.0], (), "abc"])
def test_bad_input_data_is_named(data):
    with pytest.raises(TypeError, match="input_data must be a tensor"):
        summary(nn.Linear(3, 2), input_data=data)


def test_too_small_an_input_names_the_shape_and_the_layer_and_removes_hooks():
    model = torchvision.models.squeezenet1_1()
    before = model_state(model)
    with pytest.raises(ValueError, match=r"failed in 'features\.\d+' \(MaxPool2d\) on input of "
                                         r"shape \[1, 3, 16, 16\].*too small"):
        summary(model, input_size=(1, 3, 16, 16))
    assert no_hooks_left(model)
    assert_state_unchanged(model, before)
    assert summary(model, input_size=(1, 3, 64, 64)).total_params == count_parameters(model)


def test_an_error_in_the_models_own_forward_is_reported_too():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).view(3, 5)

    model = Broken()
    with pytest.raises(ValueError, match=r"the model failed on input of shape \[2, 4\]"):
        summary(model, input_size=(2, 4))
    assert no_hooks_left(model)


