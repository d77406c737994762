import pytest
import torch
from torch import nn
from torch.fx.proxy import TraceError
from torchvision.models import mobilenet_v2, resnet18
from torchvision.models.feature_extraction import get_graph_node_names

from tutorials_pkg.digits import (
    DigitsCNN,
    accuracy,
    load_digits_tensors,
    split_train_test,
    train_epoch,
)
from tutorials_pkg.intermediate import (
    EXTRACTORS,
    NoisyGatedNet,
    SignGate,
    build_fx_extractor,
    by_children,
    by_fx,
    by_hooks,
    by_hooks_without_clone_or_removal,
    by_layer_getter,
    extraction_costs,
    format_cost_table,
    plot_feature_maps,
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


def all_forward_hooks(model):
    return [hook for module in model.modules() for hook in module._forward_hooks.values()]


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
    # IntermediateLayerGetter hands back the tensor relu(inplace=True) changed: a documented limit
    assert torch.equal(by_layer_getter(resnet, image, ["bn1", "layer1"])["bn1"], torch.relu(bn1))


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
    with pytest.raises(RuntimeError):
        by_hooks(resnet, torch.randn(1, 1, 32, 32), ["layer1", "layer1.0.conv1"])  # 1 channel, not 3
    assert all_forward_hooks(resnet) == []
    by_hooks(resnet, torch.randn(1, 3, 32, 32), ["layer2"])
    assert all_forward_hooks(resnet) == []


def test_naive_hooks_pile_up():
    model = resnet18(weights=None).eval()
    for _ in range(3):
        by_hooks_without_clone_or_removal(model, torch.randn(1, 3, 32, 32), ["layer2"])
    assert len(model.layer2._forward_hooks) == 3


@torch.no_grad()
def test_children_methods_ignore_the_models_forward(resnet, image):
    with pytest.raises(RuntimeError):
        by_layer_getter(resnet, image, ["fc"])  # no flatten before fc
    model = mobilenet_v2(weights=None).eval()
    with pytest.raises(RuntimeError):
        by_children(model, image, ["classifier"])  # forward pools before the classifier
    assert torch.equal(by_fx(model, image, ["classifier"])["classifier"], model(image))


@torch.no_grad()
def test_fx_fails_on_data_dependent_control_flow_and_leaf_modules_fix_it():
    model = NoisyGatedNet().eval()
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(TraceError):
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
    with pytest.raises(TraceError):
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
    with torch.no_grad():
        results = [fn(model, x_test[:16], names) for fn in (by_children, by_fx, by_hooks)]
        for outputs in results:
            assert torch.equal(outputs["fc"], model(x_test[:16]))
            assert outputs["relu1"].shape == (16, 8, 8, 8) and outputs["relu2"].shape == (16, 16, 4, 4)
            assert torch.equal(outputs["relu2"], results[0]["relu2"])


def test_plot_feature_maps_draws_the_input_and_every_channel():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = {"a": torch.rand(8, 8, 8), "b": torch.rand(16, 4, 4)}
    figure = plot_feature_maps(torch.rand(1, 8, 8), maps)
    axes = figure.axes
    assert len(axes) == 4 * 8  # input row + 1 row for a + 2 rows for b
    assert sum(bool(ax.images) for ax in axes) == 1 + 8 + 16
    plt.close(figure)


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
    with pytest.raises(TraceError):
        by_fx(gated, torch.randn(1, 1, 8, 8), ["fc"])
    assert not gated.training


def test_sign_gate_flips_inputs_with_a_negative_mean():
    x = torch.tensor([[-3.0, 1.0]])
    assert torch.equal(SignGate()(x), -x)
    assert torch.equal(SignGate()(-x), -x)
