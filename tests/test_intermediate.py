import re
import shutil
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn
from torch.fx.proxy import TraceError
from torchvision.models import mobilenet_v2, resnet18
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.feature_extraction import get_graph_node_names

from tutorials_pkg.digits import (
    DigitsCNN,
    accuracy,
    load_digits_tensors,
    split_train_test,
    train_epoch,
)
from torchvision.models._utils import IntermediateLayerGetter

from tutorials_pkg.intermediate import (
    EXTRACTORS,
    KeywordAttentionNet,
    NoisyGatedNet,
    SignGate,
    build_fx_extractor,
    by_children,
    by_fx,
    by_hooks,
    by_hooks_without_clone_or_removal,
    by_layer_getter,
    by_pre_hooks,
    chain_children,
    extraction_costs,
    format_cost_table,
    fx_extractor,
    grads_by_hooks,
    hook_grads,
    hook_inputs,
    hook_outputs,
    layer_getter_outputs,
    plot_feature_maps,
    svg_figure,
)

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def stem(model, x):
    """resnet's forward up to layer1, written out by hand."""
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def all_hooks(model):
    """Every forward, forward pre- and backward hook left on the model's modules."""
    return [hook for module in model.modules()
            for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
            for hook in hooks.values()]


@torch.no_grad()
def test_all_four_agree_on_resnet_layers(device):
    torch.manual_seed(0)
    model = resnet18(weights=None).eval().to(device)
    x = torch.randn(2, 3, 64, 64, device=device)
    results = {name: fn(model, x, LAYERS) for name, fn in EXTRACTORS.items()}
    # an independent reference: the layers chained by hand
    expected, h = {}, stem(model, x)
    for name in LAYERS:
        h = getattr(model, name)(h)
        expected[name] = h
    for method, outputs in results.items():
        assert list(outputs) == LAYERS, method
        for name in LAYERS:
            assert torch.equal(outputs[name], expected[name]), (method, name)


@torch.no_grad()
def test_fx_and_children_on_fc_equal_the_model_output(resnet, image):
    assert torch.equal(by_fx(resnet, image, ["fc"])["fc"], resnet(image))
    assert torch.equal(by_children(resnet, image, ["fc"])["fc"], resnet(image))  # flattens before fc


@torch.no_grad()
def test_results_are_keyed_in_the_order_asked(resnet, image):
    for method, fn in EXTRACTORS.items():
        assert list(fn(resnet, image, ["layer3", "layer1"])) == ["layer3", "layer1"], method


@torch.no_grad()
@pytest.mark.parametrize("fn", [by_children, by_layer_getter])
def test_children_methods_cannot_reach_nested_names(fn, resnet, image):
    with pytest.raises(ValueError, match=r"unknown names \['layer1\.0\.conv2'\].*layer1, layer2, layer3"):
        fn(resnet, image, ["layer1.0.conv2"])


@torch.no_grad()
@pytest.mark.parametrize("fn", [by_fx, by_hooks])
def test_fx_and_hooks_reach_nested_names(fn, resnet, image):
    block = resnet.layer1[0]
    expected = block.conv2(block.relu(block.bn1(block.conv1(stem(resnet, image)))))
    assert torch.equal(fn(resnet, image, ["layer1.0.conv2"])["layer1.0.conv2"], expected)


@torch.no_grad()
def test_fx_reaches_functional_ops(resnet, image):
    block = resnet.layer1[0]
    h = stem(resnet, image)
    expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))) + h
    assert torch.equal(by_fx(resnet, image, ["layer1.0.add"])["layer1.0.add"], expected)
    with pytest.raises(ValueError, match=r"unknown names \['layer1\.0\.add'\]"):
        by_hooks(resnet, image, ["layer1.0.add"])  # an op, not a module


@pytest.mark.parametrize("method, valid", [
    ("by_children", "avgpool"), ("by_layer_getter", "avgpool"),
    ("by_fx", "layer1.0.relu_1"), ("by_hooks", "layer4.1.bn2"),
])
def test_unknown_name_lists_the_valid_names_for_that_method(method, valid, resnet, image):
    with pytest.raises(ValueError, match=rf"{method}: unknown names \['fc2'\].*\b{valid}\b"):
        EXTRACTORS[method](resnet, image, ["layer1", "fc2"])


@torch.no_grad()
@pytest.mark.parametrize("method", EXTRACTORS)
def test_one_name_may_be_a_string_and_no_name_gives_nothing(method, resnet, image):
    one = EXTRACTORS[method](resnet, image, "layer1")  # not 'l', 'a', 'y', ...
    assert list(one) == ["layer1"] and one["layer1"].shape == (2, 64, 16, 16)
    assert EXTRACTORS[method](resnet, image, []) == {}


@torch.no_grad()
def test_hooks_return_what_the_layer_produced_despite_inplace_relu(resnet, image):
    block = resnet.layer1[0]
    assert block.relu.inplace  # bn1's output is overwritten by relu(inplace=True)
    produced = block.bn1(block.conv1(stem(resnet, image)))
    assert (produced < 0).any()
    good = by_hooks(resnet, image, ["layer1.0.bn1"])["layer1.0.bn1"]
    assert torch.equal(good, produced)
    model = resnet18(weights=None).eval()  # the naive hooks stay: use a copy we throw away
    model.load_state_dict(resnet.state_dict())
    bad = by_hooks_without_clone_or_removal(model, image, ["layer1.0.bn1"])["layer1.0.bn1"]
    assert not torch.equal(bad, produced)
    assert torch.equal(bad, torch.relu(produced))  # what ReLU made of it


@torch.no_grad()
def test_fx_and_children_also_return_values_before_inplace_ops(resnet, image):
    produced = resnet.layer1[0].bn1(resnet.layer1[0].conv1(stem(resnet, image)))
    outputs = by_fx(resnet, image, ["layer1.0.bn1", "layer1"])  # layer1 needs the in-place relu
    assert torch.equal(outputs["layer1.0.bn1"], produced)
    bn1 = resnet.bn1(resnet.conv1(image))
    assert torch.equal(by_children(resnet, image, ["bn1", "layer1"])["bn1"], bn1)
    # IntermediateLayerGetter hands back the tensor relu(inplace=True) changed, without a word
    getter = IntermediateLayerGetter(resnet, return_layers={"bn1": "bn1", "layer1": "layer1"})
    assert torch.equal(getter(image)["bn1"], torch.relu(bn1))
    assert torch.equal(layer_getter_outputs(resnet, image, ["bn1", "layer1"])["bn1"], torch.relu(bn1))
    # by_layer_getter sees the change and refuses (it returned relu(bn1) before)
    with pytest.raises(RuntimeError, match=r"by_layer_getter: a later child changed the outputs of "
                                           r"\['bn1'\] in place"):
        by_layer_getter(resnet, image, ["bn1", "layer1"])
    assert torch.equal(by_layer_getter(resnet, image, ["bn1"])["bn1"], bn1)  # alone it is right


def test_fx_clones_only_outputs_that_a_later_op_reads(resnet):
    assert "clone" in build_fx_extractor(resnet, ["layer1.0.bn1", "layer1"]).code
    assert "clone" not in build_fx_extractor(resnet, ["layer4"]).code


@torch.no_grad()
def test_a_module_called_twice_keeps_its_last_output_with_hooks(resnet, image):
    h = stem(resnet, image)
    outputs = by_hooks(resnet, image, ["layer1.0.relu", "layer1.0"])
    assert torch.equal(outputs["layer1.0.relu"], outputs["layer1.0"])  # the relu after the add
    assert torch.equal(outputs["layer1.0"], resnet.layer1[0](h))


def test_hooks_are_removed_even_when_forward_raises(resnet):
    with pytest.raises(RuntimeError, match="to have 3 channels, but got 1"):
        by_hooks(resnet, torch.randn(1, 1, 32, 32), ["layer1", "layer1.0.conv1"])
    assert all_hooks(resnet) == []
    by_hooks(resnet, torch.randn(1, 3, 32, 32), ["layer2"])
    assert all_hooks(resnet) == []


def test_naive_hooks_pile_up():
    model = resnet18(weights=None).eval()
    for _ in range(3):
        by_hooks_without_clone_or_removal(model, torch.randn(1, 3, 32, 32), ["layer2"])
    assert len(model.layer2._forward_hooks) == 3


@torch.no_grad()
def test_children_methods_ignore_the_models_forward(resnet, image):
    # no flatten before fc: avgpool's (2, 512, 1, 1) reaches fc as 1024 rows of 1 number
    with pytest.raises(RuntimeError, match=r"by_layer_getter: the chain broke at 'fc': it was given "
                       r"what 'avgpool' returned(.|\n)*shapes cannot be multiplied \(1024x1 and 512x1000\)"):
        by_layer_getter(resnet, image, ["fc"])
    model = mobilenet_v2(weights=None).eval()
    # forward pools before the classifier: unpooled (2, 1280, 2, 2) reaches it as 5120 rows of 2
    with pytest.raises(RuntimeError, match=r"broke at 'classifier'(.|\n)*shapes cannot be multiplied "
                                           r"\(5120x2 and 1280x1000\)"):
        by_children(model, image, ["classifier"])
    assert torch.equal(by_fx(model, image, ["classifier"])["classifier"], model(image))


@torch.no_grad()
def test_fx_fails_on_data_dependent_control_flow_and_leaf_modules_fix_it():
    model = NoisyGatedNet().eval()
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(TraceError, match=r"stopped in 'gate' \(SignGate.forward\); leaf_modules=\[SignGate\]"):
        by_fx(model, x, ["fc"])
    outputs = by_fx(model, x, ["conv", "gate", "fc"], leaf_modules=[SignGate])
    assert torch.equal(outputs["fc"], model(x))
    assert torch.equal(outputs["gate"], model.gate(model.conv(x)))


def test_fx_builds_different_train_and_eval_graphs():
    model = NoisyGatedNet().eval()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs={"leaf_modules": [SignGate]},
                                                   suppress_diff_warning=True)
    assert {"randn_like", "add"} <= set(train_nodes) - set(eval_nodes)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"unknown names \['add'\].*\bgate\b"):
        by_fx(model, x, ["add"], leaf_modules=[SignGate])
    model.train()
    with pytest.raises(ValueError, match="train_return_nodes"):  # torchvision's hint
        by_fx(model, x, ["add"], leaf_modules=[SignGate])
    assert model.training  # the mode is left as it was


class FlagNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x, features_only: bool = False):
        x = self.body(x)
        if features_only:
            return x
        return self.head(x)


@torch.no_grad()
def test_concrete_args_fix_control_flow_on_an_argument():
    model, x = FlagNet().eval(), torch.randn(5, 4)
    with pytest.raises(TraceError, match=r"stopped in FlagNet.forward, the model's own code"):
        by_fx(model, x, ["head"])
    outputs = by_fx(model, x, ["body", "head"], concrete_args={"features_only": False})
    assert torch.equal(outputs["head"], model(x))


def test_digits_cnn_learns_and_all_four_agree_on_it():
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = split_train_test(*load_digits_tensors())
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, optimizer, x_train, y_train, order) for _ in range(8)]
    assert losses[-1] < losses[0] / 5
    assert model.training  # train_epoch leaves it in training mode
    model.eval()
    assert accuracy(model, x_test, y_test) > 0.9
    names = ["relu1", "relu2", "fc"]
    x = x_test[:16]
    with torch.no_grad():
        relu1 = model.relu1(model.conv1(x))  # the layers by hand
        relu2 = model.relu2(model.conv2(model.pool1(relu1)))
        for fn in (by_children, by_fx, by_hooks):
            outputs = fn(model, x, names)
            assert torch.equal(outputs["fc"], model(x)), fn.__name__
            assert torch.equal(outputs["relu1"], relu1) and torch.equal(outputs["relu2"], relu2), fn.__name__
    assert relu1.shape == (16, 8, 8, 8) and relu2.shape == (16, 16, 4, 4)


def test_plot_feature_maps_draws_the_input_and_every_channel():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = {"a": torch.rand(8, 8, 8), "b": torch.rand(16, 4, 4)}
    figure = plot_feature_maps(torch.rand(1, 8, 8), maps, width_px=760)
    axes = figure.axes
    assert len(axes) == 4 * 8  # input row + 1 row for a + 2 rows for b
    assert sum(bool(ax.images) for ax in axes) == 1 + 8 + 16
    assert figure.get_size_inches()[0] * 96 == pytest.approx(760)  # CSS pixels
    titles = [ax.get_title(loc="left") for ax in axes if ax.get_title(loc="left")]
    assert titles == ["x", "a: 8 × 8×8", "b: 16 × 4×4"]
    plt.close(figure)


def test_svg_figure_is_inline_named_sharp_and_the_same_each_time():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw():
        return plot_feature_maps(torch.ones(1, 8, 8), {"a": torch.arange(128.).reshape(2, 8, 8)})

    svg = svg_figure(draw(), labelled_by="maps-caption").data
    assert svg.startswith("<svg ") and "<?xml" not in svg  # inline in HTML, no prolog
    assert 'role="img" aria-labelledby="maps-caption"' in svg.split(">", 1)[0]
    assert re.search(r'width="570(\.\d+)?pt"', svg)  # 760 CSS px = 570 pt
    images = re.findall(r"<image [^>]*>", svg)
    assert len(images) == 3 and all("image-rendering:pixelated" in tag for tag in images)
    assert "<text" in svg and ">a: 2 × 8×8<" in svg  # text stays text
    style = re.search(r"<style[^>]*>(.*?)</style>", svg, re.S).group(1)
    assert style.startswith('svg[aria-labelledby="maps-caption"] *{')  # not every element of the page
    assert svg_figure(draw(), labelled_by="maps-caption").data == svg  # reproducible
    assert plt.get_fignums() == []  # closed: the inline backend does not draw it again


def test_extraction_costs_and_table():
    model = DigitsCNN().eval()
    rows = extraction_costs(model, torch.randn(4, 1, 8, 8), requests=["relu1", "fc"],
                            methods={"by_children": by_children, "by_hooks": by_hooks}, repeats=1)
    assert [(r["method"], r["request"]) for r in rows] == [
        ("forward", "-"), ("by_children", "relu1"), ("by_hooks", "relu1"),
        ("by_children", "fc"), ("by_hooks", "fc")]
    assert all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows)
    lines = format_cost_table(rows).splitlines()
    assert len(lines) == 6 and "x forward" in lines[0]
    assert lines[1].split()[:2] == ["forward", "-"] and lines[1].split()[3] == "1.00"
    floor = format_cost_table(rows, baseline="by_children").splitlines()
    assert floor[2].split()[0] == "by_children" and floor[2].split()[3] == "1.00"


def test_a_failed_by_fx_leaves_the_mode_as_it_was(resnet, image):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = resnet18(weights=None).eval()
    with pytest.raises(ValueError):
        create_feature_extractor(model, ["layer5"])
    assert model.training  # torchvision's own function leaves it in train mode
    model.eval()
    with pytest.raises(ValueError, match=r"unknown names \['layer5'\]"):
        by_fx(model, image, ["layer5"])
    assert not model.training
    gated = NoisyGatedNet().eval()
    with pytest.raises(TraceError, match="cannot trace NoisyGatedNet"):
        by_fx(gated, torch.randn(1, 1, 8, 8), ["fc"])
    assert not gated.training


def test_sign_gate_flips_inputs_with_a_negative_mean():
    x = torch.tensor([[-3.0, 1.0]])
    assert torch.equal(SignGate()(x), -x)
    assert torch.equal(SignGate()(-x), -x)


# --- inputs: by_pre_hooks ---------------------------------------------------------------

@torch.no_grad()
def test_pre_hooks_give_fc_the_penultimate_features(resnet, image):
    h = stem(resnet, image)
    for name in LAYERS:
        h = getattr(resnet, name)(h)
    features = torch.flatten(resnet.avgpool(h), 1)  # what resnet's forward hands to fc
    got = by_pre_hooks(resnet, image, ["fc", "layer1"])
    assert list(got) == ["fc", "layer1"] and got["fc"].shape == (2, 512)
    assert torch.equal(got["fc"], features)
    assert torch.equal(got["layer1"], stem(resnet, image))


@torch.no_grad()
def test_pre_hooks_copy_an_input_that_the_module_changes_in_place(resnet, image):
    assert resnet.relu.inplace  # it overwrites its input, bn1's output
    bn1 = resnet.bn1(resnet.conv1(image))
    assert (bn1 < 0).any()
    assert torch.equal(by_pre_hooks(resnet, image, "relu")["relu"], bn1)


@torch.no_grad()
def test_pre_hooks_find_an_input_passed_by_keyword():
    torch.manual_seed(0)
    model, tokens = KeywordAttentionNet().eval(), torch.randn(3, 5, 16)
    seen = []  # a plain pre-hook sees only the positional arguments
    handle = model.attn.register_forward_pre_hook(lambda module, args: seen.append(args))
    model(tokens)
    handle.remove()
    assert seen == [()]
    assert torch.equal(by_pre_hooks(model, tokens, ["attn"])["attn"], tokens)
    assert torch.equal(by_pre_hooks(model, tokens, ["fc"])["fc"],
                       model.attn(tokens, tokens, tokens, need_weights=False)[0].mean(dim=1))


def test_pre_hooks_are_removed_even_when_forward_raises_and_unknown_names_are_listed(resnet):
    with pytest.raises(RuntimeError, match="to have 3 channels, but got 1"):
        by_pre_hooks(resnet, torch.randn(1, 1, 32, 32), ["layer1", "fc"])
    assert all_hooks(resnet) == []
    with pytest.raises(ValueError, match=r"by_pre_hooks: unknown names \['fc2'\].*\blayer4\.1\.bn2\b"):
        by_pre_hooks(resnet, torch.randn(1, 3, 32, 32), ["fc", "fc2"])


# --- gradients: grads_by_hooks ----------------------------------------------------------

def first_logit(logits):
    return logits[:, 0].sum()


def test_grads_match_autograd_on_the_layer_computed_by_hand(resnet, image):
    h = stem(resnet, image)
    for name in LAYERS:
        h = getattr(resnet, name)(h)
    layer4 = h  # d loss / d layer4, by autograd on the layers chained by hand
    expected = torch.autograd.grad(first_logit(resnet.fc(torch.flatten(resnet.avgpool(layer4), 1))), layer4)[0]
    grads = grads_by_hooks(resnet, image, ["layer4", "fc"], first_logit)
    assert list(grads) == ["layer4", "fc"]
    torch.testing.assert_close(grads["layer4"], expected)
    one_hot = torch.zeros(2, 1000)
    one_hot[:, 0] = 1
    assert torch.equal(grads["fc"], one_hot)  # d logits[:, 0].sum() / d logits


def test_grads_leave_parameters_grad_and_hooks_as_they_were(resnet, image):
    resnet.fc.weight.grad = marker = torch.full_like(resnet.fc.weight, 7.0)
    try:
        grads_by_hooks(resnet, image, ["layer4", "fc"], first_logit)
        assert resnet.fc.weight.grad is marker and bool((marker == 7).all())
        assert all(p.grad is None for n, p in resnet.named_parameters() if n != "fc.weight")
    finally:
        resnet.fc.weight.grad = None
    assert all_hooks(resnet) == []
    with pytest.raises(RuntimeError, match="to have 3 channels, but got 1"):
        grads_by_hooks(resnet, torch.randn(1, 1, 32, 32), ["layer4"], first_logit)
    assert all_hooks(resnet) == []


class TwiceNet(nn.Module):
    """One Linear used twice, and a model that changes its input in place."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 3)

    def forward(self, x):
        x.mul_(2)  # in place, on the input
        return self.shared(torch.tanh(self.shared(x)))


def test_grads_of_a_module_called_twice_are_its_last_calls_and_inplace_input_is_fine():
    torch.manual_seed(0)
    model, x = TwiceNet(), torch.randn(4, 3)
    grads = grads_by_hooks(model, x.clone(), ["shared"], lambda out: (out ** 2).sum())
    expected = 2 * model(x.clone())  # d sum(out^2) / d out, out being the last call's output
    torch.testing.assert_close(grads["shared"], expected)
    outputs = by_hooks(model, x.clone(), ["shared"])  # by_hooks keeps the last call too
    torch.testing.assert_close(2 * outputs["shared"], grads["shared"])


def test_grads_refuse_inplace_changes_clearly_and_tensor_hooks_follow_them(resnet, image):
    with pytest.raises(RuntimeError, match=r"the outputs of \['bn1'\] were changed in place after "
                                           r"they were made: ask for a module whose output nothing changes"):
        grads_by_hooks(resnet, image, ["bn1"], first_logit)
    assert all_hooks(resnet) == []
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match=r"the outputs of \['0'\] were changed in place"):
        grads_by_hooks(net, x, ["0"], torch.sum)
    hidden, seen = net[0](x), []
    hidden.register_hook(seen.append)  # a hook on the tensor: fires with d loss / d hidden
    net[2](net[1](hidden)).sum().backward()
    net[1].inplace = False
    assert torch.equal(seen[0], grads_by_hooks(net, x, ["0"], torch.sum)["0"])


def test_grads_refuse_unknown_names_and_modules_the_loss_never_sees(resnet, image):
    with pytest.raises(ValueError, match=r"grads_by_hooks: unknown names \['fc2'\]"):
        grads_by_hooks(resnet, image, ["fc2"], first_logit)
    two_heads = TwoHeads()
    with pytest.raises(ValueError, match=r"no gradient recorded for \['b'\]: forward never called them, "
                                         "or their output is not a tensor or does not reach the loss"):
        grads_by_hooks(two_heads, torch.randn(2, 3), ["a", "b"], lambda outputs: outputs[0].sum())
    assert all_hooks(two_heads) == []
    assert torch.equal(grads_by_hooks(two_heads, torch.randn(2, 3), ["a"], lambda outputs: outputs[0].sum())["a"],
                       torch.ones(2, 2))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x), self.b(x)


def test_the_deprecated_backward_hook_reports_the_last_layers_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(2, 4, requires_grad=True)
    seen = []
    handle = net.register_backward_hook(lambda module, grad_input, grad_output: seen.append(grad_input))
    with pytest.warns(FutureWarning, match="non-full backward hook.*missing some grad_input"):
        net(x).sum().backward()
    handle.remove()
    bias, last_input, weight = seen[0]
    assert torch.equal(bias, net[2].bias.grad) and torch.equal(weight, net[2].weight.grad.T)
    assert last_input.shape == (2, 5) and x.grad.shape == (2, 4)  # not the model input's
    assert torch.equal(grads_by_hooks(net, x, ["2"], torch.sum)["2"], torch.ones(2, 3))


# --- torch.compile, modules never called, models FX cannot trace ------------------------

class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)
        self.unused = nn.Linear(8, 8)  # registered, never called

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def listed_names(error):
    return str(error.value).split("it can reach: ")[1].split(", ")


@pytest.mark.parametrize("fn", [by_hooks, by_pre_hooks])
def test_hook_methods_on_a_compiled_model_use_the_original_and_list_usable_names(fn):
    torch.manual_seed(0)
    model, x = Mlp(), torch.randn(3, 4)
    compiled = torch.compile(model, backend="eager")
    compiled(x)  # compiled and called once, as the issue found it
    assert torch.equal(fn(compiled, x, ["fc1"])["fc1"], fn(model, x, ["fc1"])["fc1"])
    with pytest.raises(ValueError, match=r"unknown names \['fc3'\]") as error:
        fn(compiled, x, ["fc3"])
    usable = [name for name in listed_names(error) if name != "unused"]
    assert usable == ["fc1", "fc2"]
    assert list(fn(compiled, x, usable)) == usable  # every name it listed works
    grads = grads_by_hooks(compiled, x, ["fc2"], torch.sum)
    assert torch.equal(grads["fc2"], torch.ones(3, 2))


@pytest.mark.parametrize("method", [*EXTRACTORS, "by_pre_hooks", "grads_by_hooks"])
def test_a_compiled_model_takes_both_spellings_of_a_name(method):
    """compiled.named_modules() says '_orig_mod.fc1'; the model inside says 'fc1' (issue 24)."""
    torch.manual_seed(0)
    model, x = Mlp(), torch.randn(3, 4)
    compiled = torch.compile(model, backend="eager")
    assert "_orig_mod.fc1" in dict(compiled.named_modules())
    fn = {**EXTRACTORS, "by_pre_hooks": by_pre_hooks,
          "grads_by_hooks": lambda m, x, names: grads_by_hooks(m, x, names, torch.sum)}[method]
    long, short = fn(compiled, x, ["_orig_mod.fc1"]), fn(compiled, x, ["fc1"])
    assert list(long) == ["_orig_mod.fc1"] and torch.equal(long["_orig_mod.fc1"], short["fc1"])


def test_fx_and_children_on_a_compiled_model():
    torch.manual_seed(0)
    model, x = Mlp(), torch.randn(3, 4)
    compiled = torch.compile(model, backend="eager")
    expected = model.fc1(x)
    assert torch.equal(by_fx(compiled, x, ["fc1"])["fc1"], expected)
    assert torch.equal(by_children(compiled, x, ["fc1"])["fc1"], expected)
    assert torch.equal(by_layer_getter(compiled, x, ["fc1"])["fc1"], expected)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compiled_code_runs_only_the_hooks_its_forward_was_compiled_with(backend):
    """What the page says about torch.compile and hooks, on the torch that builds it (issue 25)."""
    if backend == "inductor" and not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("inductor needs a C compiler on CPU")
    torch._dynamo.reset()  # no compiled code for Mlp.forward yet
    torch.manual_seed(0)
    x, fired = torch.randn(3, 4), []
    first, second, late = Mlp(), Mlp(), Mlp()
    first.fc1.register_forward_hook(lambda *args: fired.append("first"))
    compiled_first = torch.compile(first, backend=backend)
    compiled_first(x)
    assert fired == ["first"]  # registered before the first compile of Mlp.forward: it fires
    first.fc1.register_forward_hook(lambda *args: fired.append("first, added later"))
    compiled_first(x)  # compiled with a hook: its hooks are checked, and it recompiles
    assert fired == ["first", "first", "first, added later"]
    torch._dynamo.reset()
    fired.clear()
    compiled_late = torch.compile(late, backend=backend)
    compiled_late(x)
    late.fc1.register_forward_hook(lambda *args: fired.append("late"))
    compiled_late(x)
    second.fc1.register_forward_hook(lambda *args: fired.append("second"))
    torch.compile(second, backend=backend)(x)
    assert fired == []  # compiled without hooks: one added later, or on a second instance, missed
    with torch.compiler.set_stance("force_eager"):
        compiled_late(x)
    assert fired[-1] == "late"  # run eagerly, it fires: what the hook tools do
    assert torch.equal(by_hooks(compiled_late, x, ["fc1"])["fc1"], late.fc1(x))


def test_hooks_inside_a_compiled_part_of_a_model_fire_even_after_its_first_call():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    model = nn.Sequential(torch.compile(inner, backend="eager"), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    model(x)  # compiled: hooks added inside it now would be missed in compiled code
    expected = inner[0](x)
    for name in ("0._orig_mod.0", "0.0"):  # both spellings
        assert torch.equal(by_hooks(model, x, [name])[name], expected)
        assert torch.equal(by_pre_hooks(model, x, [name])[name], x)
    with pytest.raises(ValueError, match=r"unknown names \['0.2'\]") as error:
        by_hooks(model, x, ["0.2"])
    assert listed_names(error) == ["0", "0.0", "0.1", "1"]
    assert all_hooks(model) == []


@pytest.mark.parametrize("fn", [by_hooks, by_pre_hooks])
def test_a_module_forward_never_calls_gets_a_clear_error(fn):
    model, x = Mlp(), torch.randn(3, 4)
    what = "output" if fn is by_hooks else "input"
    with pytest.raises(ValueError, match=rf"{fn.__name__}: no {what} recorded for \['unused'\]: "
                                         r"forward never called them for this input"):
        fn(model, x, ["fc1", "unused"])
    assert all_hooks(model) == []


def test_a_branch_forward_skips_in_eval_mode_gets_the_same_error():
    from torchvision.models import googlenet

    model = googlenet(weights=None, aux_logits=True, init_weights=False)
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"no output recorded for \['aux1'\].*if self.training:"):
        by_hooks(model.eval(), x, ["aux1", "inception3a"])
    assert by_hooks(model.train(), x, ["aux1"])["aux1"].shape == (2, 1000)  # called in training


class CheckedNet(nn.Module):
    """A model whose own forward checks its input with an `if`, as a U-Net may."""

    def __init__(self):
        super().__init__()
        self.inc = nn.Conv2d(3, 4, 3, padding=1)
        self.outc = nn.Conv2d(4, 2, 1)

    def check_input(self, x):
        if x.shape[-1] < 16:
            raise ValueError("at least 16 pixels wide")

    def forward(self, x):
        self.check_input(x)
        return self.outc(self.inc(x))


def test_fx_names_by_hooks_where_it_cannot_trace_the_models_own_code():
    model, x = CheckedNet().eval(), torch.randn(1, 3, 32, 32)
    with pytest.raises(TraceError) as error:
        by_fx(model, x, ["inc"])
    message = str(error.value)
    assert message.startswith("by_fx: torch.fx cannot trace CheckedNet: tracing stopped in "
                              "CheckedNet.check_input")
    assert "by_hooks(model, x, names)" in message
    assert message.splitlines()[-1] == ("FX's message: TraceError: symbolically traced variables "
                                        "cannot be used as inputs to control flow")
    assert isinstance(error.value.__cause__, TraceError)  # FX's own error, chained
    with torch.no_grad():  # and the method it names works
        assert torch.equal(by_hooks(model, x, ["outc"])["outc"], model(x))


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                             min_size=160, max_size=160).eval()


@torch.no_grad()
def test_hooks_on_a_detectors_backbone_return_its_ordered_dict_of_feature_maps(detector):
    images = [torch.rand(3, 120, 160), torch.rand(3, 160, 100)]
    got = by_hooks(detector, images, ["backbone.body", "backbone"])
    batch = detector.transform(images)[0].tensors  # resized, normalised, padded to one batch
    expected = detector.backbone.body(batch)
    assert type(got["backbone.body"]) is OrderedDict and list(got["backbone.body"]) == ["0", "1"]
    for key, tensor in expected.items():
        assert torch.equal(got["backbone.body"][key], tensor)
    assert list(got["backbone"]) == ["0", "1", "pool"]  # the FPN's maps
    with pytest.raises(TraceError, match=r"cannot trace FasterRCNN: tracing stopped in FasterRCNN.forward"
                                         r"(.|\n)*by_hooks(.|\n)*Proxy object cannot be iterated"):
        by_fx(detector, images, ["backbone.body"])


Pair = namedtuple("Pair", "first second")


def test_hooks_copy_every_tensor_in_a_structured_output():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Splitter()

        def forward(self, x):
            pair = self.inner(x)
            pair.second.zero_()  # changes the inner module's output in place
            return pair.first

    class Splitter(nn.Module):
        def forward(self, x):
            return Pair(*x.clone().chunk(2, dim=1))

    x = torch.arange(8.).reshape(2, 4)
    got = by_hooks(Wrapper(), x, ["inner"])["inner"]
    assert type(got) is Pair
    assert torch.equal(got.second, x[:, 2:])  # the copy, not the zeroed tensor


def test_grads_reach_every_layer_of_a_frozen_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).requires_grad_(False)
    x = torch.randn(2, 4)
    grads = grads_by_hooks(model, x, ["0", "2"], torch.sum)
    assert torch.equal(grads["2"], torch.ones(2, 3))
    hidden = model[0](x)
    torch.testing.assert_close(grads["0"], (1 - torch.tanh(hidden) ** 2) * model[2].weight.sum(0))
    assert not x.requires_grad and x.grad is None  # the caller's x is left alone


class PairInput(nn.Module):
    """Two positional arguments, as an optical-flow model takes two images."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, a, b):
        return self.left(a) + self.right(b)


@torch.no_grad()
@pytest.mark.parametrize("fn", [by_hooks, by_pre_hooks, by_fx])
def test_a_tuple_is_the_models_positional_arguments(fn):
    torch.manual_seed(0)
    model, a, b = PairInput(), torch.randn(4, 3), torch.randn(4, 3)
    got = fn(model, (a, b), ["left", "right"])
    if fn is by_pre_hooks:
        assert torch.equal(got["left"], a) and torch.equal(got["right"], b)
    else:
        assert torch.equal(got["left"], model.left(a)) and torch.equal(got["right"], model.right(b))


# --- the models readers bring (issue 24) ------------------------------------------------

class MaskedNet(nn.Module):
    """A keyword-only argument, as language models take an attention mask."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x, *, mask):
        return self.head(self.body(x) * mask)


@pytest.mark.parametrize("method", [*EXTRACTORS, "by_pre_hooks", "grads_by_hooks"])
def test_keyword_arguments_reach_forward(method):
    torch.manual_seed(0)
    model, x, mask = MaskedNet(), torch.randn(3, 4), torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'mask'"):
        model(x)  # what a tool without input_kwargs could only do
    hidden = model.body(x)
    if method == "grads_by_hooks":
        got = grads_by_hooks(model, x, ["body"], torch.sum, input_kwargs={"mask": mask})["body"]
        assert torch.equal(got, (model.head.weight.sum(0) * mask).expand(3, 4))
    elif method == "by_pre_hooks":
        got = by_pre_hooks(model, x, ["head"], input_kwargs={"mask": mask})["head"]
        assert torch.equal(got, hidden * mask)
    elif method in ("by_children", "by_layer_getter"):  # the chain is body, head: not the model
        with pytest.raises(RuntimeError, match=rf"{method}: the chain gives \['head'\] other values"):
            EXTRACTORS[method](model, x, ["head"], input_kwargs={"mask": mask})
        got = EXTRACTORS[method](model, x, ["body"], input_kwargs={"mask": mask})["body"]
        assert torch.equal(got, hidden)
    else:
        got = EXTRACTORS[method](model, x, ["body", "head"], input_kwargs={"mask": mask})
        assert torch.equal(got["head"], model(x, mask=mask)) and torch.equal(got["body"], hidden)


class TokenNet(nn.Module):
    """Token ids in, as any language model takes them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids):
        return self.fc(self.embed(ids).mean(dim=1))


@pytest.mark.parametrize("frozen", [False, True])
def test_grads_on_token_ids(frozen):
    torch.manual_seed(0)
    model, ids = TokenNet().requires_grad_(not frozen), torch.tensor([[1, 2, 3], [4, 5, 5]])
    grads = grads_by_hooks(model, ids, ["embed", "fc"], lambda logits: logits[:, 0].sum())
    assert torch.equal(grads["fc"], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    # d logits[:, 0].sum() / d embed = fc.weight[0] / 3 for each of the three tokens
    torch.testing.assert_close(grads["embed"], (model.fc.weight[0] / 3).expand(2, 3, 4))
    assert all(p.grad is None for p in model.parameters())


class LstmNet(nn.Module):
    """A child that returns a tuple, which forward unpacks before the next child."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


@pytest.mark.parametrize("fn", [by_children, by_layer_getter])
def test_the_chain_names_the_child_where_a_tuple_output_breaks_it(fn):
    torch.manual_seed(0)
    model, x = LstmNet(), torch.randn(2, 5, 4)
    with pytest.raises(RuntimeError, match=rf"{fn.__name__}: the chain broke at 'fc': it was given "
                                           r"what 'lstm' returned \(a tuple\).*skips forward"):
        fn(model, x, ["fc"])
    lstm = fn(model, x, ["lstm"])["lstm"]  # the tuple itself, as the child returned it
    assert torch.equal(lstm[0], model.lstm(x)[0])
    assert torch.equal(by_hooks(model, x, ["fc"])["fc"], model(x))


class DictInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, batch):
        return self.pool(self.conv(batch["image"]))


def test_the_chain_names_the_first_child_when_the_input_is_a_dict():
    model, batch = DictInputNet(), {"image": torch.randn(2, 3, 8, 8), "label": "cat"}
    for fn in (by_children, by_layer_getter):
        with pytest.raises(RuntimeError, match=rf"{fn.__name__}: the chain broke at 'conv': it was "
                                               r"given x as it is \(a dict\)"):
            fn(model, batch, ["conv"])
    assert torch.equal(by_hooks(model, batch, ["conv"])["conv"], model.conv(batch["image"]))


@pytest.mark.parametrize("fn", [by_children, by_layer_getter])
def test_a_module_list_child_is_refused_with_the_reason(fn):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 3, 8)
    with pytest.raises(NotImplementedError):  # what a chain gets from ModuleList by itself
        chain_children(model, x, ["layers"])
    with pytest.raises(RuntimeError, match=rf"{fn.__name__}: the top-level children up to 'layers' "
                                           r"are not a chain: 'layers' is a ModuleList"):
        fn(model, x, ["layers"])
    with torch.no_grad():
        assert torch.equal(by_hooks(model, x, ["layers.1"])["layers.1"], model(x))


class Reordered(nn.Module):
    """Children registered in another order than forward calls them."""

    def __init__(self):
        super().__init__()
        self.second = nn.Linear(4, 4)
        self.first = nn.Linear(4, 4)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


@pytest.mark.parametrize("fn", [by_children, by_layer_getter])
def test_children_registered_in_another_order_are_refused_not_silently_wrong(fn):
    torch.manual_seed(0)
    model, x = Reordered(), torch.randn(3, 4)
    wrong = chain_children(model, x, ["first"])["first"]  # first(second(x)): no error
    getter = IntermediateLayerGetter(model, return_layers={"first": "first"})(x)["first"]
    assert torch.equal(wrong, getter) and not torch.allclose(wrong, model.first(x))
    with pytest.raises(RuntimeError, match=rf"{fn.__name__}: the top-level children up to 'first' are "
                                           r"not a chain: forward calls 'first' where the chain would "
                                           r"call 'second': the children are registered in another order"):
        fn(model, x, ["first"])
    assert all_hooks(model) == []


class ScaledBetween(nn.Module):
    """forward does more than call its children in turn (what a chain cannot see)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(2 * h) + h


def test_work_that_forward_does_between_children_is_refused():
    torch.manual_seed(0)
    model, x = ScaledBetween(), torch.randn(3, 4)
    assert torch.equal(by_children(model, x, ["a"])["a"], model.a(x))  # a itself is fine
    with pytest.raises(RuntimeError, match=r"the chain gives \['b'\] other values than the model's "
                                           "forward does"):
        by_children(model, x, ["a", "b"])


def test_the_check_pass_leaves_batchnorm_and_the_random_state_as_one_forward_would():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU()).train()
    twin = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU()).train()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    got = by_children(model, x, ["2"])["2"]  # the check pass draws the same dropout mask
    torch.manual_seed(1)
    expected = twin[2](twin[1](twin[0](x)))
    assert torch.equal(got, expected)
    assert torch.equal(model[1].running_mean, twin[1].running_mean)  # moved once, as by one pass
    assert model[1].num_batches_tracked.item() == 1


def test_by_hooks_in_train_mode_moves_batchnorm_statistics_as_forward_does(resnet, image):
    model = resnet18(weights=None)
    model.load_state_dict(resnet.state_dict())
    before = model.bn1.running_mean.clone()
    by_hooks(model.train(), image, ["layer1"])
    assert not torch.equal(model.bn1.running_mean, before)  # a training step's forward
    after_train = model.bn1.running_mean.clone()
    by_hooks(model.eval(), image, ["layer1"])
    assert torch.equal(model.bn1.running_mean, after_train)  # eval mode leaves them


def test_return_layers_values_rename_the_outputs(resnet, image):
    getter = IntermediateLayerGetter(resnet, return_layers={"layer4": "out", "layer3": "aux"})
    with torch.no_grad():
        outputs = getter(image)
        expected = by_hooks(resnet, image, ["layer3", "layer4"])
    assert list(outputs) == ["aux", "out"]  # in the order of the children, keyed by the values
    assert torch.equal(outputs["aux"], expected["layer3"]) and torch.equal(outputs["out"], expected["layer4"])


class SkipIdentity(nn.Module):
    """An nn.Identity whose output is its input: the same tensor, the same grad_fn."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.skip = nn.Identity()

    def forward(self, x):
        h = torch.tanh(x)
        return self.fc(h) + self.skip(h)


def test_the_gradient_at_an_identity_is_its_own_not_its_inputs():
    torch.manual_seed(0)
    model, x = SkipIdentity(), torch.randn(2, 3)
    grads = grads_by_hooks(model, x, ["skip"], torch.sum)
    assert torch.equal(grads["skip"], torch.ones(2, 3))  # d sum / d skip's output, not tanh's


def test_the_cores_run_on_their_own(resnet, image):
    with torch.no_grad():
        assert torch.equal(chain_children(resnet, image, ["layer2"])["layer2"],
                           by_hooks(resnet, image, ["layer2"])["layer2"])
        assert torch.equal(fx_extractor(resnet, ["layer2"])(image)["layer2"],
                           hook_outputs(resnet, ["layer2"], image)["layer2"])
        assert torch.equal(hook_inputs(resnet, ["fc"], image)["fc"], by_pre_hooks(resnet, image, "fc")["fc"])
    grads = hook_grads(resnet, ["fc", "layer4"], first_logit, image)
    assert grads["fc"].shape == (2, 1000) and all_hooks(resnet) == []


def test_a_module_that_returns_none_is_recorded_as_none():
    class Probe(nn.Module):
        def forward(self, x):
            return None  # a module called for its side effect

    class WithProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.probe, self.fc = Probe(), nn.Linear(3, 2)

        def forward(self, x):
            self.probe(x)
            return self.fc(x)

    assert by_hooks(WithProbe(), torch.randn(2, 3), ["probe"]) == {"probe": None}
