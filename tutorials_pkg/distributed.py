"""Chapter: checkpoints with DDP and sharded checkpoints.

``run_on_ranks`` starts a small cluster on one machine: one process per rank,
joined by a gloo process group on the CPU, always cleaned up, with every
rank's result or error brought back. The functions it runs are what a
training script runs on each rank: a DDP step, a save on rank 0 behind a
barrier, a load on every rank, and a sharded checkpoint written and read with
``torch.distributed.checkpoint`` (DCP). On a real cluster ``torchrun`` starts
the processes instead; the code each rank runs stays the same.
"""

import gc
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP


# --- starting ranks and cleaning up after them ---------------------------------------------

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


def run_rank(rank: int, world_size: int, port: int, folder: str, collective_timeout_s: float,
             fn, args: tuple) -> None:
    """What each process runs: join the gloo group, call ``fn(rank, world_size, *args)``,
    leave the group, and write ``{"result": ...}`` or ``{"error": ..., "traceback": ...}``
    to ``folder/rank<N>.pt``.

    ``collective_timeout_s`` bounds every collective: a rank waiting for peers
    that never come raises instead of hanging (gloo's default is 30 minutes).
    """
    # The variables torchrun sets for every process it starts.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s))
        outcome = {"result": fn(rank, world_size, *args)}
    except Exception as error:
        outcome = {"error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc(), "time": time.time()}
    finally:
        # Free what fn left in reference cycles (an FSDP model is in some) while the
        # group is still up: freed at exit instead, it can abort the process.
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(outcome, os.path.join(folder, f"rank{rank}.pt"))


def read_outcome(folder: str, rank: int) -> dict:
    """What a finished rank wrote; empty if it wrote nothing (it crashed or was stopped)."""
    path = os.path.join(folder, f"rank{rank}.pt")
    return torch.load(path, weights_only=True) if os.path.exists(path) else {}


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


def stop_processes(processes: list, grace_s: float = 5.0) -> None:
    """Terminate the processes still alive (SIGTERM, then SIGKILL), and join them all."""
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if process.is_alive():
            process.terminate()
    for process in started:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()


def check_importable(fn) -> None:
    """Spawned processes import ``fn`` by its module and name: refuse what they could not find."""
    name = getattr(fn, "__qualname__", "")
    module = sys.modules.get(getattr(fn, "__module__", None))
    if not callable(fn) or not name or "<" in name or module is None:
        raise TypeError(f"fn must be a function defined at the top level of a module, got {fn!r}")
    if module.__name__ == "__main__" and not hasattr(module, "__file__"):
        raise TypeError(f"{name} is defined in a notebook or an interactive session, where the "
                        "spawned processes cannot import it: define it in a .py module")


def run_on_ranks(fn, *args, world_size: int = 2, timeout_s: float = 120.0,
                 collective_timeout_s: float = 30.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined by a gloo group.

    Returns each rank's result, by rank. ``fn`` must be defined at the top level
    of a module (spawned processes import it by name) and return tensors,
    numbers, strings, or lists, tuples and dicts of them. If a rank raises,
    the others are stopped and ``RankFailedError`` names every rank that
    failed and its exception; if the run is not over after ``timeout_s``, all
    ranks are stopped and ``TimeoutError`` names the ones still running. No
    process outlives the call.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    check_importable(fn)
    spawn = mp.get_context("spawn")  # a fresh interpreter per rank, as torchrun starts them
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        processes = [spawn.Process(target=run_rank, args=(rank, world_size, port, folder,
                                                          collective_timeout_s, fn, args))
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


# --- what every rank runs: a model, its data, one training step ----------------------------

def tiny_model(seed: int = 0) -> nn.Sequential:
    """A two-layer network that trains in milliseconds, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def rank_batch(rank: int, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's own batch: different data on every rank, as a ``DistributedSampler`` gives."""
    generator = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(batch_size, 4, generator=generator)
    y = torch.randint(0, 2, (batch_size,), generator=generator)
    return x, y


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimisation step; under DDP, ``backward`` averages the gradients of all ranks."""
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def rank_device(local_rank: int) -> torch.device:
    """The device a rank works on: its own GPU when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        # cuda:<local rank>; ranks share GPUs when there are more ranks than GPUs
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


# --- a checkpoint in one file: save on rank 0, load on every rank ---------------------------

def save_on_rank0(model: nn.Module, path: str) -> None:
    """Every rank calls this; rank 0 writes the full weights, and all wait until the file is complete.

    ``get_model_state_dict`` gives the keys of the model inside the wrapper
    (no ``module.`` from DDP) and, with these options, gathers sharded
    parameters onto rank 0's CPU.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state_dict = get_model_state_dict(model, options=options)  # every rank must call it
    if dist.get_rank() == 0:
        torch.save(state_dict, path)
    dist.barrier()  # nobody reads the file before rank 0 has finished writing it


def train_and_save_on_rank0(rank: int, world_size: int, path: str) -> dict:
    """Per rank: wrap in DDP, train one step on this rank's batch, save on rank 0."""
    model = DDP(tiny_model(seed=rank))  # DDP copies rank 0's weights to every rank here
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = train_step(model, optimizer, *rank_batch(rank))
    save_on_rank0(model, path)
    return {"loss": loss, "state_dict": model.module.state_dict()}


def load_on_every_rank(rank: int, world_size: int, path: str) -> dict:
    """Per rank: load the rank-0 file onto this rank's own device (``map_location``)."""
    device = rank_device(int(os.environ.get("LOCAL_RANK", rank)))
    model = tiny_model(seed=100 + rank).to(device)  # other weights, which the load replaces
    state_dict = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state_dict)
    return {"device": str(device), "keys": list(state_dict),
            "state_dict": {name: tensor.cpu() for name, tensor in model.state_dict().items()}}


def storage_locations(path: str) -> list[str]:
    """The devices a checkpoint's tensors were saved from: where ``torch.load`` puts them
    when no ``map_location`` is given."""
    locations = set()

    def keep_on_cpu(storage, location):  # torch.load calls this for every storage
        locations.add(location)
        return storage

    torch.load(path, map_location=keep_on_cpu, weights_only=True)
    return sorted(locations)


# --- a sharded checkpoint with torch.distributed.checkpoint (DCP) ---------------------------

def shard_model(model: nn.Module, world_size: int) -> nn.Module:
    """FSDP2: split every parameter along dim 0 across the ranks (each keeps 1/world_size)."""
    mesh = init_device_mesh("cpu", (world_size,))  # on GPUs: init_device_mesh("cuda", ...)
    return fully_shard(model, mesh=mesh)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank, gathered from the shards (a collective)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def save_sharded(rank: int, world_size: int, folder: str) -> dict:
    """Per rank: train a sharded model one step, then write model and optimizer with DCP.

    Each rank writes only the shards it holds; no rank ever holds the whole model.
    """
    model = shard_model(tiny_model(seed=0), world_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, optimizer, *rank_batch(rank))
    state = {"model": get_model_state_dict(model),
             "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=folder)
    return {"local_shapes": {name: tuple(t.to_local().shape) for name, t in state["model"].items()},
            "state_dict": full_state_dict(model)}


def load_sharded(rank: int, world_size: int, folder: str) -> dict:
    """Per rank: build the same sharded model and optimizer, and load the DCP checkpoint into them.

    ``dcp.load`` fills the tensors of the state dict it is given in place, each
    rank reading only what its shards need, whatever world size wrote it.
    """
    model = shard_model(tiny_model(seed=1), world_size)  # other weights, which the load replaces
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {"model": get_model_state_dict(model),
             "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    options = StateDictOptions(full_state_dict=True)
    return {"state_dict": full_state_dict(model),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=options)}


def load_sharded_into_plain_model(folder: str, model: nn.Module) -> nn.Module:
    """Read the model part of a DCP checkpoint into an ordinary model, in this one process."""
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it reads in one process: we mean it
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=folder, no_dist=True)
    model.load_state_dict(state["model"])
    return model


# --- the wrong ways, which the page shows failing ------------------------------------------

def fail_on_rank(rank: int, world_size: int, failing_rank: int = 1) -> float:
    """Per rank: ``failing_rank`` raises before an all-reduce that the others wait in."""
    dist.barrier()  # all ranks are connected
    if rank == failing_rank:
        raise ValueError(f"rank {rank} fails here on purpose")
    total = torch.ones(1)
    dist.all_reduce(total)  # the failed rank never arrives
    return total.item()


def load_without_barrier(rank: int, world_size: int, path: str, write_s: float = 1.0) -> dict:
    """The wrong way: rank 0 saves, every rank loads at once, with no barrier in between.

    Rank 0 takes ``write_s`` seconds before writing (a large checkpoint takes
    that long); the other ranks read before the file is there.
    """
    model = tiny_model(seed=0)
    if rank == 0:
        time.sleep(write_s)
        torch.save(model.state_dict(), path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_with_barrier_inside_if(rank: int, world_size: int, path: str) -> float:
    """The wrong way: the barrier sits inside ``if rank == 0``, so only rank 0 waits in it.

    The other ranks go on to the next collective (here an all-reduce of the
    loss, for the log); the two never match, and every rank waits until the
    collective timeout.
    """
    model = tiny_model(seed=0)
    if rank == 0:
        torch.save(model.state_dict(), path)
        dist.barrier()  # wrong: the other ranks never get here
    loss = torch.tensor([0.5])
    dist.all_reduce(loss)
    return loss.item() / world_size
