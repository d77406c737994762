"""MobileNet v1 and v2 from small blocks.

``MobileNetV1`` follows Table 1 of Howard et al. (2017), "MobileNets:
Efficient Convolutional Neural Networks for Mobile Vision Applications", and
is built by a loop over a config table. ``MobileNetV2`` follows Sandler et al.
(2018) with the module names of ``torchvision.models.mobilenet_v2``, so
the two load each other's ``state_dict``.
"""

import itertools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "MOBILENET_V1_CONFIG", "MOBILENET_V2_CONFIG", "BasicConv2d", "DepthwiseSeparableConv",
    "InvertedResidual", "MobileNetV1", "MobileNetV1Flat", "MobileNetV1WithFixedPool",
    "MobileNetV1WithFixedPoolAndLastStride1", "MobileNetV2", "assert_same_network",
    "check_training_batch", "count_macs", "layer_outputs",
]

# MobileNet v1 (Howard et al. 2017, Table 1): (out_channels, stride) of each
# depthwise separable layer after the 3x3 stride-2 stem with 32 channels.
MOBILENET_V1_CONFIG = [
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
]

# MobileNet v2 (Sandler et al. 2018, Table 2): expand ratio t, out channels c,
# repeats n, stride s of the first repeat.
MOBILENET_V2_CONFIG = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class BasicConv2d(nn.Sequential):
    """Convolution (no bias), batch norm, activation: the unit of every MobileNet layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1,
                 activation_layer: type[nn.Module] = nn.ReLU):
        padding = (kernel_size - 1) // 2  # "same" size at stride 1, half at stride 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            activation_layer(inplace=True),
        )


class DepthwiseSeparableConv(nn.Sequential):
    """A 3x3 depthwise convolution (filters space) then a 1x1 pointwise one (mixes channels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(OrderedDict([
            ("depthwise", BasicConv2d(in_channels, in_channels, 3, stride, groups=in_channels)),
            ("pointwise", BasicConv2d(in_channels, out_channels, kernel_size=1)),
        ]))


def check_training_batch(x: torch.Tensor, training: bool) -> None:
    """Refuse, before any layer runs, an input that leaves batch norm one value per channel."""
    if training and x.dim() == 4 and x.size(0) == 1 and max(x.shape[2:]) <= 32:
        # five stride-2 layers take 32x32 or less to 1x1
        raise ValueError(f"in training mode a batch of 1 needs H or W of at least 33, got "
                         f"{x.size(2)}x{x.size(3)}; use a batch of 2 or more, or model.eval()")


class MobileNetV1(nn.Module):
    """MobileNet v1: a stem, then 13 layers built by a loop over ``MOBILENET_V1_CONFIG``."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0 (1.0 is the full network), got {width_mult}")
        in_channels = max(1, int(32 * width_mult))
        layers = [("stem", BasicConv2d(3, in_channels, 3, stride=2))]
        for index, (out_channels, stride) in enumerate(MOBILENET_V1_CONFIG, start=1):
            out_channels = max(1, int(out_channels * width_mult))
            block = DepthwiseSeparableConv(in_channels, out_channels, stride)
            layers.append((f"block{index}", block))
            in_channels = out_channels
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # 1x1 from any input size
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_training_batch(x, self.training)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MobileNetV1Flat(nn.Module):
    """The same MobileNet v1 written out layer by layer, without a config table."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.features = nn.Sequential(OrderedDict([
            ("stem", BasicConv2d(3, 32, 3, stride=2)),         # 224 -> 112
            ("block1", DepthwiseSeparableConv(32, 64, 1)),
            ("block2", DepthwiseSeparableConv(64, 128, 2)),    # -> 56
            ("block3", DepthwiseSeparableConv(128, 128, 1)),
            ("block4", DepthwiseSeparableConv(128, 256, 2)),   # -> 28
            ("block5", DepthwiseSeparableConv(256, 256, 1)),
            ("block6", DepthwiseSeparableConv(256, 512, 2)),   # -> 14
            ("block7", DepthwiseSeparableConv(512, 512, 1)),
            ("block8", DepthwiseSeparableConv(512, 512, 1)),
            ("block9", DepthwiseSeparableConv(512, 512, 1)),
            ("block10", DepthwiseSeparableConv(512, 512, 1)),
            ("block11", DepthwiseSeparableConv(512, 512, 1)),
            ("block12", DepthwiseSeparableConv(512, 1024, 2)), # -> 7
            ("block13", DepthwiseSeparableConv(1024, 1024, 1)),
        ]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_training_batch(x, self.training)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    """MobileNet v2 block: 1x1 expand, 3x3 depthwise, 1x1 project without activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = []
        if expand_ratio != 1:
            layers.append(BasicConv2d(in_channels, hidden, 1, activation_layer=nn.ReLU6))
        layers += [
            BasicConv2d(hidden, hidden, 3, stride, groups=hidden, activation_layer=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),  # linear bottleneck
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet v2 with the module names of ``torchvision.models.mobilenet_v2``.

    The initial weights are PyTorch's defaults (torchvision re-initialises them);
    load a ``state_dict`` for trained ones.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        in_channels, last_channels = 32, 1280
        layers = [BasicConv2d(3, in_channels, 3, stride=2, activation_layer=nn.ReLU6)]
        for expand_ratio, out_channels, repeats, stride in MOBILENET_V2_CONFIG:
            for index in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels,
                                               stride if index == 0 else 1, expand_ratio))
                in_channels = out_channels
        layers.append(BasicConv2d(in_channels, last_channels, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)  # positional names: features.0, features.1, ...
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_training_batch(x, self.training)
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(name, output)`` of every submodule that ``model(x)`` calls, in the order of the calls."""
    outputs = []
    handles = [module.register_forward_hook(
                   lambda module, args, output, name=name: outputs.append((name, output.clone())))
               for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            outputs.append(("(the model)", model(x)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def assert_same_network(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Raise an AssertionError at the first layer where ``a`` and ``b`` differ in structure or output.

    ``b`` gets ``a``'s weights; both are put in eval mode.
    """
    layers_a = [(name, type(m).__name__, m.extra_repr()) for name, m in a.named_modules()][1:]
    layers_b = [(name, type(m).__name__, m.extra_repr()) for name, m in b.named_modules()][1:]
    for layer_a, layer_b in itertools.zip_longest(layers_a, layers_b):
        assert layer_a == layer_b, f"different layers:\n  {layer_a}\n  {layer_b}"
    b.load_state_dict(a.state_dict(), strict=True)  # same names and shapes
    calls = itertools.zip_longest(layer_outputs(a.eval(), x), layer_outputs(b.eval(), x),
                                  fillvalue=(None, None))
    for (name_a, out_a), (name_b, out_b) in calls:  # every layer's output, not only the last
        assert name_a == name_b and torch.equal(out_a, out_b), (
            f"same layers and weights, different outputs: {name_a} and {name_b}")


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass (``FlopCounterMode`` counts 2 FLOPs for each).

    Pass a model in eval mode: in training mode the pass would also update
    BatchNorm's running statistics.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


# --- Wrong: what the page shows failing --------------------------------------------------

class MobileNetV1WithFixedPool(nn.Module):
    """Wrong: for 224x224 inputs, ``F.avg_pool2d(x, 2)`` meant to take 7x7 to 1x1, then
    ``Linear(1024, ...)``; 2x2 pooling halves 7x7 to 3x3, and the classifier fits neither."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            BasicConv2d(3, 32, 3, stride=2),
            DepthwiseSeparableConv(32, 64, 1),
            DepthwiseSeparableConv(64, 128, 2),
            DepthwiseSeparableConv(128, 128, 1),
            DepthwiseSeparableConv(128, 256, 2),
            DepthwiseSeparableConv(256, 256, 1),
            DepthwiseSeparableConv(256, 512, 2),
            DepthwiseSeparableConv(512, 512, 1),
            DepthwiseSeparableConv(512, 512, 1),
            DepthwiseSeparableConv(512, 512, 1),
            DepthwiseSeparableConv(512, 512, 1),
            DepthwiseSeparableConv(512, 512, 1),
            DepthwiseSeparableConv(512, 1024, 2),
            DepthwiseSeparableConv(1024, 1024, 2),
        )
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)       # input 224 x 224 x 3 -> "7 x 7 x 1024"
        x = F.avg_pool2d(x, 2)     # meant: -> 1 x 1 x 1024 (a 2x2 window: 7 x 7 -> 3 x 3)
        return self.fc(x.view(x.size(0), -1))


class MobileNetV1WithFixedPoolAndLastStride1(MobileNetV1WithFixedPool):
    """Wrong: the same model "refactored" into a loop whose config makes the last stride 1."""

    # a number is (channels, stride 1), a tuple is (channels, stride)
    config = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]

    def __init__(self, num_classes: int = 1000):
        super().__init__(num_classes)
        layers, in_channels = [BasicConv2d(3, 32, 3, stride=2)], 32
        for item in self.config:
            out_channels, stride = item if isinstance(item, tuple) else (item, 1)
            layers.append(DepthwiseSeparableConv(in_channels, out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
