"""Shared page code: small models that several pages and tests use."""

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, resnet18

__all__ = ["RegistersUnusedBaseModel", "ResNet18Stem", "ResNet18StemKeepingBaseModel", "StemAndHead",
           "TiedEmbeddingNet", "tiny_resnet"]


def tiny_resnet(num_classes: int = 10) -> nn.Sequential:
    """A small residual net from torchvision's ``BasicBlock``. Used by: summary, grad_fn."""
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        BasicBlock(8, 8),
        BasicBlock(8, 16, stride=2, downsample=downsample),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


class TiedEmbeddingNet(nn.Module):
    """Input embedding and output layer share one weight matrix (as in many language models).

    Used by: save_load, and the summary tests.
    """

    def __init__(self, vocab_size: int = 100, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, vocab_size, bias=False)
        self.out.weight = self.embed.weight  # one Parameter under two names

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.embed(tokens))


class ResNet18Stem(nn.Module):
    """The first three layers of a resnet18 (conv1, bn1, relu), and nothing else registered.

    Used by: summary.
    """

    def __init__(self):
        super().__init__()
        base_model = resnet18(weights=None)  # a local: its other layers are not kept
        self.layer0 = nn.Sequential(*list(base_model.children())[:3])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer0(x)


class StemAndHead(nn.Module):
    """The first layers of a base model, then a new head: the base model is a local.
    Used by: distributed."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        base_model = tiny_resnet()
        self.layer0 = nn.Sequential(*list(base_model.children())[:3])  # conv, bn, relu
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer0(x).mean((2, 3)))


# --- Wrong: models that keep what they do not use ----------------------------------------

class ResNet18StemKeepingBaseModel(nn.Module):
    """Wrong: keeps the whole resnet18 as ``self.base_model`` although forward uses three layers.

    As in a widely read Q&A on torchsummary's duplicate rows. Used by: summary.
    """

    def __init__(self):
        super().__init__()
        self.base_model = resnet18(weights=None)  # registered: all of it, used or not
        self.base_layers = list(self.base_model.children())  # a plain list: not registered
        self.layer0 = nn.Sequential(*self.base_layers[:3])  # the same conv1, bn1, relu again

    def forward(self, x: Tensor) -> Tensor:
        return self.layer0(x)


class RegistersUnusedBaseModel(nn.Module):
    """Wrong: keeps the whole base model as an attribute, though forward uses only its first
    layers. Used by: distributed (DDP and unused parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.base_model = tiny_resnet()
        self.layer0 = nn.Sequential(*list(self.base_model.children())[:3])  # conv, bn, relu
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer0(x).mean((2, 3)))
