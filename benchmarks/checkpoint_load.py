"""How fast does a large checkpoint load, compared with just reading its bytes?

Writes a checkpoint of at least 200 MB into a temporary directory, then times,
in one run and with the median of ``--repeats`` runs each:

- the floor: reading the file's bytes into a buffer allocated beforehand;
- ``torch.load`` alone, and the usual recipe: build the model (random init),
  ``torch.load``, ``load_state_dict`` (a copy);
- the fast recipe: build on the meta device, ``torch.load(mmap=True)``,
  ``load_state_dict(assign=True)``; mapped lazily, so it is timed both as it
  returns and after touching one byte of every page of every tensor (which
  brings the whole file into memory and maps it; from a warm page cache that
  maps without copying, so it can beat the floor, which copies);
- safetensors: ``load_file`` + ``load_state_dict(assign=True)`` into a meta model
  (``load_file`` maps the file too, so also timed lazy and with every page touched);

with each time's ratio to the floor. Then the save time: plain ``torch.save``,
``torch.save`` + fsync, and the atomic ``save_checkpoint`` (temporary file,
fsync, ``os.replace``). It reports how much of the file was in the page cache
(``mincore``) before the timed loads, and with ``--cold`` also times loads
after asking the kernel to drop the file from the cache
(``posix_fadvise(DONTNEED)``). The temporary files are removed at the end.

    python -m benchmarks.checkpoint_load [--size-mb 256] [--repeats 5] [--cold]
"""

import argparse
import ctypes
import mmap
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tutorials_pkg.measure import median_seconds
from tutorials_pkg.save_load import load_on_meta, save_checkpoint

WIDTH = 4096  # one Linear(4096, 4096) holds 64 MiB of float32 weights


def build(layers: int) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])


def read_floor(path: Path, buffer: bytearray) -> int:
    with open(path, "rb", buffering=0) as file:
        view, total = memoryview(buffer), 0
        while count := file.readinto(view[total:]):
            total += count
    return total


def touch_every_page(model: nn.Module) -> float:
    """Read one byte of every 4 KiB page of every tensor, so that mapped data is really read."""
    total = 0.0
    for tensor in [*model.parameters(), *model.buffers()]:
        total += tensor.detach().reshape(-1).view(torch.uint8)[::4096].sum().item()
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


def drop_from_cache(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_recipes(checkpoint: Path, tensors: Path, layers: int, buffer: bytearray):
    def usual():
        model = build(layers)
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        return model

    def meta_mmap_touched():
        model = load_on_meta(checkpoint, lambda: build(layers))
        touch_every_page(model)
        return model

    def safetensors_meta():
        with torch.device("meta"):
            model = build(layers)
        model.load_state_dict(load_file(tensors), assign=True)
        return model

    def safetensors_meta_touched():
        model = safetensors_meta()
        touch_every_page(model)
        return model

    return [
        ("read the bytes (floor)", checkpoint, lambda: read_floor(checkpoint, buffer)),
        ("torch.load only", checkpoint, lambda: torch.load(checkpoint, weights_only=True)),
        ("build + torch.load + load_state_dict", checkpoint, usual),
        ("meta + mmap + assign (lazy, as returned)", checkpoint,
         lambda: load_on_meta(checkpoint, lambda: build(layers))),
        ("meta + mmap + assign, every page touched", checkpoint, meta_mmap_touched),
        ("safetensors + assign (lazy, as returned)", tensors, safetensors_meta),
        ("safetensors + assign, every page touched", tensors, safetensors_meta_touched),
    ]


def report_loads(title: str, recipes, repeats: int, before=lambda path: None) -> None:
    times = {name: median_seconds(run, repeats, before=lambda p=path: before(p)) for name, path, run in recipes}
    floor = times["read the bytes (floor)"]
    print(f"\n{title}")
    print(f"  {'recipe':44} {'median s':>9} {'x floor':>8}")
    for name, seconds in times.items():
        print(f"  {name:44} {seconds:9.3f} {seconds / floor:8.2f}")
    complete = {n: t for n, t in times.items()
                if n not in ("read the bytes (floor)", "torch.load only")
                and "lazy" not in n}
    fastest = min(complete, key=complete.get)
    ratio = complete[fastest] / floor
    verdict = "within" if ratio <= 1.5 else "NOT within"
    print(f"  fastest complete load: {fastest}, {ratio:.2f}x the floor ({verdict} the 1.5x target)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="checkpoint size, at least 200")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time with the file dropped from the cache")
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
        fsync_file(tensors)
        size = checkpoint.stat().st_size
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
        print(f"checkpoint: {size / 1e6:.0f} MB ({layers} x Linear({WIDTH}, {WIDTH})), "
              f"safetensors file {tensors.stat().st_size / 1e6:.0f} MB, in {directory}")

        buffer = bytearray(max(size, tensors.stat().st_size))
        recipes = load_recipes(checkpoint, tensors, layers, buffer)
        for _name, _path, run in recipes:  # warm-up: every file read once, every code path run once
            run()
        residency = resident_fraction(checkpoint)
        cache = "unknown" if residency is None else f"{residency:.0%} of the file's pages resident"
        print(f"page cache before the warm runs: {cache} (warm: the file was just written and read)")
        report_loads(f"load, warm page cache (median of {args.repeats})", recipes, args.repeats)

        if args.cold:
            drop_from_cache(checkpoint, tensors)
            residency = resident_fraction(checkpoint)
            cache = "unknown" if residency is None else f"{residency:.0%} resident after the drop"
            print(f"\npage cache after posix_fadvise(DONTNEED): {cache}")
            report_loads(f"load, cold page cache (median of {args.repeats}, dropped before each run)",
                         recipes, args.repeats, before=lambda path: drop_from_cache(path))

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
            "save_checkpoint (tmp + fsync + os.replace)": lambda: save_checkpoint(atomic, model),
        }
        save_repeats = args.repeats
        times = {name: median_seconds(run, save_repeats) for name, run in saves.items()}
        print(f"\nsave, {size / 1e6:.0f} MB (median of {save_repeats})")
        base = times["torch.save (no fsync)"]
        for name, seconds in times.items():
            print(f"  {name:44} {seconds:9.3f} s  {seconds / base:5.2f}x plain")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"\nremoved {directory}")


if __name__ == "__main__":
    main()
