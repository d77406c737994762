"""Shared page code: scikit-learn's 8×8 handwritten digits, two small models for them, and
one training loop.

Real data that ships with a package (nothing is downloaded). Used by the pages
definition, surgery, save_load and intermediate.
"""

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["DigitsCNN", "accuracy", "digits_classifier", "load_digits_tensors",
           "split_train_test", "train_epoch"]


def load_digits_tensors(flatten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits as ``(images, labels)``, pixels in [0, 1].

    Images are ``(N, 1, 8, 8)``, or ``(N, 64)`` vectors with ``flatten=True``.
    Used by: definition, surgery, save_load, intermediate.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    return (images.flatten(1) if flatten else images), labels


def split_train_test(x: torch.Tensor, y: torch.Tensor, test_fraction: float = 0.25,
                     seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``, a random ``test_fraction`` held out. Used by: intermediate."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digits_classifier(hidden: int = 32, dropout: float = 0.1) -> nn.Sequential:
    """A small classifier for the digits as 64-number vectors (10 classes). Used by: save_load."""
    return nn.Sequential(OrderedDict(fc1=nn.Linear(64, hidden), relu=nn.ReLU(),
                                     dropout=nn.Dropout(dropout), fc2=nn.Linear(hidden, 10)))


class DigitsCNN(nn.Module):
    """A tiny CNN for 8×8 digit images; every layer a top-level child, used in order.

    Used by: intermediate.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # 8×8 -> 4×4
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # 4×4 -> 2×2
        self.fc = nn.Linear(16 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, generator: torch.Generator, batch_size: int = 64) -> float:
    """One pass over ``(x, y)`` in an order drawn from ``generator``; return the mean loss."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = order[start:start + batch_size]
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``. Used by: intermediate."""
    return (model(x).argmax(dim=1) == y).float().mean().item()
