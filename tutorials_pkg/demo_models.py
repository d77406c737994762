"""Shared page code: small models that several pages and tests use."""

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

__all__ = ["TiedEmbeddingNet", "tiny_resnet"]


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
