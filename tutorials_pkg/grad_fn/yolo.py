"""A small YOLO-style detector: the kind of network the pruning page prunes.

The parts of YOLOv5/YOLOv8, small: ``Conv`` (convolution, BatchNorm, SiLU),
``C2f`` (the channels split in two with ``chunk``, bottlenecks on one half,
every step concatenated), ``SPPF`` (a convolution, three max-pools, their
outputs concatenated), a neck over two scales (upsample and concatenate, then
down again and concatenate) and a detection head: per scale, 4 box values and
one score per class at each cell. Random weights only (``weights=None``).
"""

import torch
from torch import nn

__all__ = ["C2f", "Bottleneck", "Conv", "Detect", "SPPF", "TinyYOLO", "tiny_yolo"]


class Conv(nn.Module):
    """Convolution, BatchNorm, SiLU: YOLO's basic unit."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ``Conv``; with ``shortcut``, the input is added back."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Split ``cv1``'s channels in two; bottlenecks on the second half; concatenate every step."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))
        self.cv2 = Conv((2 + n) * self.c, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three 5x5 max-pools in a row, all four maps concatenated."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 5):
        super().__init__()
        self.cv1 = Conv(c_in, c_in // 2)
        self.cv2 = Conv(c_in // 2 * 4, c_out)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Per scale: a 3x3 ``Conv``, then a 1x1 convolution to 4 box values and the class scores."""

    def __init__(self, num_classes: int, channels: tuple[int, ...]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(Conv(c, c, 3), nn.Conv2d(c, 4 + num_classes, 1))
                                   for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(x) for head, x in zip(self.heads, features)]


class TinyYOLO(nn.Module):
    """Backbone to strides 8 (P3) and 16 (P4, with SPPF), a two-scale neck, a detection head."""

    def __init__(self, num_classes: int = 80, width: int = 16):
        super().__init__()
        w = width
        self.stem = Conv(3, w, 3, 2)
        self.stage1 = nn.Sequential(Conv(w, 2 * w, 3, 2), C2f(2 * w, 2 * w))
        self.stage2 = nn.Sequential(Conv(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w, n=2))
        self.stage3 = nn.Sequential(Conv(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w), SPPF(8 * w, 8 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down = C2f(8 * w + 4 * w, 4 * w, shortcut=False)
        self.down = Conv(4 * w, 4 * w, 3, 2)
        self.bottom_up = C2f(4 * w + 8 * w, 8 * w, shortcut=False)
        self.detect = Detect(num_classes, (4 * w, 8 * w))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        n3 = self.top_down(torch.cat([self.up(p4), p3], 1))
        n4 = self.bottom_up(torch.cat([self.down(n3), p4], 1))
        return self.detect([n3, n4])


def tiny_yolo(*, weights=None, num_classes: int = 80, width: int = 16) -> TinyYOLO:
    """A ``TinyYOLO`` with random weights; there are no trained ones (``weights`` must be None)."""
    if weights is not None:
        raise ValueError(f"tiny_yolo has no trained weights; weights must be None, got {weights!r}")
    return TinyYOLO(num_classes, width)
