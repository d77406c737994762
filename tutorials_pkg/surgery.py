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
    "ExtraInputNet", "ExtraInputNetOnLogits", "ExtraOutputNet", "ExtraOutputNetThatDropsHead",
    "ExtraOutputNetWithUnusedLayer", "classifier_ending_in_softmax", "classifier_head",
    "expand_input_channels", "freeze_except", "get_module", "last_linear_name", "module_names",
    "replace_module", "replace_modules_of_type", "train_only", "trainable_parameter_names",
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
    """Put ``new`` where the submodule ``name`` (e.g. ``"layer1.0.conv1"``) is; return the old one."""
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

    A module registered under several names gets one new module under all of them.
    """
    olds = {name: module for name, module in model.named_modules(remove_duplicate=False)
            if name and isinstance(module, kind)}
    for outer in olds:
        inner = next((name for name in olds if name.startswith(outer + ".")), None)
        if inner:
            raise ValueError(f"{inner!r} is inside {outer!r}, and both are {kind.__name__}: "
                             "pass a kind that does not nest, or replace them by name")
    new = {}  # one new module per old one, all made before the model changes
    for old in olds.values():
        if id(old) not in new:
            new[id(old)] = make_new(old)
            if not isinstance(new[id(old)], nn.Module):
                raise TypeError(f"make_new must return an nn.Module, got {type(new[id(old)]).__name__}")
    for name, old in olds.items():
        model.set_submodule(name, new[id(old)], strict=True)
    return list(olds)


def classifier_head(in_features: int, num_classes: int, hidden: int = 256,
                    dropout: float = 0.2) -> nn.Sequential:
    """A small classifier with named layers, to put in place of a model's last layer."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(in_features, hidden)),
        ("relu", nn.ReLU(inplace=True)),
        ("dropout", nn.Dropout(dropout)),
        ("fc2", nn.Linear(hidden, num_classes)),
    ]))


def freeze_except(model: nn.Module, trainable: str) -> list[str]:
    """Stop gradients for every parameter outside submodule ``trainable``; return the trained names.

    A parameter that ``trainable`` shares with other layers (tied weights) trains
    everywhere it is used. BatchNorm layers in train mode still update their
    running statistics (call ``.eval()`` on them).
    """
    if not trainable:
        raise ValueError("trainable must name a submodule, such as 'fc'; "
                         "'' is the whole model, which would leave nothing frozen")
    keep = {id(p) for p in get_module(model, trainable).parameters()}  # the objects, not names
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return trainable_parameter_names(model)


def train_only(model: nn.Module, trainable: str) -> nn.Module:
    """``model.train()`` for a model trained in part: only submodule ``trainable`` trains.

    Call it where a training loop calls ``model.train()``: the frozen layers stay in
    evaluation mode, so BatchNorm keeps its running statistics and dropout stays off.
    """
    model.eval()
    get_module(model, trainable).train()
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an optimizer would change, a shared one under each of its names."""
    return [name for name, parameter in model.named_parameters(remove_duplicate=False)
            if parameter.requires_grad]


def expand_input_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` that takes ``in_channels`` channels; the new ones start with zero weights."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"conv has groups={conv.groups}; only groups=1 can gain input channels")
    if in_channels <= conv.in_channels:
        raise ValueError(f"in_channels must be more than the {conv.in_channels} channels "
                         f"conv already takes, got {in_channels}")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :conv.in_channels] = conv.weight  # weight is (out, in, kH, kW)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def last_linear_name(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` registered in ``model``: the classifier of torchvision's models."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear; pass head=, the name of "
                         "the layer that computes the logits")
    return names[-1]


class ExtraInputNet(nn.Module):
    """``model`` that also takes a vector per sample, joined to the features before its last layer.

    ``model`` is taken over: its ``head`` becomes ``nn.Identity`` (pass
    ``copy.deepcopy(model)`` to keep the original).
    """

    def __init__(self, model: nn.Module, extra_features: int, head: str | None = None):
        super().__init__()
        if extra_features < 1:
            raise ValueError(f"extra_features must be at least 1, got {extra_features}")
        head = head or last_linear_name(model)
        last = get_module(model, head)
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
    """``model`` that returns its own output and the input of its last layer (``head``)."""

    def __init__(self, model: nn.Module, head: str | None = None):
        super().__init__()
        self.head = head or last_linear_name(model)
        get_module(model, self.head)  # an unknown name fails here, with the close names
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        head = self.model.get_submodule(self.head)
        handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            output = self.model(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"{self.head!r} ran {len(seen)} times in one forward pass; "
                               "ExtraOutputNet needs a head that runs once")
        return output, seen[0]


# --- Wrong: what the page shows failing --------------------------------------------------

class ExtraOutputNetThatDropsHead(nn.Module):
    """Wrong: removes the classifier to reach the features, and never keeps it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.fc = nn.Identity()
        self.body = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, features


class ExtraOutputNetWithUnusedLayer(nn.Module):
    """Wrong: defines the 10-class layer ``fc1`` and never calls it; ``extra`` is ignored too."""

    def __init__(self, model: nn.Module, num_classes: int = 10):
        super().__init__()
        self.net = model
        self.fc1 = nn.Linear(1000, num_classes)
        self.output = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1000 = self.net(x)
        x10 = self.output(x1000)  # fc1 is never applied: a softmax over 1000 values
        return x10, x1000


class ExtraInputNetOnLogits(nn.Module):
    """Wrong: the prose joins the extra input to the features; this code joins it to the logits.

    The whole model runs, its 1,000-class classifier included; the logits go through a
    ReLU and dropout, the extra scalar is appended, then a new ``Linear(1001, 10)`` and a
    softmax (which ``CrossEntropyLoss`` applies a second time).
    """

    def __init__(self, model: nn.Module, num_classes: int = 10):
        super().__init__()
        self.net = model
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc_add = nn.Linear(1001, num_classes)
        self.output = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor, add_variable: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.relu(self.net(x)))
        x = torch.cat((x, add_variable.unsqueeze(1)), dim=1)
        return self.output(self.fc_add(x))


def classifier_ending_in_softmax(in_features: int, num_classes: int) -> nn.Sequential:
    """Wrong for training with ``CrossEntropyLoss``, which applies ``log_softmax`` itself."""
    return nn.Sequential(nn.Linear(in_features, num_classes), nn.Softmax(dim=1))
