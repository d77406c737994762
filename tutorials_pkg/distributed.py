"""Chapter: checkpoints with DDP and sharded checkpoints.

The functions here are what a training script runs on each rank: a DDP step,
a save on rank 0 behind a barrier, a load on every rank, and a sharded
checkpoint written and read with ``torch.distributed.checkpoint`` (DCP).
``run_on_ranks`` (from ``tutorials_pkg.launcher``) runs them on a small
cluster of CPU processes; on a real cluster ``torchrun`` starts the processes,
and the code each rank runs stays the same.
"""

import os
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from tutorials_pkg.launcher import RankFailedError, run_on_ranks

__all__ = [
    "RankFailedError", "fail_on_rank", "full_state_dict", "load_on_every_rank", "load_sharded",
    "load_sharded_into_plain_model", "load_without_barrier", "rank_batch", "rank_device",
    "run_on_ranks", "save_on_rank0", "save_sharded", "save_with_barrier_inside_if",
    "shard_model", "storage_locations", "tiny_model", "train_and_save_on_rank0", "train_step",
]


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


# --- a rank that fails: what run_on_ranks reports -------------------------------------------

def fail_on_rank(rank: int, world_size: int, failing_rank: int = 1) -> float:
    """Per rank: ``failing_rank`` raises before an all-reduce that the others wait in."""
    dist.barrier()  # all ranks are connected
    if rank == failing_rank:
        raise ValueError(f"rank {rank} fails here on purpose")
    total = torch.ones(1)
    dist.all_reduce(total)  # the failed rank never arrives
    return total.item()


# --- Wrong: what the page shows failing --------------------------------------------------

def load_without_barrier(rank: int, world_size: int, path: str, write_s: float = 1.0) -> dict:
    """Wrong: rank 0 saves, every rank loads at once, with no barrier in between.

    Rank 0 takes ``write_s`` seconds before writing (a large checkpoint takes
    that long); the other ranks read before the file is there.
    """
    model = tiny_model(seed=0)
    if rank == 0:
        time.sleep(write_s)
        torch.save(model.state_dict(), path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_with_barrier_inside_if(rank: int, world_size: int, path: str) -> float:
    """Wrong: the barrier sits inside ``if rank == 0``, so only rank 0 waits in it.

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
