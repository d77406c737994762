"""U-Net from four blocks: DoubleConv, Down, Up, OutConv.

The layout and channel counts follow the widely used implementation in
milesial/Pytorch-UNet (https://github.com/milesial/Pytorch-UNet), so the
parameter counts can be checked against it: 31,037,698 with transposed
convolutions, 17,263,042 with bilinear upsampling.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DoubleConv", "Down", "OutConv", "UNet", "UNetWithoutAlignment", "Up",
           "UpWithoutAlignment", "check_unet_input"]


class DoubleConv(nn.Module):
    """(3x3 convolution, batch norm, ReLU) twice; padding 1 keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
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
        dh, dw = skip.size(2) - x.size(2), skip.size(3) - x.size(3)  # odd sizes were rounded down
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])  # pad them back
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """A 1x1 convolution from features to one score per class and pixel."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@torch.fx.wrap  # torch.fx records one call here instead of tracing into the `if`s
def check_unet_input(x: torch.Tensor, n_channels: int) -> torch.Tensor:
    if x.dim() != 4 or x.size(1) != n_channels:
        raise ValueError(f"UNet expects (N, {n_channels}, H, W), got {tuple(x.shape)}")
    if min(x.shape[2:]) < 16:  # four 2x2 poolings take 16 pixels to 1
        raise ValueError(f"UNet needs H and W of at least 16, got {x.size(2)}x{x.size(3)}")
    return x  # returned and used, so that a traced graph keeps the call


class UNet(nn.Module):
    """Encoder (inc, down1-4), decoder (up1-4) with skip connections, 1x1 head."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False):
        super().__init__()
        if min(n_channels, n_classes) < 1:  # with 0, torch builds it and fails only in forward
            raise ValueError(f"n_channels and n_classes must be at least 1, got {n_channels}, "
                             f"{n_classes}")
        self.n_channels, self.n_classes, self.bilinear = n_channels, n_classes, bilinear
        factor = 2 if bilinear else 1  # bilinear upsampling cannot halve the channels
        self.inc = DoubleConv(n_channels, 64)
        self.down1 = Down(64, 128)
        self.down2 = Down(128, 256)
        self.down3 = Down(256, 512)
        self.down4 = Down(512, 1024 // factor)
        self.up1 = Up(1024, 512 // factor, bilinear)
        self.up2 = Up(512, 256 // factor, bilinear)
        self.up3 = Up(256, 128 // factor, bilinear)
        self.up4 = Up(128, 64, bilinear)
        self.outc = OutConv(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(check_unet_input(x, self.n_channels))
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        return self.outc(self.up4(x, x1))


# --- Wrong: what the page shows failing --------------------------------------------------

class UpWithoutAlignment(Up):
    """Wrong: pads into a new name, then concatenates the unpadded map.

    Works only while every size on the way down was even (H and W divisible by
    16); any other size fails in ``torch.cat``.
    """

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dh, dw = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        padded = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))  # x, not padded: the padding is lost


class UNetWithoutAlignment(UNet):
    """Wrong: a U-Net whose decoder blocks do not align sizes (the same layers and names)."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False):
        super().__init__(n_channels, n_classes, bilinear)
        for up in (self.up1, self.up2, self.up3, self.up4):
            up.__class__ = UpWithoutAlignment  # the same layers, the wrong forward

