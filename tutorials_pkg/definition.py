"""Chapter: three ways to define a model.

``nn.Sequential`` for a straight chain, ``nn.ModuleList`` for repeated blocks
that your own ``forward`` walks, ``nn.ModuleDict`` for blocks chosen by name;
and what ``nn.Sequential`` does inside, in a few lines.
"""

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["MultiHeadNet", "MySequential", "ResidualMLP", "UnregisteredListMLP",
           "count_parameters", "mlp_named", "mlp_sequential", "module_key"]


def mlp_sequential(in_features: int = 64, hidden: int = 32, out_features: int = 10) -> nn.Sequential:
    """A straight chain; the layers are named ``0``, ``1``, ``2`` by position."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    )


def mlp_named(in_features: int = 64, hidden: int = 32, out_features: int = 10) -> nn.Sequential:
    """The same chain with names of our choosing, passed as an ``OrderedDict``."""
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(in_features, hidden)),
        ("act", nn.ReLU()),
        ("fc2", nn.Linear(hidden, out_features)),
    ]))


class ResidualMLP(nn.Module):
    """Repeated blocks kept in an ``nn.ModuleList``, each with a skip connection."""

    def __init__(self, features: int = 32, depth: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(features, features) for _ in range(depth))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:  # a ModuleList is iterated, never called
            x = x + self.act(block(x))
        return x


class MultiHeadNet(nn.Module):
    """A shared body, and output heads chosen by name from an ``nn.ModuleDict``."""

    def __init__(self, in_features: int = 64, hidden: int = 32,
                 heads: tuple[tuple[str, int], ...] = (("digit", 10), ("parity", 2))):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, size) for name, size in heads})

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        if head not in self.heads:
            raise KeyError(f"unknown head {head!r}; choose one of {list(self.heads)}")
        return self.heads[head](self.body(x))


class MySequential(nn.Module):
    """What ``nn.Sequential`` does: register each module in order, then chain them."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        for index, module in enumerate(modules):
            # add_module stores it in self._modules (an ordered dict) under this name
            self.add_module(str(index), module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._modules.values():
            x = module(x)
        return x


def module_key(name: str) -> str:
    """Turn any layer name (``"layer1.0.conv1"``, ``"type"``) into a valid ``ModuleDict`` key.

    ``nn.ModuleDict`` refuses keys with a dot and keys that are already attributes
    of the dict (``keys``, ``type``, ``forward``, ...).
    """
    if not name:
        raise ValueError("a ModuleDict key cannot be empty; pass a layer name such as 'fc1'")
    key = name.replace(".", "_")
    while hasattr(nn.ModuleDict, key):
        key = key + "_"
    return key


def count_parameters(model: nn.Module) -> int:
    """Number of parameters PyTorch knows about (the ones it trains, saves and moves).

    Used by: definition, blocks, and the tests.
    """
    return sum(p.numel() for p in model.parameters())


# --- Wrong: what the page shows failing --------------------------------------------------

class UnregisteredListMLP(nn.Module):
    """Wrong: layers kept in a plain Python list are not registered.

    They have no parameters as far as PyTorch knows: an optimizer built from
    ``model.parameters()`` never trains them, ``state_dict`` does not save them
    and ``.to()`` does not move or convert them. Use ``nn.ModuleList``.
    """

    def __init__(self, features: int = 32, depth: int = 2):
        super().__init__()
        self.layers = [nn.Linear(features, features) for _ in range(depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
