"""Chapter: saving and loading.

Checkpoints are dictionaries of ``state_dict``s, written atomically and read
with ``weights_only=True``; every check runs before anything changes.
"""

import argparse
import difflib
import glob
import io
import os
import pickle
import stat
import sys
import types
import uuid
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from tutorials_pkg.digits import digits_classifier, train_epoch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so leftovers are not cleaned up
    fcntl = None

__all__ = [
    "CheckpointMismatchError", "Run", "TruncatedCheckpointError", "WRAPPER_PREFIXES",
    "check_state_dict", "convert_to_state_dicts", "copy_state_dict", "digits_run",
    "drop_from_page_cache", "filter_state_dict", "in_page_cache", "load_checkpoint",
    "load_on_meta", "misspelt_visible_devices", "restore_run_state", "run_state",
    "save_atomically", "save_checkpoint", "select_gpus",
    "strip_prefix", "strip_prefix_by_replacing_anywhere", "strip_prefix_by_slicing_every_key",
    "strip_prefix_with_a_misspelt_name", "strip_wrapper_prefixes", "touch_every_page",
    "train_run", "unwrap_model", "warm_page_cache",
]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


# --- Saving ---------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, **meta) -> None:
    """Save ``model`` (and ``optimizer``) state and ``meta`` (epoch, ...) to ``path``, atomically."""
    checkpoint = {"model": model.state_dict(), **meta}
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    save_atomically(checkpoint, path, weights_only=True)


def save_atomically(obj: object, path: str | os.PathLike, weights_only: bool = False) -> None:
    """``torch.save(obj, path)`` so that ``path`` is either the old file or the complete new one.

    ``weights_only=True``: only if ``torch.load(weights_only=True)`` can read it back.
    """
    target = Path(os.path.realpath(path))
    _remove_leftovers(target)
    temporary = target.with_name(f"{_temporary_prefix(target)}{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            file = open(temporary, "xb")
        except OSError as error:  # name the caller's path, not the temporary one
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        with file:
            if fcntl is not None:
                fcntl.flock(file, fcntl.LOCK_EX)  # "a save is writing this": see _remove_leftovers
            if target.exists() and os.chmod in os.supports_fd:
                os.chmod(file.fileno(), stat.S_IMODE(target.stat().st_mode))
            torch.save(obj, file)
            file.flush()
            if weights_only:
                _check_loads_weights_only(temporary, obj, path)
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _temporary_prefix(target: Path) -> str:
    """``.<name>.``, the name shortened so that the temporary name fits the file system's limit."""
    try:
        limit = os.pathconf(target.parent, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        limit = 255
    name = os.fsencode(target.name)[: limit - len("..12345678.tmp")]
    return f".{os.fsdecode(name)}."


def _remove_leftovers(target: Path) -> None:
    """Delete the temporary files of killed saves of ``target``: those no live save holds locked."""
    if fcntl is None:
        return
    prefix = _temporary_prefix(target)
    for leftover in target.parent.glob(glob.escape(prefix) + "*.tmp"):
        token = leftover.name[len(prefix):-len(".tmp")]
        if not token or token.strip("0123456789abcdef"):
            continue  # not a name that save_atomically makes
        try:
            with open(leftover, "rb") as file:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its save runs
                leftover.unlink()
        except OSError:  # locked by a save in progress, gone already, or not ours to delete
            continue


def _check_loads_weights_only(written: Path, obj: object, path: str | os.PathLike) -> None:
    try:
        torch.load(written, weights_only=True, mmap=True)  # mapped: the tensors' bytes are not read
    except pickle.UnpicklingError as error:
        where, value = _refused_entry(obj, "checkpoint")
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise TypeError(f"{where} is a {kind}, which torch.load(weights_only=True) refuses; "
                        f"store {_instead(value)} instead ({path} was not changed)") from error


def _refused_entry(value: object, where: str) -> tuple[str, object]:
    """The innermost entry of ``value`` that ``torch.load(weights_only=True)`` refuses, and where it is."""
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return where, value
    for key, item in items:
        buffer = io.BytesIO()
        torch.save(item, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except pickle.UnpicklingError:
            return _refused_entry(item, f"{where}[{key!r}]")
    return where, value


def _instead(value: object) -> str:
    if type(value).__module__.partition(".")[0] == "numpy":
        return "torch.from_numpy(x) or x.tolist()" if type(value).__name__ == "ndarray" else "float(x) or int(x)"
    if isinstance(value, os.PathLike):
        return "str(path)"
    if isinstance(value, (argparse.Namespace, types.SimpleNamespace)):
        return "vars(args)"
    return "numbers, strings, tensors, or lists and dicts of them"


# --- Loading --------------------------------------------------------------------------------

class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model; the message lists which."""


class TruncatedCheckpointError(ValueError):
    """The file is empty or cut short, e.g. by a crash during a plain ``torch.save``."""


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device | None = "cpu", strict: bool = True) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); return the rest of it (epoch, ...)."""
    checkpoint = _read(path, map_location=map_location)
    state_dict = _model_state(checkpoint, path)
    if optimizer is not None:
        if "optimizer" not in checkpoint:
            raise KeyError(f"{path} has no optimizer state; it holds {sorted(checkpoint)}")
        _check_optimizer_state(optimizer, checkpoint["optimizer"], path)
    target = unwrap_model(model)
    state_dict = strip_wrapper_prefixes(state_dict, target)
    missing, unexpected = check_state_dict(target, state_dict, strict=strict, source=str(path))
    target.load_state_dict(state_dict, strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if missing or unexpected:
        warnings.warn(f"{path} loaded with strict=False: not in the file, left as they were: "
                      f"{_listing(missing)}; not in the model, ignored: {_listing(unexpected)}",
                      stacklevel=2)
    if "model" not in checkpoint:
        return {}
    return {key: value for key, value in checkpoint.items() if key not in ("model", "optimizer")}


def _read(path: str | os.PathLike, **kwargs) -> object:
    """``torch.load(path, weights_only=True)``, with an error that names an empty or cut-short file."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except (EOFError, OSError, RuntimeError) as error:
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size == 0:
            raise TruncatedCheckpointError(f"{path} is empty (0 bytes)") from error
        if size is not None and not zipfile.is_zipfile(path):
            raise TruncatedCheckpointError(
                f"{path} is cut short: its {size:,} bytes do not end like a torch.save file "
                "(a zip archive); a save or a copy stopped half-way") from error
        raise


def _model_state(checkpoint: object, path: str | os.PathLike) -> Mapping:
    """The model's ``state_dict`` in a checkpoint: its ``"model"`` entry, or the whole file."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    if "model" in checkpoint:
        return checkpoint["model"]
    if checkpoint and all(isinstance(value, torch.Tensor) or str(key).endswith("_extra_state")
                          for key, value in checkpoint.items()):
        return checkpoint  # a bare state_dict
    raise ValueError(f"{path} holds no model weights: no 'model' entry, and not every entry is a "
                     f"tensor (it holds {_listing(sorted(map(str, checkpoint)))})")


def _check_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping, path) -> None:
    saved = [len(group["params"]) for group in state["param_groups"]]
    current = [len(group["params"]) for group in optimizer.param_groups]
    if saved != current:
        raise ValueError(f"{path}: the optimizer state has {len(saved)} parameter groups of {saved} "
                         f"parameters, the optimizer {len(current)} of {current}; build the "
                         "optimizer as it was built when the checkpoint was saved")


def filter_state_dict(state_dict: Mapping[str, torch.Tensor],
                      model: nn.Module) -> tuple[dict, dict[str, str]]:
    """The entries of ``state_dict`` that fit ``model`` by name and shape, and why each other one does not.

    The kept names fit ``unwrap_model(model)``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, not {type(state_dict).__name__}")
    target = unwrap_model(model)
    expected = target.state_dict()
    kept, dropped = {}, {}
    for key, value in strip_wrapper_prefixes(state_dict, target).items():
        if key not in expected:
            dropped[key] = "not in the model"
        elif _shape(value) != _shape(expected[key]):
            dropped[key] = f"shape {_shape(value)} in the checkpoint, {_shape(expected[key])} in the model"
        else:
            kept[key] = value
    if not kept:
        hint = "; pass checkpoint['model']" if "model" in state_dict else ""
        raise CheckpointMismatchError(f"nothing in the state_dict fits {type(target).__name__}: "
                                      f"{_listing([f'{k} ({why})' for k, why in dropped.items()])}{hint}")
    return kept, dropped


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """A copy of ``state_dict`` with ``prefix`` removed from the start of the keys that have it.

    ``consume_prefix_in_state_dict_if_present`` does the work (in place, so on a
    copy). A prefix is whole names: ``"module"`` means ``"module."``.
    """
    if prefix and not prefix.endswith("."):
        prefix += "."
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


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                     source: str = "state_dict") -> tuple[list[str], list[str]]:
    """Raise ``CheckpointMismatchError`` unless ``state_dict`` fits ``model``; return (missing, unexpected).

    Shapes must always match, and at least one key; all keys only when ``strict``.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [f"{key}: checkpoint {_shape(state_dict[key])}, model {_shape(value)}"
              for key, value in expected.items()
              if key in state_dict and _shape(state_dict[key]) != _shape(value)]
    nothing = len(missing) == len(expected) and len(expected) > 0
    if shapes or nothing or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}:\n"
            f"  missing (in the model, not in the checkpoint): {_listing(missing)}\n"
            f"  unexpected (in the checkpoint, not in the model): {_listing(unexpected)}\n"
            f"  shape mismatch: {_listing(shapes)}")
    return missing, unexpected


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return (", ".join(items[:limit]) or "none") + more


def copy_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot of ``model``'s state that later training does not change."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def convert_to_state_dicts(path: str | os.PathLike, new_path: str | os.PathLike,
                           allowed: Iterable[type | Callable]) -> list[str]:
    """Rewrite a file of pickled modules as a checkpoint of their ``state_dict``s; return those keys."""
    allowed = list(allowed)
    names = {f"{item.__module__}.{item.__qualname__}" for item in allowed}
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    if not set(needed) <= names:
        raise pickle.UnpicklingError(f"{path} needs {sorted(set(needed) - names)}, which are not in "
                                     "allowed; check what they are before you allow them")
    with torch.serialization.safe_globals(allowed):
        old = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(old, nn.Module):
        old = {"model": old}
    if not isinstance(old, Mapping):
        raise TypeError(f"{path} holds a {type(old).__name__}, neither a module nor a dictionary")
    modules = sorted(key for key, value in old.items() if isinstance(value, nn.Module))
    new = {key: value.state_dict() if key in modules else value for key, value in old.items()}
    save_atomically(new, new_path, weights_only=True)
    return modules


# --- Resuming a run -------------------------------------------------------------------------

class Run(NamedTuple):
    """What a training run changes as it goes: all of it must be restored to resume exactly."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the order of the data


def digits_run(seed: int) -> Run:
    """A new run on the digits whose every random choice comes from ``seed``. Used by: save_load."""
    torch.manual_seed(seed)
    model = digits_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return Run(model, optimizer, scheduler, torch.Generator().manual_seed(seed))


def train_run(run: Run, x: torch.Tensor, y: torch.Tensor, epochs: int,
              losses: list[float]) -> list[float]:
    """Train ``run`` for ``epochs`` more epochs, appending each epoch's mean loss to ``losses``."""
    for _ in range(epochs):
        losses.append(train_epoch(run.model, run.optimizer, x, y, run.generator))
        run.scheduler.step()
    return losses


def run_state(run: Run) -> dict:
    """What a checkpoint needs besides the model and the optimizer to resume ``run`` exactly."""
    return {"scheduler": run.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
            "data_rng": run.generator.get_state()}


def restore_run_state(run: Run, state: Mapping) -> None:
    """Put back into ``run`` what ``run_state`` returned (e.g. read back by ``load_checkpoint``)."""
    missing = [key for key in ("scheduler", "torch_rng", "data_rng") if key not in state]
    if missing:
        raise KeyError(f"{missing} are not in the checkpoint: it was not saved with run_state(run)")
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])  # dropout
    run.generator.set_state(state["data_rng"])


# --- Loading large files fast ---------------------------------------------------------------

def load_on_meta(path: str | os.PathLike, build: Callable[[], nn.Module],
                 warm: bool = True) -> nn.Module:
    """Build a model without memory for its weights, then map them from the file.

    ``warm=False`` skips ``warm_page_cache``: for a model used only in part.
    """
    if warm:
        warm_page_cache(path)
    with torch.device("meta"):
        model = build()
    state_dict = _model_state(_read(path, mmap=True, map_location="cpu"), path)
    model.load_state_dict(state_dict, assign=True)  # strict: raises on any key mismatch
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{left} are not in {path} and still have no data; "
                         "they are non-persistent buffers: build them on CPU")
    return model


def warm_page_cache(path: str | os.PathLike) -> bool:
    """Read ``path`` into the page cache in one sequential pass, unless it is there already.

    Linux only (elsewhere it does nothing); returns whether it read.
    """
    if not hasattr(os, "RWF_NOWAIT") or in_page_cache(path):
        return False
    with open(path, "rb") as file, open(os.devnull, "wb") as null:
        size, offset = os.fstat(file.fileno()).st_size, 0
        while offset < size:  # like `cat path > /dev/null`, without copying into Python
            sent = os.sendfile(null.fileno(), file.fileno(), offset, size - offset)
            if sent == 0:
                break
            offset += sent
    return True


def in_page_cache(path: str | os.PathLike, probes: int = 16) -> bool:
    """Whether ``probes`` evenly spaced bytes of ``path`` are in memory, so reading them needs no disk.

    A read with ``RWF_NOWAIT`` fails instead of waiting for the disk (Linux; elsewhere False).
    """
    if not hasattr(os, "RWF_NOWAIT"):
        return False
    with open(path, "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        for i in range(probes):
            try:
                os.preadv(file.fileno(), [bytearray(1)], size * i // probes, os.RWF_NOWAIT)
            except OSError:  # EAGAIN: on the disk only; or the file system cannot tell
                return False
    return True


def drop_from_page_cache(path: str | os.PathLike) -> None:
    """Write ``path``'s cached pages to the disk and ask the kernel to forget them (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def touch_every_page(model: nn.Module) -> None:
    """Read one byte of every 4 KiB page of ``model``'s tensors, as its first forward pass would."""
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.detach().reshape(-1).view(torch.uint8)[::4096].sum()


# --- Choosing GPUs --------------------------------------------------------------------------

def select_gpus(devices: str) -> None:
    """Make only ``devices`` (``"1"``, ``"0,2"``; ``""`` for none) visible to CUDA in this process."""
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA is already initialised in this process, so CUDA_VISIBLE_DEVICES "
                           "would be ignored: set it before the first CUDA call, or on the command "
                           f"line (CUDA_VISIBLE_DEVICES={devices} python train.py)")
    typos = misspelt_visible_devices(os.environ)
    if typos:
        raise ValueError(f"{typos} in the environment look like CUDA_VISIBLE_DEVICES, which CUDA "
                         "reads; it ignores them silently: remove them")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices


def misspelt_visible_devices(environ: Mapping[str, str]) -> list[str]:
    """The names in ``environ`` that are close to ``CUDA_VISIBLE_DEVICES`` but not it."""
    right = "CUDA_VISIBLE_DEVICES"
    return sorted(name for name in environ if name != right
                  and difflib.SequenceMatcher(None, name.upper(), right).ratio() >= 0.9)


# --- Wrong: prefixes stripped by hand -------------------------------------------------------

def strip_prefix_by_slicing_every_key(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Wrong: ``k[7:]`` cuts 7 characters off every key, prefix or not."""
    return {key[7:]: value for key, value in state_dict.items()}


def strip_prefix_by_replacing_anywhere(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Wrong: ``replace`` removes ``module.`` anywhere in a key, not just at the start."""
    return {key.replace("module.", ""): value for key, value in state_dict.items()}


def strip_prefix_with_a_misspelt_name(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Wrong: ``'modeule.'`` is in no key, so nothing is stripped, and nothing says so."""
    return {key.replace("modeule.", ""): value for key, value in state_dict.items()}
