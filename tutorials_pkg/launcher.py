"""Shared page code: a small cluster on one machine, for the distributed page and its tests.

``run_on_ranks`` starts one process per rank, as ``torchrun`` does, with every
rank's result or error brought back and nothing left running afterwards.
Used by: distributed (importable from ``tutorials_pkg.distributed``).
"""

import contextlib
import gc
import glob
import io
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["RankFailedError", "RemoteTraceback", "run_on_ranks"]

BACKENDS = ("gloo", "nccl", None)


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in another process."""


class RankFailedError(RuntimeError):
    """One or more ranks raised; ``failures`` maps each failed rank to ``"Type: message"``."""

    def __init__(self, failures: dict[int, str], world_size: int, stopped: list[int]):
        self.failures = failures
        self.stopped = stopped
        lines = [f"rank {rank} of {world_size} failed with {error}" for rank, error in failures.items()]
        if stopped:
            lines.append(f"stopped the ranks still running: {stopped}")
        super().__init__("\n".join(lines))


def free_port() -> int:
    """A TCP port nobody listens on right now: where rank 0 will meet the others."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- in each rank's process ----------------------------------------------------------------

def _loads_back(value) -> bool:
    """Whether ``value`` survives ``torch.save`` and a ``weights_only`` ``torch.load``."""
    try:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
        return True
    except Exception:
        return False


def _first_unsendable(value, where: str = "result") -> str | None:
    """The first thing in ``value`` that cannot come back, as ``result['a'] (numpy.ndarray)``."""
    if _loads_back(value):
        return None
    if isinstance(value, (list, tuple, dict)):
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            found = _first_unsendable(item, f"{where}[{key!r}]")
            if found:
                return found
    return f"{where} ({type(value).__module__}.{type(value).__qualname__})"


def _outcome_bytes(outcome: dict) -> bytes:
    """``outcome`` as ``torch.save`` writes it, checked to load back with ``weights_only``."""
    buffer = io.BytesIO()
    try:
        torch.save(outcome, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception:
        where = _first_unsendable(outcome.get("result"))
        raise TypeError(f"the result cannot come back to the caller: {where} is not a tensor, "
                        "number, string, or list, tuple or dict of them (a numpy array: "
                        "torch.from_numpy(array) or array.tolist())") from None
    return buffer.getvalue()


def _write_atomically(path: str, data: bytes) -> None:
    """Write to a temporary name, then rename: a rank stopped while writing leaves no half file."""
    temporary = f"{path}.partial"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def run_rank(rank: int, world_size: int, port: int, folder: str, collective_timeout_s: float,
             backend: str | None, fn, args: tuple) -> None:
    """What each process runs: join the group, call ``fn(rank, world_size, *args)``,
    leave the group, and write ``{"result": ...}`` or ``{"error": ..., "traceback": ...}``
    to ``folder/rank<N>.pt``.

    ``collective_timeout_s`` bounds every collective: a rank waiting for peers
    that never come raises instead of hanging (gloo's default is 30 minutes).
    """
    # The variables torchrun sets for every process it starts.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        if backend is not None:
            options = {}
            if backend == "nccl":  # this rank's own GPU, chosen before the group exists
                options["device_id"] = torch.device("cuda", rank)
                torch.cuda.set_device(options["device_id"])
            dist.init_process_group(backend, rank=rank, world_size=world_size,
                                    timeout=timedelta(seconds=collective_timeout_s), **options)
        data = _outcome_bytes({"result": fn(rank, world_size, *args)})
    except Exception as error:
        data = _outcome_bytes({"error": f"{type(error).__name__}: {error}",
                               "traceback": traceback.format_exc(), "time": time.time()})
    finally:
        # Free what fn left in reference cycles (an FSDP model is in some) while the
        # group is still up: freed at exit instead, it can abort the process.
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
    _write_atomically(os.path.join(folder, f"rank{rank}.pt"), data)


def _rank_process(*args) -> None:
    """A rank's process: leader of a session of its own, so that stopping it stops
    whatever it started too (a ``subprocess.Popen``, a forked child)."""
    os.setsid()
    run_rank(*args)


# --- in the caller's process ---------------------------------------------------------------

def read_outcome(folder: str, rank: int) -> dict:
    """What a finished rank wrote (tensors on the CPU); empty if it wrote nothing
    (it crashed or was stopped)."""
    path = os.path.join(folder, f"rank{rank}.pt")
    return torch.load(path, map_location="cpu", weights_only=True) if os.path.exists(path) else {}


def wait_for_ranks(processes: list, folder: str, timeout_s: float) -> list[int]:
    """Wait until every rank has finished, one has failed, or ``timeout_s`` has passed.

    Returns the ranks still running (empty when all finished).
    """
    deadline = time.monotonic() + timeout_s
    running = dict(enumerate(processes))
    while running and (remaining := deadline - time.monotonic()) > 0:
        wait([process.sentinel for process in running.values()], timeout=remaining)
        for rank, process in list(running.items()):
            if process.is_alive():
                continue
            del running[rank]
            outcome = read_outcome(folder, rank)
            if "error" in outcome or (process.exitcode != 0 and not outcome):
                return sorted(running)  # a rank failed: the others may wait for it forever
    return sorted(running)


def _session(sid: int) -> list[int]:
    """The running processes (zombies aside) of session ``sid``, read from Linux's /proc."""
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as file:
                state, _, _, session = file.read().rpartition(")")[2].split()[:4]
        except (OSError, ValueError):  # gone meanwhile
            continue
        if int(session) == sid and state != "Z":
            members.append(int(stat.split("/")[2]))
    return members


def _signal(process, signum: int) -> None:
    """Send ``signum`` to the rank and to every process of its session (what it started)."""
    pids = set(_session(process.pid))
    if process.is_alive():
        pids.add(process.pid)  # also a rank stopped before it called setsid
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)  # the rank's group, where there is no /proc


def stop_processes(processes: list, grace_s: float = 5.0) -> None:
    """Stop every rank and what it started (SIGTERM, then SIGKILL), and wait until they are gone."""
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if process.is_alive():
            _signal(process, signal.SIGTERM)
    for process in started:
        process.join(grace_s)
        _signal(process, signal.SIGKILL)  # also what a finished rank left running
        process.join()
    deadline = time.monotonic() + grace_s  # killed processes take a moment to go
    while any(_session(process.pid) for process in started) and time.monotonic() < deadline:
        time.sleep(0.01)


def check_importable(fn) -> None:
    """Spawned processes import ``fn`` by its module and name: refuse what they could not find."""
    name = getattr(fn, "__qualname__", "")
    module = sys.modules.get(getattr(fn, "__module__", None))
    if not callable(fn) or not name or "<" in name or module is None:
        raise TypeError(f"fn must be a function defined at the top level of a module, got {fn!r}")
    if module.__name__ == "__main__" and not hasattr(module, "__file__"):
        raise TypeError(f"{name} is defined in a notebook or an interactive session, where the "
                        "spawned processes cannot import it: define it in a .py module")


def check_backend(backend: str | None, world_size: int) -> None:
    """Refuse a backend ``run_on_ranks`` does not start, and nccl without a GPU per rank."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl" and world_size > torch.cuda.device_count():
        raise ValueError(f"nccl needs a GPU per rank: world_size {world_size}, but "
                         f"{torch.cuda.device_count()} GPU(s) here")


def run_on_ranks(fn, *args, world_size: int = 2, backend: str | None = "gloo",
                 timeout_s: float = 120.0, collective_timeout_s: float = 30.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes, with the variables
    ``torchrun`` sets, joined by a ``backend`` group (``None``: ``fn`` joins one itself).

    Returns each rank's result, by rank, tensors on the CPU. If a rank raises,
    the others are stopped and ``RankFailedError`` names every rank that
    failed and its exception; after ``timeout_s``, all ranks are stopped and
    ``TimeoutError`` names those still running. What a rank started is stopped
    with it, unless it left the rank's session (``setsid``).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    check_backend(backend, world_size)
    check_importable(fn)
    spawn = mp.get_context("spawn")  # a fresh interpreter per rank, as torchrun starts them
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        processes = [spawn.Process(target=_rank_process,
                                   args=(rank, world_size, port, folder, collective_timeout_s,
                                         backend, fn, args))
                     for rank in range(world_size)]
        try:
            for process in processes:
                process.start()
            still_running = wait_for_ranks(processes, folder, timeout_s)
        finally:
            stop_processes(processes)
        outcomes = [read_outcome(folder, rank) for rank in range(world_size)]

    errors = sorted((outcome["time"], rank) for rank, outcome in enumerate(outcomes) if "error" in outcome)
    failures = {rank: outcomes[rank]["error"] for _, rank in errors}  # the first to fail first
    for rank, process in enumerate(processes):
        if not outcomes[rank] and rank not in still_running:
            failures[rank] = f"exit code {process.exitcode} and no result"
    still_running = [rank for rank in still_running if not outcomes[rank]]
    if failures:
        tracebacks = "".join(f"\n--- rank {rank} ---\n{outcomes[rank]['traceback']}"
                             for rank in failures if "traceback" in outcomes[rank])
        raise RankFailedError(failures, world_size, still_running) from RemoteTraceback(tracebacks)
    if still_running:
        raise TimeoutError(f"ranks {still_running} of {world_size} were still running after "
                           f"{timeout_s} s and were stopped: is a rank waiting for something "
                           "the others never do?")
    return [outcome["result"] for outcome in outcomes]
