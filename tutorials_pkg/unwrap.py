"""What a model or a value wraps: the model inside ``DataParallel`` / DDP and
``torch.compile``, and the tensors inside nested tuples, lists and dicts.

One home for what the save/load, summary, intermediate and grad_fn chapters all need.
The walk over nested values is torch's own (``torch.utils._pytree``, which
``torch.export`` and ``torch.compile`` use): it knows tuples, lists, dicts,
named tuples and ``OrderedDict``; anything else is a leaf.
"""

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["map_tensors", "tensors_in", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel`` / DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def tensors_in(value) -> list[torch.Tensor]:
    """The tensors in ``value`` (a tensor, or tuples, lists and dicts holding some), in order."""
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def map_tensors(fn, value):
    """``value`` with ``fn`` applied to every tensor in it; containers and other leaves kept."""
    return pytree.tree_map_only(torch.Tensor, fn, value)
