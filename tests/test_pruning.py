"""tutorials_pkg.grad_fn.pruning: channel groups read from the autograd trace, and cutting them.

The proof of a group is the one ``benchmarks.pruning`` uses: the model with some of the
group's channels pruned gives the output the original gives with those channels zeroed.
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.pruning import check_model, difference, random_drops
from tutorials_pkg.blocks.unet import UNet
from tutorials_pkg.grad_fn import (
    ChannelGroup,
    batchnorm_scale,
    coupled_channel_groups,
    coupled_channel_groups_where_cat_starts_new,
    cut_conv,
    cut_layer,
    prune_channel_group,
    prune_channel_groups,
    pruning,
    tiny_yolo,
    trace_grad_fn,
    zero_channel_groups,
)
from tutorials_pkg.grad_fn.pruning import OUTPUT

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def snapshot(model: nn.Module) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[name], value) for name, value in before.items())


def groups_of(model: nn.Module, x: torch.Tensor) -> list[ChannelGroup]:
    return coupled_channel_groups(trace_grad_fn(model.eval(), x))


def group_of(groups: list[ChannelGroup], layer: str) -> ChannelGroup:
    return next(g for g in groups if layer in g.layers)


def assert_prunes_to_the_zeroed_model(model: nn.Module, group: ChannelGroup, drop, x) -> None:
    assert difference(model.eval(), [(group, drop)], x) < 1e-8


class Cat(nn.Module):
    """c(cat(a(x), b(x))), with a BatchNorm after the concatenation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.bn, self.c = nn.BatchNorm2d(10), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


def test_a_concatenation_places_each_input_at_its_offset():
    model, x = Cat(), torch.randn(1, 3, 8, 8)
    groups = groups_of(model, x)
    a, b = group_of(groups, "a"), group_of(groups, "b")
    assert (a.layers, a.consumers, a.channels) == (["a", "bn"], ["c"], 4)
    assert (b.layers, b.consumers, b.channels) == (["b", "bn"], ["c"], 6)
    assert b.indices[("c", "in")] == (10, [[4], [5], [6], [7], [8], [9]])  # offset 4
    assert b.indices[("bn", "out")] == (10, [[4], [5], [6], [7], [8], [9]])
    for group in (a, b):
        assert_prunes_to_the_zeroed_model(model, group, [1, 2], x)
    prune_channel_group(model, b, [0, 5])
    assert model.c.weight.shape == (2, 8, 1, 1) and model.bn.num_features == 8


def test_the_old_rule_misses_the_readers_of_a_concatenation():
    model, x = Cat(), torch.randn(1, 3, 8, 8)
    old = coupled_channel_groups_where_cat_starts_new(trace_grad_fn(model, x))
    assert [(g.layers, g.consumers) for g in old] == [(["a"], []), (["b"], []), (["bn"], ["c"]),
                                                      (["c"], [])]
    prune_channel_group(model, old[0], drop=[0])
    with pytest.raises(RuntimeError, match=r"running_mean should contain 9 elements not 10"):
        model.eval()(x)


def test_a_transposed_convolution_keeps_its_output_channels_in_weight_dim_1():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 2, 1))
    x = torch.randn(1, 3, 8, 8)
    groups = groups_of(model, x)
    assert [(g.layers, g.consumers) for g in groups[:2]] == [(["0", "1"], ["3"]), (["3", "4"], ["6"])]
    for group in groups[:2]:
        assert_prunes_to_the_zeroed_model(model, group, [0, 3], x)
    prune_channel_groups(model, [(groups[0], [1]), (groups[1], [2, 4])])
    assert model[3].weight.shape == (7, 4, 2, 2)  # (in, out, kH, kW)
    assert model(x).shape == (1, 2, 16, 16)


@pytest.mark.parametrize("groups", [2, 4])
def test_a_grouped_convolution_loses_whole_groups(groups):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=groups), nn.BatchNorm2d(8),
                          nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    group = groups_of(model, x)[0]
    assert group.layers == ["0", "1", "3", "4"] and group.consumers == ["5"]
    assert group.channels == groups  # one channel of the group: a block of 8 / groups
    assert group.indices[("0", "out")][1][1] == list(range(8 // groups, 2 * 8 // groups))
    assert_prunes_to_the_zeroed_model(model, group, [1], x)
    prune_channel_group(model, group, [0])
    assert model[3].groups == groups - 1 and model[3].weight.shape == (8 - 8 // groups, 8 // groups, 3, 3)


def test_a_depthwise_convolution_carries_its_inputs_channels():
    model = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 32, 32)
    stem = group_of(groups_of(model, x), "features.0.0")
    assert stem.layers == ["features.0.0", "features.0.1", "features.1.conv.0.0",
                           "features.1.conv.0.1"]
    assert stem.consumers == ["features.1.conv.1"]
    prune_channel_group(model, stem, drop=[5])
    assert model.features[1].conv[0][0].groups == 31


def test_a_linear_layer_after_flatten_reads_each_channel_at_every_position():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5),
                          nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(2, 3, 4, 4)
    conv = group_of(groups_of(model, x), "0")
    assert conv.indices[("3", "in")] == (16, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                              [12, 13, 14, 15]])
    assert_prunes_to_the_zeroed_model(model, conv, [2], x)
    hidden = group_of(groups_of(model, x), "3")
    prune_channel_groups(model, [(conv, [2]), (hidden, [0, 1])])
    assert model[3].weight.shape == (3, 12) and model[5].in_features == 3


def test_a_layer_called_twice_reads_and_writes_the_same_channels():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.shared(torch.relu(self.shared(self.stem(x))))

    model, x = Twice(), torch.randn(1, 3, 4, 4)
    (group,) = groups_of(model, x)  # shared's input is both stem's output and its own
    assert (group.layers, group.consumers, group.refused) == (["stem", "shared"], ["shared"], OUTPUT)


def test_groupnorm_loses_whole_groups_and_prelu_its_slopes():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.PReLU(8), nn.Conv2d(8, 3, 1))
    x = torch.randn(1, 3, 5, 5)
    group = groups_of(model, x)[0]
    assert group.layers == ["0", "1", "2"] and group.channels == 4
    assert_prunes_to_the_zeroed_model(model, group, [1, 3], x)
    prune_channel_group(model, group, [1, 3])
    assert (model[1].num_groups, model[1].num_channels, model[2].weight.shape) == (2, 4, (4,))


class LayerScale(nn.Module):
    """A parameter used on the channels, as ConvNeXt's layer scale."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
        self.scale = nn.Parameter(torch.rand(6, 1, 1))

    def forward(self, x):
        return self.out(self.conv(x) * self.scale)


def test_a_parameter_used_on_the_channels_is_cut_with_them():
    model, x = LayerScale(), torch.randn(1, 3, 4, 4)
    group = groups_of(model, x)[0]
    assert sorted(group.layers) == ["conv", "scale"] and group.indices[("scale", "param0")][0] == 6
    assert_prunes_to_the_zeroed_model(model, group, [0, 4], x)
    prune_channel_group(model, group, [0, 4])
    assert model.scale.shape == (4, 1, 1)


def test_chunk_pieces_lose_the_same_channels():
    model = tiny_yolo().eval()
    group = group_of(groups_of(model, X), "stage1.1.cv1.conv")
    size, where = group.indices[("stage1.1.cv1.conv", "out")]
    assert size == 32 and group.channels == 16 and where[3] == [3, 19]  # one in each half


class Pieces(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1), how

    def forward(self, x):
        y = self.a(x)
        first = y.split([4, 4], 1)[0] if self.how == "split" else y[:, :4]
        return self.b(first)


@pytest.mark.parametrize("how, op", [("split", "SplitWithSizesBackward0"), ("slice", "SliceBackward0")])
def test_channels_cut_at_positions_written_in_the_code_are_refused(how, op):
    group = groups_of(Pieces(how), torch.randn(1, 3, 4, 4))[0]
    assert group.layers == ["a"] and op in group.refused


def test_attention_and_layernorm_over_channels_are_refused_with_a_reason():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.norm = nn.Linear(4, 8), nn.LayerNorm(8)
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.hidden, self.out = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            x = self.proj(x)
            x = x + self.attention(x, x, x, need_weights=False)[0]
            return self.out(torch.relu(self.hidden(self.norm(x))))

    groups = groups_of(Block(), torch.randn(2, 5, 4))
    stream, hidden = group_of(groups, "proj"), group_of(groups, "hidden")
    assert stream.refused.startswith("attention") and "in_proj" in stream.refused
    assert hidden.refused is None and hidden.channels == 16
    norm_only = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    group = groups_of(norm_only, torch.randn(2, 4))[0]
    assert group.refused.startswith("LayerNorm 1 normalizes over these channels")


def test_a_refused_group_is_named_and_nothing_changes():
    model = torchvision.models.resnet18()
    groups = groups_of(model, X)
    fc = group_of(groups, "fc")
    assert fc.refused == OUTPUT and fc.channels == 1000
    before = snapshot(model)
    stream = group_of(groups, "layer1.0.conv2")
    with pytest.raises(ValueError, match=r"cannot prune the group of 'fc' \(1000 channels\): "
                                         r"its channels are the model's output; nothing was changed"):
        prune_channel_groups(model, [(stream, [0]), (fc, [0])])
    assert_unchanged(model, before)


def test_a_group_from_an_older_trace_is_refused_before_anything_changes():
    model = tiny_yolo()
    groups = groups_of(model, X)
    prune_channel_group(model, groups[0], [0])
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'stage1.0.conv' has 15 channels where the trace saw "
                                         "16: trace the model again"):
        prune_channel_groups(model, [(groups[1], [0]), (groups[0], [1])])
    assert_unchanged(model, before)


@pytest.mark.parametrize("drop", [[], [16], [-1], list(range(16))])
def test_drop_names_some_but_not_all_channels(drop):
    model = tiny_yolo()
    group = groups_of(model, X)[0]
    with pytest.raises(ValueError, match=r"drop must name some but not all of the 16 channels"):
        prune_channel_group(model, group, drop)


def test_a_group_made_by_hand_is_cut_as_written():
    resnet = torchvision.models.resnet18().eval()
    alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
    prune_channel_group(resnet, alone, drop=[0])
    with pytest.raises(RuntimeError, match="must match the size"):
        resnet(X)
    with pytest.raises(ValueError, match=r"group \['0'\] has no conv, linear or BatchNorm"):
        prune_channel_group(nn.Sequential(nn.ReLU()), ChannelGroup(["0"], []), [0])


def test_batchnorm_scale_sums_gamma_over_the_groups_batchnorms():
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for norm in (model.bn1, model.layer1[0].bn2, model.layer1[1].bn2):
            norm.weight.copy_(-torch.arange(64.0))
    stream = group_of(groups_of(model, X), "layer1.0.conv2")
    assert torch.equal(batchnorm_scale(model, stream), 3 * torch.arange(64.0))


def test_zeroing_a_group_silences_it_everywhere():
    model = tiny_yolo().eval()
    group = group_of(groups_of(model, X), "stage3.2.cv1.conv")
    zero_channel_groups(model, [(group, [0, 7])])
    seen = {}
    model.stage3[2].cv1.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    model(X)
    assert not seen["out"][:, [0, 7]].any() and seen["out"][:, 1].any()


# --- every group of the networks people prune -------------------------------------------

def googlenet():
    return torchvision.models.googlenet(aux_logits=False, init_weights=False)  # aux heads off


NETWORKS = {
    "UNet": UNet, "UNet-bilinear": lambda: UNet(bilinear=True), "tiny_yolo": tiny_yolo,
    "resnet18": torchvision.models.resnet18, "mobilenet_v2": torchvision.models.mobilenet_v2,
    "densenet121": torchvision.models.densenet121, "googlenet": googlenet,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "regnet_y_400mf": torchvision.models.regnet_y_400mf,
}


@pytest.mark.parametrize("name", NETWORKS)
def test_every_group_prunes_to_the_zeroed_network(name):
    torch.manual_seed(0)
    result = check_model(NETWORKS[name](), X)
    assert result["wrong"] == []
    assert {g.refused for g in result["refused"]} == {OUTPUT}  # only the outputs (classes, boxes)
    assert len(result["correct"]) + len(result["refused"]) == len(result["groups"]) > 10


def test_each_group_of_the_yolo_network_alone():
    model = tiny_yolo().eval()
    groups = [g for g in groups_of(model, X) if not g.refused]
    for group, drop in random_drops(groups, seed=1):
        assert difference(model, [(group, drop)], X) < 1e-8, group.layers


def test_pruning_keeps_the_requires_grad_flags_and_the_device(device):
    model = tiny_yolo().to(device)
    model.stem.requires_grad_(False)
    x = X.to(device)
    groups = groups_of(model, x)
    prune_channel_groups(model, [(g, [0]) for g in groups if not g.refused])
    assert not model.stem.conv.weight.requires_grad and model.stage1[0].conv.weight.requires_grad
    assert all(p.device.type == device.type for p in model.parameters())
    assert model(x)[0].shape == (1, 84, 8, 8)


def test_the_pruned_copy_is_independent_of_the_original():
    model = tiny_yolo()
    groups = groups_of(model, X)
    pruned = copy.deepcopy(model)
    prune_channel_group(pruned, groups[0], [0])
    assert model.stem.conv.out_channels == 16 and pruned.stem.conv.out_channels == 15


class EveryOperation(nn.Module):
    """One path of channels through each kind of operation the walk replays or refuses."""

    def __init__(self):
        super().__init__()
        names = ("shuffled", "moved", "padded", "softmax", "cumsum", "mean", "indexed", "regrouped")
        self.convs = nn.ModuleDict({name: nn.Conv2d(3, 8, 1) for name in names})
        self.out = nn.Conv2d(8 * 2 + 8 + 10 + 8 + 8 + 2 + 8 + 1, 2, 1)

    def forward(self, x):
        c = {name: conv(x) for name, conv in self.convs.items()}
        n, _, h, w = x.shape
        k = c["shuffled"].shape[1]  # sizes from the tensor, as the pruned model needs
        shuffled = c["shuffled"].view(n, 2, k // 2, h, w).transpose(1, 2).reshape(n, k, h, w)
        first, second = shuffled.chunk(2, 1)  # a channel shuffle, then halves: as ShuffleNet
        moved = F.pad(c["moved"].roll(1, 2), (1, 1, 1, 1))[..., 1:-1, 1:-1]
        moved = torch.stack([moved, 2 * moved]).unbind(0)[1]
        moved = F.interpolate(F.avg_pool2d(moved, 2), scale_factor=2.0)
        return self.out(torch.cat([
            torch.cat([first + second, first], 1), moved,
            F.pad(c["padded"], (0, 0, 0, 0, 1, 1)),  # two constant channels
            torch.softmax(c["softmax"], 1), torch.cumsum(c["cumsum"], 1),
            c["mean"].mean(1, keepdim=True).expand(n, 2, h, w),
            c["indexed"][:, [1, 0, 2, 3, 4, 5, 6, 7]],
            c["regrouped"].reshape(n, 16, 4, w).reshape(n, 8, h, w),
            torch.zeros(n, 1, h, w),  # a constant: needs no grad
        ], 1))


@pytest.mark.parametrize("path, refused", [
    ("shuffled", None), ("moved", None), ("padded", "ConstantPadNdBackward0 pads these channels"),
    ("softmax", "SoftmaxBackward0 mixes these channels"),
    ("cumsum", "CumsumBackward0 after 'convs.cumsum' mixes these channels (no pruning rule"),
    ("mean", "MeanBackward1 mixes these channels"),
    ("indexed", "IndexBackward0 picks these channels by fixed indices"),
    ("regrouped", "ViewBackward0 regroups these channels"),
])
def test_each_operation_moves_joins_or_refuses_the_channels(path, refused):
    model, x = EveryOperation().eval(), torch.randn(1, 3, 8, 8)
    group = group_of(groups_of(model, x), f"convs.{path}")
    assert group.refused == refused or group.refused.startswith(refused)
    if refused is None:
        assert_prunes_to_the_zeroed_model(model, group, [0], x)
    if path == "shuffled":  # every group of the shuffle loses the same channels
        assert group.channels == 2 and group.indices[("convs.shuffled", "out")][1] == [
            [0, 2, 4, 6], [1, 3, 5, 7]]


def test_a_grouped_transposed_convolution_and_a_batchnorm_without_scales():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8, affine=False),
                          nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6),
                          nn.Conv2d(6, 2, 1))
    x = torch.randn(1, 3, 4, 4)
    model.eval()(x)
    group = groups_of(model, x)[0]
    assert group.layers == ["0", "1", "2", "3"] and group.channels == 2
    assert_prunes_to_the_zeroed_model(model, group, [1], x)
    prune_channel_group(model, group, [0])
    assert model[2].weight.shape == (4, 3, 2, 2) and model[2].groups == 1


def test_a_parameter_too_large_to_follow_is_refused(monkeypatch):
    monkeypatch.setattr(pruning, "PARAMETER_LIMIT", 4)
    group = groups_of(LayerScale(), torch.randn(1, 3, 4, 4))[0]
    assert group.refused.startswith("parameter scale (6 elements) is used outside a traced layer")


def test_cutting_a_layer_checks_what_it_is_given():
    grouped = nn.Conv2d(8, 8, 3, groups=2)
    with pytest.raises(ValueError, match=r"2 groups of 4 channels can be cut only whole"):
        cut_conv(grouped, torch.tensor([0, 1, 2]), None)
    with pytest.raises(ValueError, match=r"must lose the same groups of its input and output"):
        cut_conv(grouped, torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]))
    with pytest.raises(TypeError, match="cannot prune the channels of ReLU"):
        cut_layer(nn.ReLU(), torch.tensor([0]), None)
    model = tiny_yolo()
    group = groups_of(model, X)[0]
    other = dataclasses.replace(group, indices={key: (size + 1, where)
                                                for key, (size, where) in group.indices.items()})
    with pytest.raises(ValueError, match=r"'stem.conv' has 17 channels in one group and 16 in "
                                         "another: prune groups of one trace together"):
        prune_channel_groups(model, [(group, [0]), (other, [1])])


def test_the_yolo_network_has_two_scales_and_no_trained_weights():
    model = tiny_yolo(num_classes=3).eval()
    assert [tuple(out.shape) for out in model(X)] == [(1, 7, 8, 8), (1, 7, 4, 4)]  # strides 8, 16
    with pytest.raises(ValueError, match="tiny_yolo has no trained weights; weights must be None"):
        tiny_yolo(weights="COCO")
