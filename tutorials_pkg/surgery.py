"""Chapter: model surgery.

Change a built model instead of writing a new one: swap a layer by its dotted
name, give the first convolution more input channels, train only a new head,
and wrap a model so that it takes an extra input or returns an extra output.
Each change starts out computing what the model computed before.
"""

import difflib
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ExtraInputNet", "ExtraOutputNet", "ExtraOutputNetThatDropsHead", "classifier_ending_in_softmax",
    "classifier_head", "expand_input_channels", "freeze_except", "get_module", "module_names",
    "replace_module", "replace_modules_of_type", "trainable_parameter_names",
]


def module_names(model: nn.Module) -> list[str]:
    """Every dotted submodule name of ``model`` (a shared module under each of its names)."""
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, with an error that names the close and the valid names."""
    if name in module_names(model):
        return model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    close = difflib.get_close_matches(name, module_names(model), n=5, cutoff=0.6)
    try:
        children = list(model.get_submodule(parent_name)._modules)
        where = f"{parent_name or 'the model'} has the children {children}"
    except AttributeError:
        where = (f"{parent_name!r} is not a submodule either; "
                 f"the model has the children {list(model._modules)}")
    raise KeyError(f"{type(model).__name__} has no submodule {name!r}: {where}; "
                   f"close names: {close}")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule ``name`` (e.g. ``"layer1.0.conv1"``) is; return the old one.

    The parent is found with ``get_submodule``, so any dotted name that
    ``named_modules()`` prints works, ``Sequential`` indices included.
    """
    if not isinstance(new, nn.Module):
        raise TypeError(f"new must be an nn.Module, got {type(new).__name__}")
    old = get_module(model, name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)  # "" is the model itself
    setattr(parent, child, new)  # a registered name: this replaces, it does not add
    return old


def replace_modules_of_type(model: nn.Module, kind: type[nn.Module],
                            make_new: Callable[[nn.Module], nn.Module]) -> list[str]:
    """Replace every ``kind`` submodule with ``make_new(old)``; return the names replaced.

    The names are collected first and replaced afterwards, never while
    ``named_modules()`` is being iterated.
    """
    names = [name for name, module in model.named_modules() if name and isinstance(module, kind)]
    for name in names:
        model.set_submodule(name, make_new(model.get_submodule(name)), strict=True)
    return names


def classifier_head(in_features: int, num_classes: int, hidden: int = 256,
                    dropout: float = 0.2) -> nn.Sequential:
    """A small classifier with named layers, to put in place of a model's last layer."""
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(in_features, hidden)),
        ("relu", nn.ReLU(inplace=True)),
        ("dropout", nn.Dropout(dropout)),
        ("fc2", nn.Linear(hidden, num_classes)),
    ]))


def freeze_except(model: nn.Module, trainable: str) -> list[str]:
    """Stop gradients for every parameter outside submodule ``trainable``; return the trained names.

    ``requires_grad`` only stops the weights from training: BatchNorm layers in
    train mode still update their running statistics (call ``.eval()`` on them).
    """
    model.get_submodule(trainable)  # an unknown name fails here, before anything is frozen
    prefix = trainable + "."
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefix))
    return trainable_parameter_names(model)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an optimizer would change (``requires_grad=True``)."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def expand_input_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` that takes ``in_channels`` channels; the first ones keep their weights.

    The weights for the new channels start at zero, so the new layer computes
    exactly what ``conv`` did until training teaches it to use them.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"conv has groups={conv.groups}; only groups=1 can gain input channels")
    if in_channels <= conv.in_channels:
        raise ValueError(f"in_channels must be more than the {conv.in_channels} channels "
                         f"conv already takes, got {in_channels}")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :conv.in_channels] = conv.weight  # weight is (out, in, kH, kW)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class ExtraInputNet(nn.Module):
    """``model`` that also takes a vector per sample, joined to the features before its last layer.

    The last layer (``head``, an ``nn.Linear``) becomes a wider one that keeps
    the old weights and has zero weights for the extra input, so the logits
    start equal to the model's. ``model`` is taken over: its ``head`` becomes
    ``nn.Identity`` (pass ``copy.deepcopy(model)`` to keep the original).
    """

    def __init__(self, model: nn.Module, extra_features: int, head: str = "fc"):
        super().__init__()
        if extra_features < 1:
            raise ValueError(f"extra_features must be at least 1, got {extra_features}")
        last = model.get_submodule(head)
        if not isinstance(last, nn.Linear):
            raise TypeError(f"{head!r} must be an nn.Linear, got {type(last).__name__}")
        model.set_submodule(head, nn.Identity(), strict=True)  # the body now ends at the features
        self.body = model
        self.extra_features = extra_features
        self.fc = nn.Linear(last.in_features + extra_features, last.out_features,
                            bias=last.bias is not None,
                            device=last.weight.device, dtype=last.weight.dtype)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :last.in_features] = last.weight
            if last.bias is not None:
                self.fc.bias.copy_(last.bias)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        if extra.dim() == 1:  # one scalar per sample
            extra = extra.unsqueeze(1)
        if extra.shape != (x.shape[0], self.extra_features):
            raise ValueError(f"extra must have shape (batch, {self.extra_features}) = "
                             f"({x.shape[0]}, {self.extra_features}), got {tuple(extra.shape)}")
        features = self.body(x)
        return self.fc(torch.cat([features, extra.to(features.dtype)], dim=1))


class ExtraOutputNet(nn.Module):
    """``model`` that returns its logits and the features its last layer (``head``) sees.

    ``model`` is taken over: its ``head`` moves to ``self.head`` and becomes
    ``nn.Identity`` in the body (pass ``copy.deepcopy(model)`` to keep the original).
    """

    def __init__(self, model: nn.Module, head: str = "fc"):
        super().__init__()
        self.head = model.get_submodule(head)
        model.set_submodule(head, nn.Identity(), strict=True)  # the body now ends at the features
        self.body = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


# --- Wrong: what the page shows failing --------------------------------------------------

class ExtraOutputNetThatDropsHead(nn.Module):
    """Wrong: removes the classifier to reach the features, and never keeps it.

    Its "logits" are the features themselves (512 numbers for a ResNet-18, not
    one per class), and the trained classifier is gone from its ``state_dict``.
    Use ``ExtraOutputNet``, which keeps the classifier and applies it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        model.fc = nn.Identity()
        self.body = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, features


def classifier_ending_in_softmax(in_features: int, num_classes: int) -> nn.Sequential:
    """Wrong for training with ``CrossEntropyLoss``: the model ends in a softmax.

    ``CrossEntropyLoss`` applies ``log_softmax`` itself, so the softmax is
    applied twice. Return logits; apply ``torch.softmax`` outside the model
    when you need probabilities.
    """
    return nn.Sequential(nn.Linear(in_features, num_classes), nn.Softmax(dim=1))
