"""Chapter: saving and loading.

Checkpoints are dictionaries of ``state_dict``s, written atomically and read
with ``weights_only=True``. ``load_checkpoint`` is a tool: it takes the files
readers bring (its own, Lightning-style, bare ``state_dict``s; saved through any
wrapper) and refuses, before it changes anything, what does not fit. Its core,
``load_weights``, is the recipe the pages show.
"""

import difflib
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from tutorials_pkg.digits import digits_classifier, train_epoch
from tutorials_pkg.unwrap import unwrap_model

__all__ = [
    "CheckpointMismatchError", "CorruptCheckpointError", "NotACheckpointError", "Run",
    "TruncatedCheckpointError", "WRAPPER_PREFIXES", "check_loads_with_weights_only",
    "check_state_dict", "convert_to_state_dicts", "copy_state_dict", "digits_run",
    "drop_from_page_cache", "filter_state_dict", "in_page_cache", "load_checkpoint",
    "load_on_meta", "load_weights", "misspelt_visible_devices", "read_checkpoint",
    "restore_run_state", "run_state", "save_atomically", "save_checkpoint", "select_gpus",
    "strip_prefix", "strip_prefix_by_replacing_anywhere", "strip_prefix_by_slicing_every_key",
    "strip_prefix_with_a_misspelt_name", "strip_wrapper_prefixes",
    "touch_every_page", "train_run", "warm_page_cache",
]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


# --- Saving ---------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, **meta) -> None:
    """Save ``model``'s (and ``optimizer``'s) state and ``meta`` (epoch, ...) to ``path``, atomically."""
    if not isinstance(optimizer, (torch.optim.Optimizer, type(None))):  # optimizer={...} as meta
        raise TypeError(f"optimizer= is the optimizer, not a {type(optimizer).__name__}: rename it")
    checkpoint = {"model": model.state_dict(), **meta}
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    save_atomically(checkpoint, path)


def save_atomically(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, but ``path`` holds the old file or the whole new one, never half."""
    check_loads_with_weights_only(obj)  # refuse now what torch.load would refuse later
    target = os.path.realpath(path)  # through a symlink: replace the file it points to
    folder, name = os.path.split(target)  # one temporary name: the next save replaces a killed one's
    temporary = os.path.join(folder, f".{os.fsencode(name)[:200].decode(errors='ignore')}.tmp")
    try:
        with open(temporary, "wb") as file:
            if os.path.exists(target):
                shutil.copymode(target, temporary)  # keep the file's permissions
            torch.save(obj, file)  # it stores a CRC-32 of each tensor's bytes
            file.flush()
            os.fsync(file.fileno())  # on the disk before it takes the old file's place
        os.replace(temporary, target)  # atomic: readers see the old file or the new one
    except BaseException as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        if getattr(error, "filename", None) == temporary:  # name the caller's path instead
            raise type(error)(error.errno, error.strerror, os.fspath(path)) from error
        raise


def check_loads_with_weights_only(obj) -> None:
    """Raise torch's ``UnpicklingError``, which names the global, if ``torch.load`` would refuse ``obj``."""
    with tempfile.TemporaryFile() as file, torch.serialization.skip_data():  # no tensor bytes
        torch.save(obj, file)
        file.seek(0)
        torch.load(file, weights_only=True, map_location="meta")  # meta: no memory, no GPU


# --- Loading --------------------------------------------------------------------------------

class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model; the message lists which."""


class TruncatedCheckpointError(ValueError):
    """The file is empty or cut short, e.g. by a crash during a plain ``torch.save``."""


class NotACheckpointError(ValueError):
    """The file is not one ``torch.save`` wrote (text, JSON, NumPy, a plain pickle, ...)."""


class CorruptCheckpointError(ValueError):
    """The file's bytes differ from those ``torch.save`` wrote: their CRC-32 says so."""


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device | None = "cpu", strict: bool = True) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); return the rest of it (epoch, ...).

    Before it changes anything it checks the file (a ``torch.save`` file, whole, its CRC-32s),
    the weights' names and shapes, and the optimizer state's kind, group sizes
    and per-parameter shapes. ``load_weights`` does the loading.
    """
    checkpoint = read_checkpoint(path, map_location)
    key, state_dict = _model_state(checkpoint, path)
    target = unwrap_model(model)
    state_dict = strip_wrapper_prefixes(state_dict, target)
    missing, unexpected = check_state_dict(target, state_dict, strict=strict, source=str(path))
    if optimizer is not None:
        if "optimizer" not in checkpoint:
            raise KeyError(f"{path} has no optimizer state; it holds {sorted(checkpoint)}")
        _check_optimizer_state(optimizer, checkpoint["optimizer"], path)
    load_weights(target, state_dict, strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if missing or unexpected:
        warnings.warn(f"{path} loaded with strict=False: not in the file, left as they were: "
                      f"{_listing(missing)}; not in the model, ignored: {_listing(unexpected)}",
                      stacklevel=2)
    return {} if key is None else {k: v for k, v in checkpoint.items() if k not in (key, "optimizer")}


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> object:
    """``torch.load(path, weights_only=True)``, refusing with a clear error a file that is not a
    ``torch.save`` file, is empty or cut short, or whose bytes fail their CRC-32s."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise TruncatedCheckpointError(f"{path} is empty (0 bytes)")
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise TruncatedCheckpointError(
            f"{path} is cut short: its {os.path.getsize(path):,} bytes do not end like a torch.save "
            "file (a zip archive); a save or a copy stopped half-way")
    if head == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if not any(record.filename.endswith("/data.pkl") for record in records):
                raise NotACheckpointError(f"{path} is a zip archive, but not one torch.save wrote "
                                          "(it has no data.pkl)")
            if any(record.CRC for record in records):  # all 0: saved without CRC-32s
                _check_crc32(archive, path)
    elif head != b"\x80\x02\x8a\x0a":  # the start of torch.save's format before zip (torch < 1.6)
        raise NotACheckpointError(
            f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive with a pickle in "
            f"it, and this file starts with {head!r}. Open it with what wrote it (json, numpy.load, ...)")
    return torch.load(path, map_location=map_location, weights_only=True)


def _check_crc32(archive: zipfile.ZipFile, path) -> None:
    """Read every record of ``archive`` (a torch.save file), checking it against its CRC-32.

    torch.save stores them, and torch.load does not check them: bytes changed on the disk load.
    """
    damaged = archive.testzip()  # the first record whose header or CRC-32 does not match
    if damaged is not None:
        raise CorruptCheckpointError(f"{path} is damaged: the bytes of {damaged} are not those "
                                     "torch.save wrote (its header or CRC-32 differs); use another copy")


MODEL_KEYS = ("model", "state_dict", "model_state_dict")  # ours, Lightning's, a common hand-made one


def _model_state(checkpoint: object, path) -> tuple[str | None, Mapping]:
    """Where the model's ``state_dict`` is in a checkpoint: its key (None: the whole file), and it."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    for key in MODEL_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return key, checkpoint[key]
    if checkpoint and all(isinstance(value, torch.Tensor) or str(key).endswith("_extra_state")
                          for key, value in checkpoint.items()):
        return None, checkpoint  # a bare state_dict
    holders = [str(key) for key, value in checkpoint.items() if isinstance(value, Mapping)
               and value and all(isinstance(v, torch.Tensor) for v in value.values())]
    hint = f"; the tensors are under {holders}: pass checkpoint[{holders[0]!r}]" if holders else ""
    raise ValueError(f"{path} holds no model weights: no entry named {' / '.join(MODEL_KEYS)}, and "
                     f"not every entry is a tensor (it holds {_listing(sorted(map(str, checkpoint)))})"
                     f"{hint}")


def _check_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping, path) -> None:
    """Refuse optimizer state that ``optimizer.load_state_dict`` would take and then fail on, or
    load wrong: another kind of optimizer, other group sizes, parameters in another order."""
    saved, groups = state["param_groups"], optimizer.param_groups
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in groups]:
        raise ValueError(f"{path}: the optimizer state has {len(saved)} parameter groups of "
                         f"{[len(g['params']) for g in saved]} parameters, the optimizer "
                         f"{len(groups)} of {[len(g['params']) for g in groups]}; build the "
                         "optimizer as it was built when the checkpoint was saved")
    foreign = sorted(set(saved[0]) - set(groups[0]))
    if foreign:
        raise ValueError(f"{path}: the optimizer state was saved by another kind of optimizer: it "
                         f"has settings {foreign}, which {type(optimizer).__name__} does not have")
    params = dict(zip([i for g in saved for i in g["params"]], [p for g in groups for p in g["params"]]))
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                raise ValueError(
                    f"{path}: the optimizer state of parameter {index} ({name}) has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(params[index].shape)}: the "
                    "parameters are not in the order they were in when it was saved")


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


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return (", ".join(items[:limit]) or "none") + more


# --- The core: loading weights whatever wrapper saved them ------------------------------------

def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True):
    """``model.load_state_dict(state_dict)`` whatever wrapper saved it; by assignment on meta."""
    state_dict = strip_wrapper_prefixes(state_dict, model)
    tied = {}  # each parameter and its names: tied weights have several
    for name, parameter in model.named_parameters(remove_duplicate=False):
        tied.setdefault(parameter, []).append(name)
    on_meta = any(parameter.is_meta for parameter in tied)  # no memory to copy into
    result = model.load_state_dict(state_dict, strict=strict, assign=on_meta)
    for first, *others in tied.values():  # assign=True gives each name its own tensor: tie again
        for name in others:
            module, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(module), leaf, model.get_parameter(first))
    return result


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """``state_dict`` without the ``module.`` / ``_orig_mod.`` of wrappers, if ``model`` has none."""
    def bare(key: str) -> str:  # without torch.compile's part, also a compiled child's
        return ".".join(part for part in key.split(".") if part + "." != WRAPPER_PREFIXES[1])

    names = {bare(key): key for key in model.state_dict()}
    for prefix in WRAPPER_PREFIXES * 2:  # twice: DDP around torch.compile, or the reverse
        if not any(bare(key) in names for key in state_dict):  # a layer named module stays
            state_dict = dict(state_dict)  # a copy: torch's function works in place
            consume_prefix_in_state_dict_if_present(state_dict, prefix)
    return {names.get(bare(key), key): value for key, value in state_dict.items()}


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """A copy of ``state_dict`` without ``prefix`` at the start of its keys; ``"module"`` means
    ``"module."`` (torch's ``consume_prefix_in_state_dict_if_present``, on a copy)."""
    prefix = prefix + "." if prefix and not prefix.endswith(".") else prefix
    stripped = OrderedDict(state_dict)
    stripped._metadata = OrderedDict(getattr(state_dict, "_metadata", {}))
    consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped


def filter_state_dict(state_dict: dict[str, torch.Tensor],
                      model: nn.Module) -> tuple[dict, dict[str, str]]:
    """What of ``state_dict`` fits ``model`` by name and shape, and why each other entry does not."""
    model = unwrap_model(model)  # the kept names are those of the model inside any wrapper
    expected = model.state_dict()
    state_dict = strip_wrapper_prefixes(state_dict, model)
    dropped = {key: "not in the model" for key in state_dict if key not in expected}
    dropped |= {key: f"shape {tuple(value.shape)} in the checkpoint, "
                     f"{tuple(expected[key].shape)} in the model" for key, value in state_dict.items()
                if key in expected and getattr(value, "shape", None) != expected[key].shape}
    kept = {key: value for key, value in state_dict.items() if key not in dropped}
    if not kept:  # load_state_dict(kept, strict=False) would load nothing and say nothing
        raise CheckpointMismatchError(f"nothing in it fits the model; it holds {sorted(dropped)[:5]}")
    return kept, dropped


def copy_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot of ``model``'s state that later training does not change."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def convert_to_state_dicts(path: str | os.PathLike, new_path: str | os.PathLike,
                           allowed: Iterable[type | Callable]) -> list[str]:
    """Rewrite a file of pickled modules as a checkpoint of their ``state_dict``s; return those keys.

    It loads only if every global the file needs is in ``allowed`` (torch's error names any other).
    """
    with torch.serialization.safe_globals(list(allowed)):
        old = torch.load(path, weights_only=True, map_location="cpu")
    old = {"model": old} if isinstance(old, nn.Module) else old
    if not isinstance(old, Mapping):
        raise TypeError(f"{path} holds a {type(old).__name__}, neither a module nor a dictionary")
    modules = sorted(key for key, value in old.items() if isinstance(value, nn.Module))
    torch.save({key: value.state_dict() if key in modules else value for key, value in old.items()},
               new_path)
    return modules


# --- Resuming a run -------------------------------------------------------------------------

class Run(NamedTuple):  # what a training run changes as it goes: resuming restores all of it
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the order of the data


def digits_run(seed: int) -> Run:
    """A new run on the digits whose every random choice comes from ``seed``."""
    torch.manual_seed(seed)
    model = digits_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return Run(model, optimizer, scheduler, torch.Generator().manual_seed(seed))


def train_run(run: Run, x: torch.Tensor, y: torch.Tensor, epochs: int, losses: list) -> list:
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
    if missing := [key for key in ("scheduler", "torch_rng", "data_rng") if key not in state]:
        raise KeyError(f"{missing} are not in the checkpoint: it was not saved with run_state(run)")
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])  # dropout
    run.generator.set_state(state["data_rng"])


# --- Loading large files fast ---------------------------------------------------------------

def load_on_meta(path, build) -> nn.Module:
    """Build a model (``build()``) without memory for its weights, then map them from ``path``."""
    if not zipfile.is_zipfile(path):  # mmap needs torch.save's zip format, whole
        raise ValueError(f"{path} is not a whole torch.save file: empty, cut short?")
    with torch.device("meta"):
        model = build()
    checkpoint = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    load_weights(model, checkpoint.get("model", checkpoint))  # strict; assign=True on meta
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{left}: not in {path}, so still on meta (non-persistent buffers?)")
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
    if re.search(r"[^\w,\s-]|\w\s+\w", devices):  # "0 1" or "0;1": CUDA reads up to the 0 only
        raise ValueError(f"CUDA_VISIBLE_DEVICES={devices!r}: separate the GPUs with commas, "
                         "as in '0,1'; CUDA stops reading at anything else")
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
