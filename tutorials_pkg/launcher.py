"""Page machinery, not a recipe: run a function on several ranks from a page or a test.

``run_on_ranks(fn, *args)`` is ``torch.multiprocessing.start_processes`` (what
``mp.spawn`` calls) plus what pages and tests need and ``mp.spawn`` lacks:

- each rank's return value comes back (tensors on the CPU);
- a failing rank is named with its own traceback: the first to fail, not the
  first whose exit torch noticed (the others often fail a moment later,
  having lost their partner); torch stops the others;
- a run still going after ``timeout_s`` is stopped and is a ``TimeoutError``
  (``collective_timeout_s`` bounds each collective of the group it starts);
- nothing outlives the call: each rank leads a process group of its own, and
  at the end every group is killed, so what a rank started (a
  ``subprocess.Popen``, a forked child) goes with it, unless it left the group.

The few lines a reader would use to start ranks from Python are
``spawn_ranks`` in ``tutorials_pkg.distributed``.
Used by: distributed (importable from ``tutorials_pkg.distributed``).
"""

import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

__all__ = ["RankFailedError", "RemoteTraceback", "free_port", "run_on_ranks", "torchrun_variables"]

GRACE_S = 0.5  # once a rank failed: how long torch waits for the others, then after SIGTERM
STARTUP_S = 300  # how long a rank waits for the others to start


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a rank's process (a ``RankFailedError``'s cause)."""


class RankFailedError(RuntimeError):
    """One or more ranks raised, or died. ``failures`` maps each to its traceback (or how it
    died), the first to fail first; ``rank`` is that first one. The message names each rank
    and its exception; the tracebacks are the error's cause, printed with it where Python
    prints whole tracebacks."""

    def __init__(self, world_size: int, failures: dict[int, str]):
        self.failures = failures
        self.rank = next(iter(failures))
        super().__init__("\n".join(f"rank {rank} of {world_size} failed with "
                                   f"{text.strip().splitlines()[-1]}"
                                   for rank, text in failures.items()))

    @property
    def traceback(self) -> str:
        return self.failures[self.rank]


def free_port() -> int:
    """A TCP port nobody listens on right now: where rank 0 will meet the others."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_variables(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables that ``torchrun`` documents, as ``torchrun --standalone
    --nproc-per-node=world_size`` sets them for rank ``rank`` (plus ``GROUP_WORLD_SIZE``
    and ``ROLE_NAME``, which it also sets). Its internal ones are left out:
    ``TORCHELASTIC_ERROR_FILE``, ``TORCHELASTIC_USE_AGENT_STORE`` (there is no agent
    here), ``TORCHELASTIC_SIGNALS_TO_HANDLE``, ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` and
    ``OMP_NUM_THREADS``."""
    rank_, size = str(rank), str(world_size)
    return {"RANK": rank_, "LOCAL_RANK": rank_, "ROLE_RANK": rank_, "GROUP_RANK": "0",
            "WORLD_SIZE": size, "LOCAL_WORLD_SIZE": size, "ROLE_WORLD_SIZE": size,
            "GROUP_WORLD_SIZE": "1", "ROLE_NAME": "default",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
            "TORCHELASTIC_RUN_ID": "none"}


# --- in each rank's process -----------------------------------------------------------------

def run_rank(rank: int, world_size: int, port: int, folder: str, backend: str | None,
             collective_timeout_s: float, fn, args: tuple) -> None:
    """Join a ``backend`` group (``None``: ``fn`` joins one itself), call
    ``fn(rank, world_size, *args)``, leave the group, and save the result to
    ``folder/rank<N>.pt``. An exception propagates: torch reports it to the caller."""
    os.environ.update(torchrun_variables(rank, world_size, port))
    if backend is not None:
        device = torch.device("cuda", rank) if backend == "nccl" else None
        if device is not None:
            torch.cuda.set_device(device)  # this rank's own GPU, before the group exists
        # Meet every rank first, however long the others take to start; only then
        # does collective_timeout_s (which also bounds the group's setup) count.
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=rank == 0,
                              timeout=timedelta(seconds=STARTUP_S))
        store.set(f"started{rank}", "1")
        store.wait([f"started{other}" for other in range(world_size)])
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s), device_id=device)
    try:
        result = fn(rank, world_size, *args)
    finally:
        # Free what fn left in reference cycles (an FSDP model is in some) while the
        # group is still up: freed at exit instead, it can abort the process.
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, os.path.join(folder, f"rank{rank}.pt"))  # read only if the rank exits 0


def _rank_process(rank: int, *args) -> None:
    """A rank's process, as ``start_processes`` calls it: leader of a process group of its
    own, so that killing the group kills what it started too."""
    os.setpgrp()
    run_rank(rank, *args)


# --- in the caller's process ----------------------------------------------------------------

def _check_importable(fn) -> None:
    """The new processes import ``fn`` by its module and name: refuse what they could not find."""
    name = getattr(fn, "__qualname__", "")
    module = sys.modules.get(getattr(fn, "__module__", None))
    if not callable(fn) or not name or "<" in name or module is None:
        raise TypeError(f"fn must be a function defined at the top level of a module, got {fn!r}")
    if not hasattr(module, "__file__"):  # a notebook's or an interactive session's __main__
        raise TypeError(f"{name} is defined in a notebook or an interactive session, where the "
                        "new processes cannot import it: define it in a .py module")


def _failures(context: mp.ProcessContext, error: ProcessException) -> dict[int, str]:
    """Every rank that failed, with its traceback, the first to fail first. torch names the
    first exit it noticed; of the ranks that raised, the one whose error file torch's
    ``_wrap`` wrote first failed first (the others often fail a moment later, having lost
    their partner). A rank torch noticed dying without a traceback comes first."""
    failures = {}
    if not os.path.exists(context.error_files[error.error_index]):  # a signal, os._exit
        how = f"signal {error.signal_name}" if error.signal_name else f"exit code {error.exit_code}"
        failures[error.error_index] = f"{how} and no traceback"
    written = [rank for rank, path in enumerate(context.error_files) if os.path.exists(path)]
    for rank in sorted(written, key=lambda rank: os.stat(context.error_files[rank]).st_mtime_ns):
        with open(context.error_files[rank], "rb") as file:
            failures[rank] = pickle.load(file)  # the traceback text, as torch wrote it
    return failures


@contextlib.contextmanager
def _quiet_spawn_log():
    """torch logs each rank it terminates ("Terminating process <pid> ..."): a pid on every page."""
    log = logging.getLogger("torch.multiprocessing.spawn")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _join(context: mp.ProcessContext, world_size: int, timeout_s: float) -> None:
    """Wait until every rank has exited 0; raise on a failed rank or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    try:
        with _quiet_spawn_log():
            while not context.join(max(0.0, deadline - time.monotonic()), grace_period=GRACE_S):
                if time.monotonic() >= deadline:
                    running = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
                    raise TimeoutError(
                        f"ranks {running} of {world_size} were still running after {timeout_s} s "
                        "and were stopped: is a rank waiting for something the others never do?")
    except ProcessException as error:
        failures = _failures(context, error)
        tracebacks = "".join(f"\n--- rank {rank} ---\n{text}" for rank, text in failures.items())
        raise RankFailedError(world_size, failures) from RemoteTraceback(tracebacks)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)  # signal 0: only asks whether the group has a member
    except (ProcessLookupError, PermissionError):  # PermissionError: another user's group now
        return False
    return True


def _stop(context: mp.ProcessContext) -> None:
    """Kill every rank and its process group, wait until they are gone, and remove torch's
    error files."""
    for process in context.processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # no group (any more)
            os.killpg(process.pid, signal.SIGKILL)  # the rank, and what it started
        process.kill()  # a rank stopped before it made its group
        process.join()
    deadline = time.monotonic() + 5.0  # a killed process takes a moment to go
    while any(_group_exists(p.pid) for p in context.processes) and time.monotonic() < deadline:
        time.sleep(0.01)
    for path in context.error_files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def run_on_ranks(fn, *args, world_size: int = 2, backend: str | None = "gloo",
                 timeout_s: float = 120.0, collective_timeout_s: float = 30.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes with the variables
    ``torchrun`` sets (``torchrun_variables``), joined in a ``backend`` group (``"nccl"``:
    rank N on GPU N; ``None``: ``fn`` joins one itself, as a ``torchrun`` script does).

    Returns what each rank returned, by rank, tensors on the CPU. A rank that raises or dies
    ends the run with ``RankFailedError`` (the first to fail, with its traceback); a run still
    going after ``timeout_s`` ends with ``TimeoutError``. Either way, and on success, every
    rank and what it started is stopped before this returns.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    _check_importable(fn)
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        context = mp.start_processes(
            _rank_process, args=(world_size, free_port(), folder, backend, collective_timeout_s,
                                 fn, args),
            nprocs=world_size, join=False, start_method="spawn")  # a fresh interpreter per rank
        try:
            _join(context, world_size, timeout_s)
        finally:
            _stop(context)
        results = []
        for rank in range(world_size):
            path = os.path.join(folder, f"rank{rank}.pt")
            if not os.path.exists(path):  # it exited 0 without returning (sys.exit(0))
                raise RankFailedError(world_size, {rank: "exit code 0 and no result"})
            # Written by our own ranks into our own temporary folder: any picklable result.
            results.append(torch.load(path, map_location="cpu", weights_only=False))
        return results
