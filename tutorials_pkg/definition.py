"""Chapter: three ways to define a model.

``nn.Sequential`` for a straight chain, ``nn.ModuleList`` for repeated blocks
that your own ``forward`` walks, ``nn.ModuleDict`` for blocks chosen by name;
buffers for tensors that are saved but not trained; and what ``nn.Sequential``
does inside, in a few lines.
"""

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["LayerListWithoutSuperInit", "MLPWithExtraInput", "MLPWithoutSuperInit", "MultiHeadNet",
           "MySequential", "ResidualMLP", "Standardize", "UnregisteredDictMultiHeadNet",
           "UnregisteredListMLP", "count_parameters", "mlp_named", "mlp_sequential", "module_key"]


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


class MLPWithExtraInput(nn.Module):
    """A body, an extra input joined to its features, then a head: a ``forward`` of our own."""

    def __init__(self, in_features: int = 64, extra_features: int = 1, hidden: int = 32,
                 out_features: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden + extra_features, out_features)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.body(x), extra], dim=1))


class Standardize(nn.Module):
    """``(x - mean) / std``, with ``mean`` and ``std`` kept as buffers."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone())  # persistent: saved in the state_dict
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MySequential(nn.Module):
    """What ``nn.Sequential`` does: register each module in order, then chain them."""

    def __init__(self, *args: nn.Module):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):  # named layers
            for name, module in args[0].items():
                self.add_module(name, module)
        else:  # layers named by position: "0", "1", ...
            for index, module in enumerate(args):
                self.add_module(str(index), module)
        # add_module stores each in self._modules, a plain dict (insertion-ordered)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._modules.values():
            x = module(x)
        return x


def module_key(name: str) -> str:
    """A ``ModuleDict`` key for a dotted layer name; distinct names give distinct keys."""
    if not name or "" in name.split("."):
        raise ValueError(f"{name!r} is not a layer name; expected non-empty parts joined "
                         "by dots, such as 'fc1' or 'layer1.0.conv1'")
    # Dots become slashes; a % or / already in the name is escaped first.
    key = name.replace("%", "%25").replace("/", "%2F").replace(".", "/")
    if hasattr(nn.ModuleDict(), key):  # "keys", "type", "training", ...
        key += "/"  # no layer name ends in a dot, so no other name gives this key
    return key


def count_parameters(model: nn.Module) -> int:
    """Number of parameters PyTorch knows about (the ones it trains, saves and moves).

    Used by: definition, blocks, and the tests.
    """
    return sum(p.numel() for p in model.parameters())


# --- Wrong: what the page shows failing --------------------------------------------------

class MLPWithoutSuperInit(nn.Module):
    """Wrong: assigns a layer without calling ``super().__init__()`` first."""

    def __init__(self, in_features: int = 64, out_features: int = 10):
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class LayerListWithoutSuperInit(nn.ModuleList):
    """Wrong: a ``ModuleList`` subclass whose ``__init__`` forgets ``super().__init__()`` too."""

    def __init__(self, layers: list[nn.Module]):
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class UnregisteredListMLP(nn.Module):
    """Wrong: layers kept in a plain Python list are not registered; use ``nn.ModuleList``."""

    def __init__(self, features: int = 32, depth: int = 2):
        super().__init__()
        self.layers = [nn.Linear(features, features) for _ in range(depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class UnregisteredDictMultiHeadNet(nn.Module):
    """Wrong: heads kept in a plain Python dict are not registered; use ``nn.ModuleDict``."""

    def __init__(self, in_features: int = 64, hidden: int = 32,
                 heads: tuple[tuple[str, int], ...] = (("digit", 10), ("parity", 2))):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = {name: nn.Linear(hidden, size) for name, size in heads}

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        return self.heads[head](self.body(x))
