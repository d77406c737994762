"""Shared page code: how long a function takes and how much memory it needs at its peak.

Public torch APIs only. Used by the intermediate page (what each extraction
method costs) and by every script in ``benchmarks/``.
"""

import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["cpu_peak_memory_bytes", "median_seconds", "median_seconds_each", "peak_memory_bytes",
           "seconds_each"]


def seconds_each(fns: Sequence[Callable[[], Any]], repeats: int = 5,
                 device: torch.device | str = "cpu",
                 before: Callable[[], Any] | None = None) -> list[list[float]]:
    """Wall-clock seconds of each ``fn()`` in each of ``repeats`` rounds, after one warm-up run each.

    The functions take turns (one run of each per round), so a change in the
    machine's load affects all of them alike. ``before()``, if given, runs
    untimed before every run (e.g. to drop a file from the page cache). On
    CUDA the device is synchronised around each run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    cuda = torch.device(device).type == "cuda"
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, runs in zip(fns, times):
            if before is not None:
                before()
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            runs.append(time.perf_counter() - start)
    return times


def median_seconds_each(fns: Sequence[Callable[[], Any]], repeats: int = 5,
                        device: torch.device | str = "cpu",
                        before: Callable[[], Any] | None = None) -> list[float]:
    """The median of ``seconds_each`` for each function."""
    return [statistics.median(runs) for runs in seconds_each(fns, repeats, device, before)]


def median_seconds(fn: Callable[[], Any], repeats: int = 5, device: torch.device | str = "cpu",
                   before: Callable[[], Any] | None = None) -> float:
    """Median wall-clock time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    return median_seconds_each([fn], repeats, device, before)[0]


def cpu_peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Most host memory that tensors allocated while ``fn()`` ran held at one time, in bytes.

    The profiler (``profile_memory=True``) records every allocation and free
    with its size; summed in time order they give the running total, whose
    maximum is the peak, counted from what was allocated when ``fn`` started.
    """
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's log lines off stderr
    gc.collect()  # free earlier garbage now, not while we count
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as profiler:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as file:
            events = json.load(file)["traceEvents"]
    host = {0, 2, 5}  # the profiler's device types CPU, MKLDNN and IDEEP
    changes = sorted((e["ts"], e["args"]["Bytes"]) for e in events
                     if e.get("name") == "[memory]" and e["args"].get("Device Type") in host)
    total = peak = 0
    for _, change in changes:
        total += change
        peak = max(peak, total)
    return peak


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak memory of ``fn()`` above what was allocated before, in bytes.

    On CUDA the allocator keeps the peak (``torch.cuda.max_memory_allocated``);
    elsewhere ``cpu_peak_memory_bytes`` asks the profiler.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_peak_memory_bytes(fn)
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
