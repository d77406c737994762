"""U-Net from four blocks: DoubleConv, Down, Up, OutConv.

The layout and channel counts follow the widely used implementation in
milesial/Pytorch-UNet (https://github.com/milesial/Pytorch-UNet), so the
parameter counts can be checked against it: 31,037,698 with transposed
convolutions, 17,263,042 with bilinear upsampling.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIN_UNET_SIZE", "DoubleConv", "Down", "OutConv", "UNet", "UNetWithoutAlignment", "Up",
           "UpWithoutAlignment"]

# Four 2x2 poolings: each spatial size must be at least 2 ** 4 to reach the bottom of the U.
MIN_UNET_SIZE = 16


class DoubleConv(nn.Module):
    """(3x3 convolution, batch norm, ReLU) twice; padding 1 keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """Halve H and W with 2x2 max pooling (rounding down), then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Double H and W, pad to the skip connection's size, concatenate, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # An odd size was rounded down on the way down: pad the difference back.
        diff_h = skip.size(2) - x.size(2)
        diff_w = skip.size(3) - x.size(3)
        x = F.pad(x, [diff_w // 2, diff_w - diff_w // 2, diff_h // 2, diff_h - diff_h // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """A 1x1 convolution from features to one score per class and pixel."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Encoder (inc, down1-4), decoder (up1-4) with skip connections, 1x1 head."""

    up_block = Up  # the decoder block; a subclass may swap it

    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False):
        super().__init__()
        if n_channels < 1 or n_classes < 1:
            raise ValueError(f"n_channels and n_classes must be at least 1, "
                             f"got n_channels={n_channels}, n_classes={n_classes}")
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        factor = 2 if bilinear else 1  # bilinear upsampling cannot halve the channels
        self.inc = DoubleConv(n_channels, 64)
        self.down1 = Down(64, 128)
        self.down2 = Down(128, 256)
        self.down3 = Down(256, 512)
        self.down4 = Down(512, 1024 // factor)
        self.up1 = self.up_block(1024, 512 // factor, bilinear)
        self.up2 = self.up_block(512, 256 // factor, bilinear)
        self.up3 = self.up_block(256, 128 // factor, bilinear)
        self.up4 = self.up_block(128, 64, bilinear)
        self.outc = OutConv(64, n_classes)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming what is wrong with ``x`` and what is needed."""
        if x.dim() != 4 or x.size(1) != self.n_channels:
            raise ValueError(f"UNet expects (N, {self.n_channels}, H, W), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        if min(h, w) < MIN_UNET_SIZE:
            raise ValueError(f"UNet needs H and W of at least {MIN_UNET_SIZE}, got {h}x{w}")
        if self.training and n * (h // MIN_UNET_SIZE) * (w // MIN_UNET_SIZE) == 1:
            # batch norm in training needs more than one value per channel at the 1x1 bottom
            raise ValueError(f"in training mode a batch of 1 needs H or W of at least 32, "
                             f"got {h}x{w}; use a batch of 2 or more, or model.eval()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


# --- Wrong: what the page shows failing --------------------------------------------------

class UpWithoutAlignment(Up):
    """Wrong: pads into a new name, then concatenates the unpadded map.

    Works only while every size on the way down was even (H and W divisible by
    16); any other size fails in ``torch.cat``.
    """

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        diff_h = skip.size(2) - x.size(2)
        diff_w = skip.size(3) - x.size(3)
        padded = F.pad(x, [diff_w // 2, diff_w - diff_w // 2, diff_h // 2, diff_h - diff_h // 2])
        return self.conv(torch.cat([skip, x], dim=1))  # x, not padded: the padding is lost


class UNetWithoutAlignment(UNet):
    """Wrong: a U-Net whose decoder blocks do not align sizes."""

    up_block = UpWithoutAlignment
