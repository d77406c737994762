"""How fast does a large checkpoint load, compared with just reading its bytes?

Writes a checkpoint of at least 200 MB into a temporary directory, then times
the recipes below in one run, taking turns (one run of each per round, so a
busy neighbour slows them alike), and prints each median with its ratio to
the floor:

- the floor: reading the file's bytes into a buffer allocated beforehand;
- ``torch.load`` alone, and the usual recipe: build the model (random init),
  ``torch.load``, ``load_state_dict`` (a copy);
- meta device + ``torch.load(mmap=True)`` + ``load_state_dict(assign=True)``,
  as it returns (lazy: nothing read yet) and with one byte of every page
  touched (a complete load); with ``MAP_SHARED`` instead of the default
  ``MAP_PRIVATE`` (``torch.serialization.set_default_mmap_options``); and
  ``load_on_meta`` after ``warm_page_cache`` (one sequential read first);
- safetensors: ``load_file`` + ``load_state_dict(assign=True)`` into a meta
  model, lazy, touched, and after ``warm_page_cache``.

``--cold`` also times every recipe after dropping the files from the page
cache before each run (``posix_fadvise(DONTNEED)``, no root needed), and
checks with ``mincore`` that the drop worked. Then the save times: plain
``torch.save``, ``torch.save`` + fsync, and the atomic ``save_checkpoint``.
Where CUDA is present, a third table loads onto the GPU. Last, what checking
the file's CRC-32s costs (``load_checkpoint`` does, before ``torch.load``)
next to ``torch.load`` itself. The temporary files are removed at the end.

Not in the tables: ``posix_fadvise(WILLNEED)`` chunk by chunk before mapping
(Linux reads at most the readahead window per call). Tried on Linux 6.18 it
was 1.7-2.5x the floor cold, and it slowed the loads timed after it.

    python -m benchmarks.checkpoint_load [--size-mb 256] [--repeats 5] [--cold] [--crc-only]
"""

import argparse
import ctypes
import mmap
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tutorials_pkg.measure import seconds_each
from tutorials_pkg.save_load import (
    drop_from_page_cache, load_on_meta, read_checkpoint, save_checkpoint, touch_every_page,
    warm_page_cache,
)

WIDTH = 4096  # one Linear(4096, 4096) holds 64 MiB of float32 weights
FLOOR = "read the bytes (floor)"
TARGET = 1.1  # the fastest complete load, as a multiple of the floor


def build(layers: int, width: int = WIDTH) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])


def read_floor(path: Path, buffer: bytearray) -> int:
    with open(path, "rb", buffering=0) as file:
        view, total = memoryview(buffer), 0
        while count := file.readinto(view[total:]):
            total += count
    return total


def resident_fraction(path: Path) -> float | None:
    """Share of the file's pages in the page cache (Linux ``mincore``), or None where unknown."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        pages = (size + page - 1) // page
        vector = (ctypes.c_ubyte * pages)()
        ok = libc.mincore(ctypes.c_void_p(address), size, vector) == 0
        libc.munmap(ctypes.c_void_p(address), size)
        return sum(v & 1 for v in vector) / pages if ok else None
    finally:
        os.close(fd)


def load_recipes(checkpoint: Path, tensors: Path, layers: int, buffer: bytearray,
                 width: int = WIDTH) -> dict:
    def usual():
        model = build(layers, width)
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        return model

    def mapped(warm=False, touch=True):
        def run():
            if warm:
                warm_page_cache(checkpoint)
            model = load_on_meta(checkpoint, lambda: build(layers, width))
            if touch:
                touch_every_page(model)
            return model
        return run

    def mapped_shared():
        with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
            return mapped()()

    def safetensors(warm=False, touch=True):
        def run():
            if warm:
                warm_page_cache(tensors)
            with torch.device("meta"):
                model = build(layers, width)
            model.load_state_dict(load_file(tensors), assign=True)
            if touch:
                touch_every_page(model)
            return model
        return run

    return {
        FLOOR: lambda: read_floor(checkpoint, buffer),
        "torch.load only": lambda: torch.load(checkpoint, weights_only=True),
        "build + torch.load + load_state_dict": usual,
        "meta + mmap + assign (lazy, as returned)": mapped(touch=False),
        "meta + mmap + assign, every page touched": mapped(),
        "  the same with MAP_SHARED": mapped_shared,
        "warm_page_cache + load_on_meta, touched": mapped(warm=True),
        "safetensors + assign (lazy, as returned)": safetensors(touch=False),
        "safetensors + assign, every page touched": safetensors(),
        "safetensors after warm_page_cache, touched": safetensors(warm=True),
    }


def cuda_load_recipes(checkpoint: Path, tensors: Path, layers: int, device: torch.device,
                      width: int = WIDTH) -> dict:
    """Ways to load onto a GPU; each returns the model on ``device``."""
    def usual():
        model = build(layers, width).to(device)
        model.load_state_dict(torch.load(checkpoint, weights_only=True, map_location=device)["model"])
        return model

    def meta_then_to():
        return load_on_meta(checkpoint, lambda: build(layers, width)).to(device)

    def meta_pinned_non_blocking():
        model = load_on_meta(checkpoint, lambda: build(layers, width))
        with torch.device("meta"):
            on_device = build(layers, width)
        state = {key: value.pin_memory().to(device, non_blocking=True)
                 for key, value in model.state_dict().items()}
        on_device.load_state_dict(state, assign=True)
        torch.cuda.synchronize(device)  # the copies are asynchronous: wait for them
        return on_device

    def safetensors_on_device():
        with torch.device("meta"):
            model = build(layers, width)
        model.load_state_dict(load_file(tensors, device=str(device)), assign=True)
        return model

    return {
        "build on GPU + torch.load(map_location) + copy": usual,
        "load_on_meta, then .to(device)": meta_then_to,
        "load_on_meta, pinned, non_blocking copies": meta_pinned_non_blocking,
        "safetensors load_file(device=...) + assign": safetensors_on_device,
    }


def report(title: str, recipes: dict, repeats: int, before=None, device: str = "cpu",
           floor: float | None = None) -> dict[str, float]:
    runs = seconds_each(list(recipes.values()), repeats, device=device, before=before)
    times = {name: statistics.median(r) for name, r in zip(recipes, runs)}
    floor = times.get(FLOOR, floor)
    print(f"\n{title}")
    print(f"  {'recipe':48} {'median s':>9} {'x floor':>8}")
    for name, seconds in times.items():
        print(f"  {name:48} {seconds:9.3f} {seconds / floor:8.2f}")
    complete = {name: t for name, t in times.items()
                if name not in (FLOOR, "torch.load only") and "lazy" not in name}
    fastest = min(complete, key=complete.get)
    ratio = complete[fastest] / floor
    verdict = "within" if ratio <= TARGET else "NOT within"
    print(f"  fastest complete load: {fastest.strip()}, {ratio:.2f}x the floor "
          f"({verdict} the {TARGET}x target)")
    return times


def crc_cost(checkpoint: Path, repeats: int) -> float:
    """Print and return what checking the CRC-32s costs, as a fraction of ``torch.load``'s time."""
    import zipfile

    def check():
        with zipfile.ZipFile(checkpoint) as archive:
            assert archive.testzip() is None

    loads = {"torch.load(weights_only=True)": lambda: torch.load(checkpoint, weights_only=True),
             "CRC-32 check of every record (zipfile)": check,
             "read_checkpoint (check + torch.load)": lambda: read_checkpoint(checkpoint)}
    times = [statistics.median(r) for r in seconds_each(list(loads.values()), repeats)]
    print(f"\ncost of the CRC-32 check, warm page cache (median of {repeats})")
    for name, seconds in zip(loads, times):
        print(f"  {name:50} {seconds:9.3f} s  {seconds / times[0]:5.2f}x torch.load")
    return times[1] / times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="checkpoint size, at least 200")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time with the file dropped from the cache")
    parser.add_argument("--crc-only", action="store_true", help="only the cost of the CRC-32 check")
    args = parser.parse_args()
    if args.size_mb < 200:
        parser.error("--size-mb must be at least 200")
    layers = -(-args.size_mb * 2**20 // (WIDTH * WIDTH * 4))  # round up

    directory = Path(tempfile.mkdtemp(prefix="checkpoint-bench-"))
    try:
        torch.manual_seed(0)
        model = build(layers)
        checkpoint = directory / "model.pt"
        tensors = directory / "model.safetensors"
        save_checkpoint(checkpoint, model)
        save_file(model.state_dict(), str(tensors))
        size = checkpoint.stat().st_size
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
        print(f"checkpoint: {size / 1e6:.0f} MB ({layers} x Linear({WIDTH}, {WIDTH})), "
              f"safetensors file {tensors.stat().st_size / 1e6:.0f} MB")

        if args.crc_only:
            crc_cost(checkpoint, args.repeats)
            return
        buffer = bytearray(max(size, tensors.stat().st_size))
        recipes = load_recipes(checkpoint, tensors, layers, buffer)
        residency = resident_fraction(checkpoint)
        cache = "unknown" if residency is None else f"{residency:.0%} of the file's pages resident"
        print(f"page cache before the warm runs: {cache} (the file was just written)")
        warm = report(f"load, warm page cache (median of {args.repeats})", recipes, args.repeats)

        if args.cold:
            drop = lambda: [drop_from_page_cache(p) for p in (checkpoint, tensors)]  # noqa: E731
            drop()
            residency = resident_fraction(checkpoint)
            cache = "unknown" if residency is None else f"{residency:.0%} resident after the drop"
            print(f"\npage cache after posix_fadvise(DONTNEED): {cache}")
            report(f"load, cold page cache (median of {args.repeats}, dropped before each run)",
                   recipes, args.repeats, before=drop)

        if torch.cuda.is_available():
            device = torch.device("cuda")
            report(f"load onto {torch.cuda.get_device_name(device)}, warm page cache "
                   f"(median of {args.repeats}; x the CPU floor)",
                   cuda_load_recipes(checkpoint, tensors, layers, device), args.repeats,
                   device="cuda", floor=warm[FLOOR])

        state = {"model": model.state_dict()}
        plain, atomic = directory / "plain.pt", directory / "atomic.pt"

        def plain_fsync():
            with open(plain, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())

        saves = {
            "torch.save (no fsync)": lambda: torch.save(state, plain),
            "torch.save + fsync": plain_fsync,
            "save_checkpoint (tmp + check + fsync + os.replace)": lambda: save_checkpoint(atomic, model),
        }
        runs = seconds_each(list(saves.values()), args.repeats)
        times = {name: statistics.median(r) for name, r in zip(saves, runs)}
        print(f"\nsave, {size / 1e6:.0f} MB (median of {args.repeats})")
        base = times["torch.save (no fsync)"]
        for name, seconds in times.items():
            print(f"  {name:50} {seconds:9.3f} s  {seconds / base:5.2f}x plain")
        crc_cost(checkpoint, args.repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        print("\ntemporary files removed")


if __name__ == "__main__":
    main()
