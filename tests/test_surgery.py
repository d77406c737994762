import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from tutorials_pkg.blocks.mobilenet import MobileNetV1, MobileNetV2
from tutorials_pkg.demo_models import TiedEmbeddingNet
from tutorials_pkg.surgery import (
    ExtraInputNet,
    ExtraInputNetOnLogits,
    ExtraOutputNet,
    ExtraOutputNetThatDropsHead,
    ExtraOutputNetWithUnusedLayer,
    classifier_ending_in_softmax,
    classifier_head,
    expand_input_channels,
    freeze_except,
    get_module,
    last_linear_name,
    module_names,
    replace_module,
    replace_modules_of_type,
    train_only,
    trainable_parameter_names,
)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=10).eval()


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_replace_module_swaps_a_nested_layer_and_returns_the_old_one(base):
    model = copy.deepcopy(base)
    conv = model.layer2[1].conv1
    new = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    assert replace_module(model, "layer2.1.conv1", new) is conv
    assert model.layer2[1].conv1 is new
    assert module_names(model) == module_names(base)  # nothing added, nothing lost


def test_replace_module_reaches_sequential_indices():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    old = replace_module(model, "1.0", nn.Tanh())
    assert isinstance(old, nn.ReLU) and isinstance(model[1][0], nn.Tanh)


def test_replace_module_keeps_the_output_when_the_new_module_wraps_the_old(base, images):
    model = copy.deepcopy(base)
    conv = replace_module(model, "layer4.1.conv2", nn.Identity())
    replace_module(model, "layer4.1.conv2", nn.Sequential(nn.Dropout2d(0.5), conv))
    model.eval()
    assert torch.equal(model(images), base(images))


@pytest.mark.parametrize("name, hint", [
    ("layer4.1.conv3", r"layer4\.1 has the children \['conv1', 'bn1', 'relu', 'conv2', 'bn2'\]"),
    ("layer9.0.conv1", r"'layer9\.0' is not a submodule either"),
    ("fc.weight", r"fc has the children \[\]"),
])
def test_unknown_names_get_a_key_error_naming_them(base, name, hint):
    model = copy.deepcopy(base)
    with pytest.raises(KeyError, match=hint) as error:
        replace_module(model, name, nn.Identity())
    assert repr(name) in str(error.value)
    assert module_names(model) == module_names(base)  # unchanged


def test_unknown_name_lists_close_names(base):
    with pytest.raises(KeyError, match=r"close names: \[.*'layer4\.1\.conv2'"):
        get_module(base, "layer4.1.conv3")


def test_replace_module_refuses_a_non_module(base):
    with pytest.raises(TypeError, match="nn.Module, got Tensor"):
        replace_module(copy.deepcopy(base), "fc", torch.zeros(3))


def test_replace_modules_of_type_replaces_every_one_and_only_those():
    model = resnet18(weights=None)
    relus = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    names = replace_modules_of_type(model, nn.ReLU, lambda old: nn.SiLU())
    assert names == relus and len(names) == 9
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 9
    assert all("." not in key for key in model._modules)


def test_replace_modules_of_type_replaces_a_shared_module_under_every_name_with_one_new_one():
    shared = nn.ReLU()
    model = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    made = []
    names = replace_modules_of_type(model, nn.ReLU, lambda old: made.append(old) or nn.SiLU())
    assert names == ["1", "3"] and made == [shared]  # one call for the one module
    assert isinstance(model[1], nn.SiLU) and model[1] is model[3]  # still shared


def test_replace_modules_of_type_refuses_nested_matches_before_changing_anything():
    model = resnet18(weights=None)
    before = module_names(model)
    with pytest.raises(ValueError, match=r"'layer2\.0\.downsample' is inside 'layer2', and both are Sequential"):
        replace_modules_of_type(model, nn.Sequential, lambda old: nn.Identity())
    assert module_names(model) == before and isinstance(model.layer2, nn.Sequential)


def test_replace_modules_of_type_builds_every_replacement_before_changing_the_model():
    model = resnet18(weights=None)
    calls = []

    def fails_on_the_third(old):
        calls.append(old)
        if len(calls) == 3:
            raise RuntimeError("make_new failed")
        return nn.SiLU()

    with pytest.raises(RuntimeError, match="make_new failed"):
        replace_modules_of_type(model, nn.ReLU, fails_on_the_third)
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    with pytest.raises(TypeError, match="make_new must return an nn.Module, got str"):
        replace_modules_of_type(model, nn.ReLU, lambda old: "silu")
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())


def test_setattr_with_dotted_names_inside_the_loop_fails_and_damages_the_model():
    """The pitfall the page shows: nn.Module.__setattr__ does not split dotted names."""
    model = resnet18(weights=None)
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        for name, module in model.named_modules():
            if isinstance(module, nn.ReLU):
                setattr(model, name, nn.SiLU())
    assert "layer1.0.relu" in model._modules and isinstance(model.layer1[0].relu, nn.ReLU)


def test_classifier_head_has_named_layers_and_the_right_sizes():
    head = classifier_head(512, 10, hidden=32)
    assert list(head._modules) == ["fc1", "relu", "dropout", "fc2"]
    assert head(torch.randn(2, 512)).shape == (2, 10)
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        classifier_head(512, 0)


def test_assigning_a_head_keeps_the_attribute_name():
    """The tutorial's `net.fc = classifier` does not rename the layer to `classifier`."""
    model = resnet18(weights=None)
    classifier = classifier_head(512, 10)
    model.fc = classifier
    assert list(model._modules)[-1] == "fc" and "fc.fc1.weight" in model.state_dict()
    with pytest.raises(AttributeError, match="'ResNet' object has no attribute 'classifier'"):
        model.classifier


def test_freeze_except_trains_only_the_head_and_training_leaves_the_backbone(images):
    model = resnet18(weights=None)
    replace_module(model, "fc", classifier_head(512, 10, hidden=16))
    names = freeze_except(model, "fc")
    assert names == ["fc.fc1.weight", "fc.fc1.bias", "fc.fc2.weight", "fc.fc2.bias"]
    assert trainable_parameter_names(model) == names
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.eval()
    model.fc.train()
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), torch.tensor([1, 2, 3])).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(names)  # the head moved, nothing else, buffers included


def test_freeze_except_refuses_an_unknown_submodule_before_freezing():
    model = resnet18(weights=None)
    with pytest.raises(KeyError, match=r"no submodule 'fc2'.*close names: \['fc'\]"):
        freeze_except(model, "fc2")
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_except_refuses_the_empty_name_instead_of_freezing_everything():
    model = resnet18(weights=None)
    with pytest.raises(ValueError, match="trainable must name a submodule"):
        freeze_except(model, "")
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_except_keeps_a_tied_head_trainable_under_both_names():
    model = TiedEmbeddingNet()
    assert freeze_except(model, "out") == ["embed.weight", "out.weight"]
    assert model.out.weight.requires_grad
    tokens = torch.tensor([[1, 2, 3]])
    nn.functional.cross_entropy(model(tokens)[0], tokens[0]).backward()
    assert model.out.weight.grad is not None


def test_optimizer_built_before_the_swap_does_not_train_the_new_head(images):
    model = resnet18(weights=None, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.fc = nn.Linear(512, 10)
    weight = model.fc.weight.clone()
    nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2])).backward()
    optimizer.step()
    assert model.fc.weight.grad.abs().sum() > 0
    assert torch.equal(model.fc.weight, weight)


def test_expand_input_channels_keeps_rgb_weights_and_outputs(base, images):
    conv = base.conv1
    wide = expand_input_channels(conv, 4)
    assert wide.weight.shape == (64, 4, 7, 7)
    assert torch.equal(wide.weight[:, :3], conv.weight)
    assert torch.count_nonzero(wide.weight[:, 3]) == 0
    assert (wide.stride, wide.padding, wide.kernel_size) == (conv.stride, conv.padding, conv.kernel_size)
    model = copy.deepcopy(base)
    replace_module(model, "conv1", wide)
    four = torch.cat([images, torch.zeros(3, 1, 32, 32)], dim=1)
    assert torch.equal(model(four), base(images))


def test_expanded_conv_matches_on_the_old_channels_whatever_the_new_weights():
    """Independent of the zero init: with the extra channel at zero, any new weights give the same output."""
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    wide = expand_input_channels(conv, 5)
    with torch.no_grad():
        wide.weight[:, 3:].normal_()
    x = torch.randn(2, 3, 9, 9)
    padded = torch.cat([x, torch.zeros(2, 2, 9, 9)], dim=1)
    assert torch.allclose(wide(padded), conv(x), atol=1e-6)
    assert torch.equal(wide.bias, conv.bias)
    assert not torch.allclose(wide(torch.cat([x, torch.ones(2, 2, 9, 9)], dim=1)), conv(x), atol=1e-3)


def test_expand_input_channels_refuses_bad_input():
    with pytest.raises(TypeError, match="nn.Conv2d, got Linear"):
        expand_input_channels(nn.Linear(3, 3), 4)
    with pytest.raises(ValueError, match="more than the 3 channels.*got 3"):
        expand_input_channels(nn.Conv2d(3, 8, 3), 3)
    with pytest.raises(ValueError, match="groups=3"):
        expand_input_channels(nn.Conv2d(3, 6, 3, groups=3), 4)


def test_extra_input_net_starts_as_the_base_model(base, images):
    net = ExtraInputNet(copy.deepcopy(base), extra_features=2).eval()
    for extra in (torch.zeros(3, 2), torch.randn(3, 2)):
        assert torch.allclose(net(images, extra), base(images), atol=1e-5)
    assert net.fc.weight.shape == (10, 514)
    assert torch.equal(net.fc.weight[:, :512], base.fc.weight)


def test_extra_input_net_uses_the_extra_input_once_trained(base, images):
    net = ExtraInputNet(copy.deepcopy(base), extra_features=1).eval()
    with torch.no_grad():
        net.fc.weight[:, 512] = 1.0
    scalar = torch.tensor([0.0, 1.0, 2.0])  # one scalar per sample, shape (N,)
    difference = net(images, scalar) - base(images)
    assert torch.allclose(difference, scalar.unsqueeze(1).expand(3, 10), atol=1e-5)


def test_extra_input_net_checks_the_extra_shape_and_the_head(base, images):
    net = ExtraInputNet(copy.deepcopy(base), extra_features=2)
    with pytest.raises(ValueError, match=r"\(batch, 2\) = \(3, 2\), got \(3, 5\)"):
        net(images, torch.zeros(3, 5))
    with pytest.raises(TypeError, match="'avgpool' must be an nn.Linear"):
        ExtraInputNet(copy.deepcopy(base), 1, head="avgpool")
    with pytest.raises(ValueError, match="at least 1"):
        ExtraInputNet(copy.deepcopy(base), 0)


@pytest.mark.parametrize("wrapper", [ExtraOutputNet, lambda model, head: ExtraInputNet(model, 1, head)],
                         ids=["ExtraOutputNet", "ExtraInputNet"])
def test_wrappers_name_an_unknown_head_with_the_close_names(base, wrapper):
    with pytest.raises(KeyError, match=r"no submodule 'fc1'.*close names: \['fc'\]"):
        wrapper(copy.deepcopy(base), head="fc1")


@pytest.mark.parametrize("model, head", [
    (lambda: resnet18(weights=None, num_classes=10), "fc"),
    (lambda: MobileNetV1(num_classes=10), "classifier"),
    (lambda: MobileNetV2(num_classes=10), "classifier.1"),
], ids=["resnet18", "MobileNetV1", "MobileNetV2"])
def test_wrappers_default_to_the_last_linear_layer(model, head):
    model = model().eval()
    assert last_linear_name(model) == head
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        logits, features = ExtraOutputNet(model)(x)
        assert torch.equal(logits, expected)
        assert features.shape == (2, model.get_submodule(head).in_features)
        with_extra = ExtraInputNet(copy.deepcopy(model), 1).eval()
        assert torch.allclose(with_extra(x, torch.randn(2)), expected, atol=1e-6)


def test_wrappers_without_a_linear_layer_ask_for_the_head():
    with pytest.raises(ValueError, match="Sequential has no nn.Linear; pass head="):
        ExtraOutputNet(nn.Sequential(nn.Conv2d(3, 2, 1)))


def test_extra_output_net_returns_the_base_logits_and_the_penultimate_features(base, images):
    captured = {}

    def keep_input(module, args, output):  # returns None, so the output is unchanged
        captured["x"] = args[0]

    handle = base.fc.register_forward_hook(keep_input)
    try:
        expected = base(images)
    finally:
        handle.remove()
    logits, features = ExtraOutputNet(copy.deepcopy(base)).eval()(images)
    assert torch.equal(logits, expected)
    assert torch.equal(features, captured["x"]) and features.shape == (3, 512)


def test_extra_output_net_returns_what_the_model_returns_when_forward_goes_on_after_the_head():
    class LogSoftmaxNet(nn.Module):  # something after the head
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return torch.log_softmax(self.fc(torch.relu(self.body(x))), dim=1) * 2

    model, x = LogSoftmaxNet(), torch.randn(5, 4)
    output, features = ExtraOutputNet(model)(x)
    assert torch.equal(output, model(x))
    assert torch.equal(features, torch.relu(model.body(x)))


def test_extra_output_net_refuses_a_head_that_runs_twice():
    class TwiceNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(RuntimeError, match="'fc' ran 2 times in one forward pass"):
        ExtraOutputNet(TwiceNet())(torch.randn(2, 3))


def test_extra_output_net_keeps_the_model_and_its_state_dict_keys(base, images):
    model = copy.deepcopy(base)
    wrapped = ExtraOutputNet(model)
    assert list(wrapped.state_dict()) == ["model." + key for key in base.state_dict()]
    assert torch.equal(model(images), base(images))  # the model is left as it was
    assert not model.fc._forward_pre_hooks  # the hook is removed after each call
    wrapped(images)
    assert not model.fc._forward_pre_hooks


def test_the_tutorials_extra_output_model_never_uses_its_10_class_layer(images):
    wrong = ExtraOutputNetWithUnusedLayer(resnet18(weights=None)).eval()
    probabilities, x1000 = wrong(images, torch.zeros(3))
    assert probabilities.shape == (3, 1000) and x1000.shape == (3, 1000)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3))
    assert torch.equal(wrong(images, torch.ones(3))[0], probabilities)  # extra changes nothing
    probabilities.log().mean().backward()
    assert wrong.fc1.weight.grad is None and wrong.net.fc.weight.grad is not None


def test_forgetful_wrapper_returns_features_as_logits_and_loses_the_classifier(base, images):
    wrong = ExtraOutputNetThatDropsHead(copy.deepcopy(base)).eval()
    logits, features = wrong(images)
    assert logits.shape == (3, 512) and torch.equal(logits, features)
    nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3]))  # no error: a silent bug
    assert not any("fc" in key for key in wrong.state_dict())


def test_extra_input_net_takes_the_model_over(base, images):
    alias = copy.deepcopy(base)
    ExtraInputNet(alias, 1)
    assert alias(images).shape == (3, 512)


def test_double_softmax_loss_cannot_reach_its_floor_and_shrinks_gradients():
    import math

    model = classifier_ending_in_softmax(4, 10)
    assert isinstance(model[-1], nn.Softmax)
    logits = torch.full((1, 10), 0.0)
    logits[0, 3] = 30.0
    target = torch.tensor([3])
    assert nn.functional.cross_entropy(logits, target) < 1e-6
    twice = nn.functional.cross_entropy(torch.softmax(logits, dim=1), target)
    assert twice == pytest.approx(math.log(1 + 9 / math.e), rel=1e-5)

    wrong = torch.zeros(1, 10, requires_grad=True)
    nn.functional.cross_entropy(torch.softmax(wrong * 1 + torch.eye(10)[5] * 5, 1), target).backward()
    double_grad = wrong.grad[0, 5].item()
    wrong.grad = None
    nn.functional.cross_entropy(wrong + torch.eye(10)[5] * 5, target).backward()
    assert wrong.grad[0, 5].item() == pytest.approx(math.exp(5) / (math.exp(5) + 9))
    assert abs(double_grad) < wrong.grad[0, 5].item() / 5


def test_surgery_works_on_the_device(device, images):
    model = resnet18(weights=None, num_classes=10).eval().to(device)
    x = images.to(device)
    reference = model(x)
    logits, _ = ExtraOutputNet(copy.deepcopy(model)).eval()(x)
    assert torch.equal(logits, reference)
    wide = expand_input_channels(model.conv1, 4)
    assert wide.weight.device.type == device.type
    replace_module(model, "conv1", wide)
    out = model(torch.cat([x, torch.zeros(3, 1, 32, 32, device=device)], dim=1))
    assert torch.allclose(out, reference, atol=1e-5)
    net = ExtraInputNet(copy.deepcopy(model), 1).eval()
    assert net.fc.weight.device.type == device.type
    assert net(torch.cat([x, x[:, :1]], dim=1), torch.ones(3, device=device)).shape == (3, 10)


def test_pretrained_true_stands_for_the_v1_weights_not_the_default(monkeypatch):
    """What the page says `pretrained=True` means, checked without a download."""
    import warnings

    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models._api import WeightsEnum

    class Asked(Exception):
        pass

    def refuse_download(self, *args, **kwargs):
        raise Asked(self)

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse_download)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(Asked) as asked:
            resnet50(pretrained=True)
    assert asked.value.args[0] is ResNet50_Weights.IMAGENET1K_V1
    assert ResNet50_Weights.DEFAULT is ResNet50_Weights.IMAGENET1K_V2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resnet18(pretrained=False)
    assert any(w.category is UserWarning and "'pretrained' is deprecated since 0.13" in str(w.message)
               for w in caught)


def test_weights_and_another_num_classes_are_refused_before_any_download(monkeypatch):
    """The page's failing cell: torchvision checks num_classes before it fetches the weights."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models._api import WeightsEnum

    def refuse_download(self, *args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse_download)
    for weights in (ResNet18_Weights.DEFAULT, "DEFAULT"):
        with pytest.raises(ValueError, match="'num_classes' expected value 1000 but got 10"):
            resnet18(weights=weights, num_classes=10)


def test_load_the_weights_then_replace_the_head_keeps_the_backbone():
    downloaded = resnet18(weights=None).state_dict()
    model = resnet18(weights=None)
    model.load_state_dict(downloaded)
    model.fc = nn.Linear(model.fc.in_features, 10)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in downloaded.items()
               if not k.startswith("fc."))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_new_head_needs_the_models_dtype_and_device(device, images):
    model = resnet18(weights=None).double().eval().to(device)
    x = images.double().to(device)
    plain = copy.deepcopy(model)
    replace_module(plain, "fc", classifier_head(plain.fc.in_features, 10))  # float32, on the CPU
    with pytest.raises(RuntimeError, match="dtype|device|same"):
        plain(x)
    head = classifier_head(model.fc.in_features, 10).to(model.fc.weight)
    assert head.fc1.weight.dtype == torch.float64 and head.fc1.weight.device == model.fc.weight.device
    replace_module(model, "fc", head.eval())
    assert model(x).shape == (3, 10)


def test_model_train_each_epoch_moves_frozen_batch_norm_and_train_only_does_not(images):
    model = resnet18(weights=None, num_classes=10)
    freeze_except(model, "fc")
    model.train()  # what an epoch loop starts with
    before = model.bn1.running_mean.clone()
    with torch.no_grad():
        model(images)
    assert not torch.equal(model.bn1.running_mean, before)
    assert train_only(model, "fc") is model
    assert model.fc.training and not model.bn1.training and not model.layer4[1].bn2.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(images)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(KeyError, match="close names"):
        train_only(model, "fc2")


def test_extra_output_net_keeps_only_the_heads_name_and_runs_the_whole_model(base, images):
    wrapper = ExtraOutputNet(copy.deepcopy(base))
    assert wrapper.head == "fc" and isinstance(wrapper.model.fc, nn.Linear)
    assert torch.equal(wrapper(images)[0], base(images))


def test_the_tutorials_extra_input_model_joins_the_scalar_to_the_logits_not_the_features(images):
    model = ExtraInputNetOnLogits(resnet18(weights=None)).eval()
    seen = []
    model.fc_add.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    probabilities = model(images, torch.ones(3))
    assert seen[0].shape == (3, 1001) and torch.equal(seen[0][:, -1], torch.ones(3))
    assert (seen[0][:, :1000] >= 0).all()  # after the ReLU
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3))
    fixed = ExtraInputNet(resnet18(weights=None), extra_features=1)
    assert fixed.fc.in_features == 512 + 1


def test_a_body_sliced_from_children_loses_what_forward_does_in_code():
    from torchvision.models import mobilenet_v2

    x = torch.randn(2, 3, 64, 64)
    resnet, mobile = resnet18(weights=None).eval(), mobilenet_v2(weights=None).eval()
    with torch.no_grad():
        assert nn.Sequential(*list(resnet.children())[:-1])(x).shape == (2, 512, 1, 1)
        assert nn.Sequential(*list(mobile.children())[:-1])(x).shape == (2, 1280, 2, 2)
        resnet.fc, mobile.classifier = nn.Identity(), nn.Identity()
        assert resnet(x).shape == (2, 512) and mobile(x).shape == (2, 1280)


def test_calling_forward_directly_skips_hooks_and_extra_output_net_says_so():
    calls = []
    layer = nn.Linear(4, 2)
    layer.register_forward_hook(lambda module, args, output: calls.append(module))
    layer(torch.randn(1, 4))
    layer.forward(torch.randn(1, 4))
    assert len(calls) == 1

    class CallsForwardDirectly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc.forward(x)

    with pytest.raises(RuntimeError, match="'fc' ran 0 times"):
        ExtraOutputNet(CallsForwardDirectly())(torch.randn(1, 4))
