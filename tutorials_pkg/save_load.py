"""Chapter: saving and loading.

A checkpoint is a dictionary of ``state_dict``s (tensors, numbers, strings),
written so that a crash never leaves a broken file behind, and read with
``weights_only=True`` so that opening it cannot run code. Loading copes with
the ``module.`` and ``_orig_mod.`` prefixes that ``DataParallel``, DDP and
``torch.compile`` add, and says exactly which keys do not fit.
"""

import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = [
    "CheckpointMismatchError", "WRAPPER_PREFIXES", "check_state_dict", "copy_state_dict",
    "load_checkpoint", "load_on_meta", "restore_rng_states", "rng_states", "save_atomically",
    "save_checkpoint", "strip_prefix", "strip_prefix_by_replacing_anywhere",
    "strip_prefix_by_slicing_every_key", "strip_wrapper_prefixes", "unwrap_model",
]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, **meta) -> None:
    """Save ``model`` (and ``optimizer``) state and ``meta`` (epoch, ...) to ``path``, atomically.

    ``meta`` values should be tensors, numbers, strings or containers of them,
    so that ``torch.load(weights_only=True)`` can read them back.
    """
    checkpoint = {"model": model.state_dict(), **meta}
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    save_atomically(checkpoint, path)


def save_atomically(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` is either the old file or the complete new one.

    Write a temporary file in the same directory (same file system), push it
    to the disk with ``fsync``, then ``os.replace`` it over ``path`` in one step.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model; the message lists which."""


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device | None = "cpu", strict: bool = True) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); return the rest of it (epoch, ...).

    Reads with ``weights_only=True``: a file that would run code is refused.
    A leading ``module.`` or ``_orig_mod.`` on the checkpoint's keys or on the
    model (``DataParallel``, DDP, ``torch.compile``) is handled. A file that
    holds a bare ``state_dict`` works too.
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    if optimizer is not None and "optimizer" not in checkpoint:
        raise KeyError(f"{path} has no optimizer state; it holds {sorted(checkpoint)}")
    state_dict = checkpoint["model"] if "model" in checkpoint else checkpoint
    target = unwrap_model(model)
    state_dict = strip_wrapper_prefixes(state_dict, target)
    check_state_dict(target, state_dict, strict=strict, source=str(path))  # before any change
    target.load_state_dict(state_dict, strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if "model" not in checkpoint:
        return {}
    return {key: value for key, value in checkpoint.items() if key not in ("model", "optimizer")}


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """A copy of ``state_dict`` with ``prefix`` removed from the start of the keys that have it.

    ``consume_prefix_in_state_dict_if_present`` does the work (in place, so on
    a copy); it only looks at the start of a key, so ``encoder.module.weight``
    keeps its name.
    """
    stripped = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        stripped._metadata = OrderedDict(metadata)
    consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
    """Remove ``module.`` / ``_orig_mod.`` from the keys when all keys have it and ``model``'s don't."""
    expected = model.state_dict().keys()
    for prefix in WRAPPER_PREFIXES * 2:  # twice: DDP around torch.compile, or the reverse
        if (all(key.startswith(prefix) for key in state_dict)
                and not all(key.startswith(prefix) for key in expected)):
            state_dict = strip_prefix(state_dict, prefix)
    return state_dict


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel`` / DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     strict: bool = True, source: str = "state_dict") -> None:
    """Raise ``CheckpointMismatchError`` listing missing, unexpected and wrongly shaped keys.

    Shapes must always match; missing and unexpected keys only when ``strict``.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(value.shape)}"
              for key, value in expected.items()
              if key in state_dict and state_dict[key].shape != value.shape]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}:\n"
            f"  missing (in the model, not in the checkpoint): {_listing(missing)}\n"
            f"  unexpected (in the checkpoint, not in the model): {_listing(unexpected)}\n"
            f"  shape mismatch: {_listing(shapes)}")


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return (", ".join(items[:limit]) or "none") + more


def copy_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot of ``model``'s state that later training does not change.

    ``model.state_dict()`` holds the live tensors (no copy); clone them to keep
    e.g. the best weights so far.
    """
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def load_on_meta(path: str | os.PathLike, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without memory for its weights, then map them from the file.

    ``build()`` runs on the meta device (shapes only, no random init);
    ``torch.load(mmap=True)`` maps the file instead of reading it;
    ``load_state_dict(assign=True)`` takes those tensors as the parameters
    instead of copying into the (non-existent) meta ones.
    """
    with torch.device("meta"):
        model = build()
    checkpoint = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    state_dict = checkpoint["model"] if "model" in checkpoint else checkpoint
    model.load_state_dict(state_dict, assign=True)  # strict: raises on any key mismatch
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{left} are not in {path} and still have no data; "
                         "they are non-persistent buffers: build them on CPU")
    return model


def rng_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random states a resumed run needs: torch's global one (dropout) and the data order's."""
    return {"torch_rng": torch.get_rng_state(), "data_rng": generator.get_state()}


def restore_rng_states(states: Mapping[str, torch.Tensor], generator: torch.Generator) -> None:
    """Put back what ``rng_states`` saved."""
    torch.set_rng_state(states["torch_rng"])
    generator.set_state(states["data_rng"])


# --- Wrong: prefixes stripped by hand ----------------------------------------------------

def strip_prefix_by_slicing_every_key(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Wrong: ``k[7:]`` cuts 7 characters off every key, prefix or not."""
    return {key[7:]: value for key, value in state_dict.items()}


def strip_prefix_by_replacing_anywhere(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Wrong: ``replace`` removes ``module.`` anywhere in a key, not just at the start."""
    return {key.replace("module.", ""): value for key, value in state_dict.items()}
