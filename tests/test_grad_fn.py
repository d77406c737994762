"""tutorials_pkg.grad_fn."""

import pytest
import torch
import torchvision
from torch import nn

from handbook_tools import (
    assert_state_unchanged,
    list_of_images_detector,
    model_state,
    no_hooks_left,
)
from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.grad_fn import (
    GRAD_FN_TYPES,
    ChannelGroup,
    MermaidDiagram,
    SavedTensors,
    coupled_channel_groups,
    grad_fn_modules,
    grad_fn_modules_keeping_only_the_last_hook,
    grad_fn_modules_without_checks,
    module_graph,
    prune_channel_group,
    trace_grad_fn,
)
from tutorials_pkg.grad_fn.pruning import INPUT, OUTPUT
from tutorials_pkg.summary import summary


def test_grad_fn_modules_maps_each_layer_output_node_to_its_layer(device):
    model = tiny_resnet().to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    nodes = grad_fn_modules(model, x)
    layers = [m for m in model.modules() if isinstance(m, GRAD_FN_TYPES)]
    assert None not in nodes
    assert sorted(map(id, nodes.values())) == sorted(map(id, layers))  # each layer called once
    for node, module in nodes.items():
        expected = {nn.Conv2d: "ConvolutionBackward0", nn.BatchNorm2d: "NativeBatchNormBackward0",
                    nn.Linear: "AddmmBackward0"}[type(module)]
        if device.type == "cpu":  # CUDA runs BatchNorm through cuDNN, a node of another name
            assert node.name() == expected


def test_the_nodes_are_the_ones_autograd_records():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2))
    nodes = grad_fn_modules(model, torch.randn(1, 3, 8, 8))
    by_module = {id(m): node for node, m in nodes.items()}
    # walk next_functions from the PReLU's node: the BatchNorm's node, then the conv's
    bn_node = by_module[id(model[1])]
    prelu_inputs = [parent for parent, _ in by_module[id(model[2])].next_functions if parent]
    assert bn_node in prelu_inputs
    assert by_module[id(model[0])] in [parent for parent, _ in bn_node.next_functions if parent]


def test_frozen_parameters_are_traced_and_their_flags_restored():
    model = tiny_resnet()
    for param in model.parameters():
        param.requires_grad_(False)
    model[7].bias.requires_grad_(True)  # a mix
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(1, 3, 16, 16)
    naive = grad_fn_modules_without_checks(model, x)
    assert None in naive and len(naive) == 2  # the pitfall: 12 frozen layers under one None key
    nodes = grad_fn_modules(model, x)
    assert None not in nodes and len(nodes) == 13
    assert [p.requires_grad for p in model.parameters()] == flags


def test_flags_modes_and_hooks_are_restored_when_forward_fails():
    model = tiny_resnet()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"expected input\[1, 5, 16, 16\] to have 3 channels"):
        grad_fn_modules(model, torch.randn(1, 5, 16, 16))  # 5 channels: the first conv fails
    assert [p.requires_grad for p in model.parameters()] == flags
    assert_state_unchanged(model, before)
    assert no_hooks_left(model)


def test_tracing_leaves_modes_and_batchnorm_statistics_alone(device):
    model = torchvision.models.resnet18().to(device)
    before = model_state(model)
    grad_fn_modules(model, torch.randn(2, 3, 32, 32, device=device))
    assert_state_unchanged(model, before)


def test_under_no_grad_the_naive_mapping_has_one_none_key_and_ours_refuses():
    model, x = tiny_resnet(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        naive = grad_fn_modules_without_checks(model, x)
        with pytest.raises(RuntimeError, match=r"gradients are off.*torch\.enable_grad\(\)"):
            grad_fn_modules(model, x)
    assert list(naive) == [None] and naive[None] is model[7]  # 13 layers merged into one entry
    with torch.no_grad(), torch.enable_grad():
        assert None not in grad_fn_modules(model, x)


def test_under_inference_mode_it_refuses_even_inside_enable_grad():
    model, x = tiny_resnet(), torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"inference_mode\(\) is on"):
            grad_fn_modules(model, x)
        with torch.enable_grad(), pytest.raises(RuntimeError, match="inference_mode"):
            grad_fn_modules(model, x)
        made_inside = torch.randn(1, 3, 16, 16)
    assert None not in grad_fn_modules(model, made_inside)  # an inference tensor as input is fine


def test_identity_shares_its_inputs_grad_fn():
    conv = nn.Conv2d(3, 4, 3)
    y = conv(torch.randn(1, 3, 8, 8))
    assert nn.Identity()(y).grad_fn is y.grad_fn


def test_an_identity_in_types_collides_and_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    naive = grad_fn_modules_without_checks(model, x, types=(nn.Conv2d, nn.Identity))
    assert list(naive.values()) == [model[1]]  # the conv was overwritten, silently
    with pytest.raises(ValueError, match=r"Identity\(\) returned the grad_fn of Conv2d\(3, 4, .*"
                                         r"its input's: leave Identity out of types"):
        grad_fn_modules(model, x, types=(nn.Conv2d, nn.Identity))
    assert list(grad_fn_modules(model, x).values()) == [model[0]]


def test_an_output_without_grad_fn_is_left_out():
    class Argmax(nn.Module):
        def forward(self, x):
            return x.argmax(1)

    model = nn.Sequential(nn.Linear(3, 4), Argmax())
    nodes = grad_fn_modules(model, torch.randn(2, 3), types=(nn.Linear, Argmax))
    assert list(nodes.values()) == [model[0]]


def test_module_graph_of_the_tiny_resnet_has_its_two_residual_adds():
    graph = module_graph(trace_grad_fn(tiny_resnet(), torch.randn(1, 3, 16, 16)))
    edges = set(graph.edges)
    # by hand, from the architecture: stem -> block 3 (identity skip) -> block 4 (conv skip)
    assert {("input", "0"), ("0", "1"), ("1", "3.conv1"), ("3.conv2", "3.bn2")} <= edges
    assert {("3.bn2", "+1"), ("1", "+1")} <= edges  # identity shortcut: the stem's output
    assert {("+1", "4.conv1"), ("+1", "4.downsample.0"), ("4.downsample.1", "+2"),
            ("4.bn2", "+2"), ("+2", "7"), ("7", "output")} <= edges
    assert graph.nodes["+1"] == graph.nodes["+2"] == "+"
    assert len([n for n, label in graph.nodes.items() if label == "+"]) == 2
    assert not any("ReLU" in label for label in graph.nodes.values())


def test_mermaid_diagram_is_a_mime_bundle():
    graph = module_graph(trace_grad_fn(tiny_resnet(), torch.randn(1, 3, 16, 16)))
    diagram = graph.mermaid()
    assert isinstance(diagram, MermaidDiagram)
    bundle = diagram._repr_mimebundle_()
    assert set(bundle) == {"text/vnd.mermaid", "text/plain"}
    source = bundle["text/vnd.mermaid"]
    assert source.startswith("flowchart TD\n") and repr(diagram) == source
    assert source.count("-->") == len(graph.edges)
    assert '(("+"))' in source and '["3.conv1: Conv2d"]' in source and '(["input"])' in source


def test_coupled_groups_of_resnet18_layer1_are_its_residual_stream():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    groups = coupled_channel_groups(trace_grad_fn(model, x))
    layer1 = next(g for g in groups if "layer1.0.conv2" in g.layers)
    # by hand: the stem and both blocks' second conv write into the same 64 channels
    assert layer1.layers == ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2",
                             "layer1.1.conv2", "layer1.1.bn2"]
    assert layer1.consumers == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1",
                                "layer2.0.downsample.0"]
    inner = next(g for g in groups if "layer1.0.conv1" in g.layers)
    assert (inner.layers, inner.consumers) == (["layer1.0.conv1", "layer1.0.bn1"], ["layer1.0.conv2"])
    assert len(groups) == 1 + 4 * 3  # the fc, and per stage: a stream and two inner groups
    assert [g.refused for g in groups].count(OUTPUT) == 1 and groups[-1].layers == ["fc"]
    # every conv and BatchNorm lands in exactly one group
    members = [name for g in groups for name in g.layers]
    expected = [n for n, m in model.named_modules() if isinstance(m, GRAD_FN_TYPES)]
    assert sorted(members) == sorted(expected)


def silence_channel(model: nn.Module, group: ChannelGroup, channel: int) -> None:
    """Zero ``channel`` at every BatchNorm of the group, so that channel carries only zeros."""
    for name in group.layers:
        module = model.get_submodule(name)
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight[channel] = 0
                module.bias[channel] = 0


@pytest.mark.parametrize("index", range(4))
def test_pruning_a_silent_channel_of_a_group_changes_nothing(index):
    """If the group is right, a channel that is zero in all its layers can go without a trace."""
    x = torch.randn(2, 3, 16, 16)
    model = tiny_resnet().eval()
    groups = coupled_channel_groups(trace_grad_fn(model, x))
    assert len(groups) == 5 and groups[4].layers == ["7"] and groups[4].refused == OUTPUT
    silence_channel(model, groups[index], channel=2)
    expected = model(x)
    prune_channel_group(model, groups[index], drop=[2])
    assert torch.allclose(model(x), expected, atol=1e-5)
    # had the group missed one of the channel's other readers or writers, the add would fail


@pytest.mark.parametrize("index", [0, 3])
def test_pruning_part_of_a_residual_group_breaks_the_model(index):
    x = torch.randn(2, 3, 16, 16)
    group = coupled_channel_groups(trace_grad_fn(tiny_resnet(), x))[index]
    pairs = [group.layers[:2], group.layers[2:]]  # two (conv, BatchNorm) writing into the add
    for skip in pairs:
        partial = ChannelGroup([name for name in group.layers if name not in skip], group.consumers)
        model = tiny_resnet().eval()
        prune_channel_group(model, partial, drop=[0])
        with pytest.raises(RuntimeError, match=r"must match the size|channels"):
            model(x)


def test_dict_outputs_are_shaped_and_counted():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return {"scores": x * self.weight, "note": None}

    model = nn.Sequential(nn.Linear(2, 3), Heads())
    result = summary(model, input_size=(4, 2))
    assert result.rows[-1].output_shape == {"scores": [4, 3], "note": None}
    assert result.output_bytes == 4 * (4 * 3) * 2  # the Linear's output and the dict's tensor
    assert result.total_params == 2 * 3 + 3 + 3


def test_a_layer_called_twice_is_listed_once_in_its_group():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.shared(torch.relu(self.shared(self.stem(x))))

    nodes = grad_fn_modules(Twice(), torch.randn(1, 3, 4, 4))
    assert len(nodes) == 3 and len({id(m) for m in nodes.values()}) == 2
    groups = coupled_channel_groups(trace_grad_fn(Twice(), torch.randn(1, 3, 4, 4)))
    # shared reads stem's channels and its own: one group
    assert [(g.layers, g.consumers) for g in groups] == [(["stem", "shared"], ["shared"])]


def test_batchnorm_without_affine_parameters_is_pruned():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 2, 1)).eval()
    group = coupled_channel_groups(trace_grad_fn(model, torch.randn(1, 3, 4, 4)))[0]
    assert (group.layers, group.consumers, group.channels) == (["0", "1"], ["2"], 4)
    prune_channel_group(model, group, [1])
    assert model[1].running_mean.shape == (3,) and model(torch.randn(1, 3, 4, 4)).shape == (1, 2, 4, 4)


def test_the_models_input_channels_are_refused():
    model = nn.Sequential(nn.PReLU(3), nn.Conv2d(3, 4, 1))
    group = coupled_channel_groups(trace_grad_fn(model, torch.randn(1, 3, 4, 4)))[0]
    assert (group.layers, group.consumers, group.refused) == (["0"], ["1"], INPUT)
    with pytest.raises(ValueError, match=r"cannot prune the group of '0' \(1 channels\): its "
                                         "channels are the model's input"):
        prune_channel_group(model, group, [0])


class ScalesItsInputInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x.mul_(2)  # in place, on the input itself
        return self.conv(x)


def test_a_model_that_changes_its_input_in_place_is_traced_on_a_copy():
    model, x = ScalesItsInputInPlace(), torch.randn(1, 3, 8, 8)
    original = x.clone()
    trace = trace_grad_fn(model, x)
    assert list(trace.nodes.values()) == [model.conv]
    assert torch.equal(x, original)  # the caller's tensor is not changed
    assert ("input", "conv") in module_graph(trace).edges  # the walk still ends at the input


@pytest.mark.parametrize("types", [[nn.Conv2d, nn.Linear], (nn.Conv2d, nn.Linear),
                                   {nn.Conv2d, nn.Linear}])
def test_types_may_be_a_list_tuple_or_set(types):
    model, x = tiny_resnet(), torch.randn(1, 3, 16, 16)
    nodes = grad_fn_modules(model, x, types=types)
    expected = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(map(id, nodes.values())) == sorted(map(id, expected))
    assert len(expected) == 7  # by hand: six convolutions (one on the shortcut) and the fc


def test_one_class_as_types():
    model = tiny_resnet()
    nodes = grad_fn_modules(model, torch.randn(1, 3, 16, 16), types=nn.Linear)
    assert list(nodes.values()) == [model[7]]


@pytest.mark.parametrize("types", ["Conv2d", [nn.Conv2d, 3], [], [torch.relu], [int]])
def test_other_types_are_refused_by_name(types):
    with pytest.raises(TypeError, match=r"types must be a module class or a list or tuple of "
                                        r"them, e\.g\. \(nn\.Conv2d, nn\.Linear\); got "):
        grad_fn_modules(tiny_resnet(), torch.randn(1, 3, 16, 16), types=types)


def test_a_list_of_images_is_passed_as_one_argument():
    model = list_of_images_detector()
    images = [torch.randn(3, 8, 8), torch.randn(3, 6, 10)]
    trace = trace_grad_fn(model, images)
    assert [trace.names[m] for m in trace.nodes.values()] == ["backbone", "head"] * 2
    assert isinstance(trace.input, list) and len(trace.input) == 2
    assert all(t.requires_grad and t.is_leaf for t in trace.input)
    graph = module_graph(trace)  # walks from the dicts of the output list back to both images
    assert {("input", "backbone"), ("backbone", "head"), ("head", "output")} <= set(graph.edges)


def test_a_tuple_is_the_models_positional_arguments():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(5, 2)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model = Two()
    tokens = torch.tensor([1, 2])
    nodes = grad_fn_modules(model, (torch.randn(2, 3), torch.randn(2, 5)))
    assert sorted(map(id, nodes.values())) == sorted([id(model.a), id(model.b)])
    embed = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 2))
    assert list(grad_fn_modules(embed, tokens).values()) == [embed[1]]  # integers need no grad


@pytest.mark.parametrize("x", [[1.0, 2.0], (), "abc", {"images": []}])
def test_inputs_the_model_does_not_take_get_torchs_own_error(x):
    model = tiny_resnet()
    with pytest.raises(TypeError):  # e.g. "conv2d() received an invalid combination of arguments"
        grad_fn_modules(model, x)
    assert no_hooks_left(model)


def test_a_compiled_model_is_traced_through_its_original_module():
    model = tiny_resnet()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    compiled(x)
    trace = trace_grad_fn(compiled, x)
    assert sorted(trace.names[m] for m in trace.nodes.values()) == sorted(
        n for n, m in model.named_modules() if isinstance(m, GRAD_FN_TYPES))


def test_the_tutorials_hook_list_removes_only_the_last_hook():
    model, x = tiny_resnet(), torch.randn(1, 3, 16, 16)
    nodes = grad_fn_modules_keeping_only_the_last_hook(model, x)
    hooked = [name for name, m in model.named_modules() if m._forward_hooks]
    assert len(nodes) == 13 and len(hooked) == 12 and "7" not in hooked  # the Linear: the last
    model(x)  # any later forward pass, say a training step, is recorded too
    assert len(nodes) == 13 + 12
    grad_fn_modules(model, x)
    assert len(nodes) == 13 + 12 * 2  # and grad_fn_modules removes only its own hooks
    assert not any(m._forward_hooks for m in tiny_resnet().modules())


def test_the_nodes_keep_the_saved_activations_until_released():
    model, x = tiny_resnet(), torch.randn(2, 3, 16, 16)
    with SavedTensors() as saved:
        nodes = grad_fn_modules(model, x)
    held = saved.kept_bytes()
    assert held > 0 and saved.kept_bytes(activations_only=False) > held  # weights too
    names = sorted(n for n, m in model.named_modules() if m in set(nodes.values()))
    del nodes
    assert saved.kept_bytes(activations_only=False) == 0
    assert len(names) == 13  # names are all a later step needs, and hold no graph


def test_saved_tensors_records_only_inside_its_block():
    model, x = tiny_resnet(), torch.randn(2, 3, 16, 16)
    with SavedTensors() as saved:
        pass
    kept = grad_fn_modules(model, x)
    assert saved.kept_bytes(activations_only=False) == 0 and len(kept) == 13
