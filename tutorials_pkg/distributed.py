"""Chapter: DDP on CPUs or GPUs, its checkpoints, and sharded checkpoints.

``main`` is the script ``torchrun`` starts on each rank
(``torchrun --nproc-per-node=2 -m tutorials_pkg.distributed FOLDER``). The
functions taking ``(rank, world_size, ...)`` are what one rank runs inside a
process group: ``spawn_ranks`` starts them from Python with
``torch.multiprocessing``; the pages and tests use ``run_on_ranks`` (page
machinery, from ``tutorials_pkg.launcher``), which also brings back what each
rank returns.
"""

import argparse
import gc
import os
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from tutorials_pkg.launcher import RankFailedError, free_port, run_on_ranks

__all__ = [
    "RankFailedError", "count_allreduced",
    "fail_on_rank", "full_state", "init_distributed", "load_on_rank0_only", "load_sharded",
    "load_sharded_into_plain_model", "load_sharded_run", "load_training_state",
    "load_without_barrier", "main", "one_file_from_shards", "optimizer_and_scheduler",
    "rank_device", "run_on_ranks", "save_sharded", "save_sharded_run", "save_training_state",
    "save_with_barrier_inside_if", "shard_model", "spawn_ranks", "spawned_rank",
    "storage_locations", "sync_batchnorm_step", "tiny_model", "toy_dataset", "train_ddp",
    "train_step",
]


# --- the script torchrun starts: device, group, data, model, checkpoints, training ------------

def init_distributed() -> torch.device:
    """Join the group that torchrun's variables describe; return this rank's device."""
    if not torch.cuda.is_available():
        dist.init_process_group("gloo")
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # its number on this machine
    torch.cuda.set_device(device)  # before any CUDA work, NCCL's included
    dist.init_process_group("nccl", device_id=device)
    return device


def rank_device() -> torch.device:
    """This rank's device: under nccl, the GPU ``torch.cuda.set_device`` chose; else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def tiny_model(seed: int = 0) -> nn.Sequential:
    """A two-layer network that trains in milliseconds, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def toy_dataset(size: int = 16) -> TensorDataset:
    """``size`` random samples of 4 features and a class, the same in every process."""
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(size, 4, generator=g), torch.randint(2, (size,), generator=g))


def optimizer_and_scheduler(model: nn.Module):
    """SGD with momentum, and a learning rate halved after every epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def train_step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimisation step; under DDP, ``backward`` averages the gradients of all ranks."""
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def save_training_state(path: str, model: nn.Module, optimizer, scheduler, epoch: int) -> None:
    """Every rank calls this (DDP or FSDP): rank 0 writes the whole state, all wait for the file."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole, on rank 0's CPU
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    rng = [None] * dist.get_world_size()  # every rank's random generators: the CPU's, its GPUs'
    dist.all_gather_object(rng, [torch.get_rng_state(), *torch.cuda.get_rng_state_all()])
    if dist.get_rank() == 0:
        torch.save({"model": model_state, "optimizer": optimizer_state, "epoch": epoch,
                    "scheduler": scheduler.state_dict(), "rng": rng}, path)
    dist.barrier()  # nobody reads the file before rank 0 has finished writing it


def load_training_state(path: str, model: nn.Module, optimizer, scheduler) -> int:
    """Every rank calls this, before DDP wraps the model or after FSDP shards it."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # not all onto one GPU
    set_state_dict(model, optimizer, model_state_dict=state["model"],  # each tensor to its
                   optim_state_dict=state["optimizer"],  # parameter's device; FSDP: its shard
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    cpu, *gpus = state["rng"][dist.get_rank()]  # this rank's own generators
    torch.set_rng_state(cpu)
    torch.cuda.set_rng_state_all(gpus)  # none without GPUs
    return state["epoch"]  # the epoch to resume at


def main(argv: list[str] | None = None, load=load_training_state, device=None):
    """What ``torchrun --nproc-per-node=N train.py FOLDER`` runs on each rank."""
    parser = argparse.ArgumentParser(description="DDP training of a tiny model")
    parser.add_argument("folder", help="where the checkpoints of every epoch go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume-from", help="a checkpoint this script wrote")
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    device = device or init_distributed()  # given a device, it runs in the group already made
    try:
        model = tiny_model(seed=dist.get_rank()).to(device)  # DDP copies rank 0's weights to all
        optimizer, scheduler = optimizer_and_scheduler(model)
        start = load(args.resume_from, model, optimizer, scheduler) if args.resume_from else 0
        ddp = DDP(model)  # device_ids=None: the model's own device, one GPU or the CPU
        sampler = DistributedSampler(toy_dataset(), shuffle=True, seed=0)  # this rank's share
        for epoch in range(start + 1, args.epochs + 1):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            for x, y in DataLoader(sampler.dataset, batch_size=4, sampler=sampler):
                optimizer.zero_grad()
                nn.functional.cross_entropy(ddp(x.to(device)), y.to(device)).backward()
                optimizer.step()  # the gradients were averaged across ranks in backward
            scheduler.step()
            save_training_state(f"{args.folder}/epoch{epoch}.pt", ddp, optimizer, scheduler, epoch)
        return model, optimizer  # for a caller in Python (train_ddp); torchrun ignores it
    finally:
        gc.collect()  # free DDP's reference cycles while the group is up: at exit, gloo can abort
        dist.destroy_process_group()


def storage_locations(path: str) -> list[str]:
    """The devices a checkpoint's tensors were saved from: where ``torch.load`` puts them
    when no ``map_location`` is given."""
    locations = set()

    def keep_on_cpu(storage, location):  # torch.load calls this for every storage
        locations.add(location)
        return storage

    torch.load(path, map_location=keep_on_cpu, weights_only=True)
    return sorted(locations)


def train_ddp(rank: int, world_size: int, folder: str, epochs: int = 2,
              resume_from: str | None = None, load=load_training_state) -> dict:
    """Per rank, in the group ``run_on_ranks`` made: ``main`` with these arguments, and what
    the pages look at afterwards."""
    device = rank_device()
    resume = ["--resume-from", resume_from] if resume_from else []
    model, optimizer = main([folder, "--epochs", str(epochs), *resume], load, device)
    return {"device": str(device), "lr": optimizer.param_groups[0]["lr"],
            "momentum_buffers": len(optimizer.state), "rng": torch.get_rng_state(),
            "state_dict": {name: t.cpu() for name, t in model.state_dict().items()}}


# --- starting the ranks from Python instead of torchrun ---------------------------------------

def spawned_rank(rank: int, world_size: int, port: int, fn, args: tuple) -> None:
    """What each new process runs: the variables the group reads, the group, then ``fn``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    init_distributed()
    try:
        fn(rank, world_size, *args)
    finally:
        gc.collect()  # free reference cycles while the group is up, as main does
        dist.destroy_process_group()


def spawn_ranks(fn, *args, world_size: int = 2) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes (one per GPU,
    where there are GPUs). ``fn`` must be defined in a module, not in a notebook."""
    mp.spawn(spawned_rank, args=(world_size, free_port(), fn, args), nprocs=world_size)


# --- BatchNorm across ranks, and parameters forward never uses -------------------------------

def sync_batchnorm_step(rank: int, world_size: int) -> torch.Tensor:
    """Per rank: one training forward of a BatchNorm model made SyncBatchNorm, on this rank's
    half of the data; returns the running mean it leaves."""
    device = rank_device()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    model = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device))
    x = toy_dataset().tensors[0].chunk(world_size)[rank]
    model(x.to(device)).sum().backward()
    return model.module[1].running_mean.cpu()


def count_allreduced(model: DDP) -> list[int]:
    """Have ``model`` record the number of elements of each bucket it all-reduces."""
    counts = []

    def count_then_allreduce(process_group, bucket):
        counts.append(bucket.buffer().numel())
        return allreduce_hook(process_group, bucket)  # what DDP does without a hook

    model.register_comm_hook(None, count_then_allreduce)
    return counts


# --- a sharded checkpoint with torch.distributed.checkpoint (DCP) ---------------------------

def shard_model(model: nn.Module, world_size: int) -> nn.Module:
    """FSDP2: split every parameter along dim 0 across the ranks (each keeps 1/world_size)."""
    mesh = init_device_mesh(rank_device().type, (world_size,))
    return fully_shard(model, mesh=mesh)


def save_sharded(model: nn.Module, optimizer, folder: str) -> None:
    """Every rank calls this: each writes the shards it holds, rank 0 also the metadata."""
    model_state, optimizer_state = get_state_dict(model, optimizer)  # this rank's shards
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load_sharded(model: nn.Module, optimizer, folder: str) -> None:
    """Every rank calls this, with the model sharded and its optimizer built (any world size)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)  # fills this rank's shards in place
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def full_state(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """The whole model's and optimizer's state on every rank, gathered from the shards."""
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def save_sharded_run(rank: int, world_size: int, folder: str) -> dict:
    """Per rank: train a sharded model one step, then ``save_sharded`` it to ``folder``."""
    model = shard_model(tiny_model(seed=0), world_size)
    optimizer, _ = optimizer_and_scheduler(model)
    x, y = (t.chunk(world_size)[rank].to(rank_device()) for t in toy_dataset().tensors)
    train_step(model, optimizer, x, y)
    save_sharded(model, optimizer, folder)
    local_shapes = {name: tuple(p.to_local().shape) for name, p in model.named_parameters()}
    return {"local_shapes": local_shapes, "state_dict": full_state(model, optimizer)[0]}


def load_sharded_run(rank: int, world_size: int, folder: str) -> dict:
    """Per rank: a sharded model with other weights, then ``load_sharded`` from ``folder``."""
    model = shard_model(tiny_model(seed=1), world_size)
    optimizer, _ = optimizer_and_scheduler(model)
    load_sharded(model, optimizer, folder)
    model_state, optimizer_state = full_state(model, optimizer)
    return {"state_dict": model_state, "optimizer": optimizer_state}


def one_file_from_shards(rank: int, world_size: int, path: str) -> dict:
    """Per rank: a sharded model trained one step, saved to one file with
    ``save_training_state``, then loaded into another sharded model with ``load_training_state``.
    Returns both models' whole state, and the loss of one more step of each."""
    x, y = (t.chunk(world_size)[rank].to(rank_device()) for t in toy_dataset().tensors)
    states, next_losses = [], []
    for seed in (0, 1):
        model = shard_model(tiny_model(seed=seed), world_size)
        optimizer, scheduler = optimizer_and_scheduler(model)
        if seed == 0:  # train, then save
            train_step(model, optimizer, x, y)
            scheduler.step()
            save_training_state(path, model, optimizer, scheduler, epoch=1)
        else:  # other weights, replaced by the load
            load_training_state(path, model, optimizer, scheduler)
        states.append(full_state(model, optimizer))
        next_losses.append(train_step(model, optimizer, x, y))
    return {"saved": states[0], "loaded": states[1], "next_losses": next_losses}


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
    total = torch.ones(1, device=rank_device())
    dist.all_reduce(total)  # the failed rank never arrives
    return total.item()


# --- Wrong: what the page shows failing --------------------------------------------------

def load_on_rank0_only(path: str, model: nn.Module, optimizer, scheduler) -> int:
    """Wrong: only rank 0 loads the checkpoint, counting on DDP to copy it to the others."""
    epoch = [None]
    if dist.get_rank() == 0:
        epoch[0] = load_training_state(path, model, optimizer, scheduler)
    dist.broadcast_object_list(epoch)  # the others learn the epoch to resume at
    return epoch[0]


def load_without_barrier(rank: int, world_size: int, path: str, write_s: float = 30.0) -> dict:
    """Wrong: rank 0 saves, every rank loads at once, with no barrier in between."""
    model = tiny_model(seed=0)
    if rank == 0:
        time.sleep(write_s)
        torch.save(model.state_dict(), path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_with_barrier_inside_if(rank: int, world_size: int, path: str) -> float:
    """Wrong: the barrier sits inside ``if rank == 0``; the other ranks go on to their next
    collective (here an all-reduce of the loss, for the log)."""
    if rank == 0:
        torch.save(nn.Linear(4, 2).state_dict(), path)  # a checkpoint
        dist.barrier()  # wrong: the other ranks never get here
    loss = torch.tensor([0.5], device=rank_device())
    dist.all_reduce(loss)
    return loss.item() / world_size


if __name__ == "__main__":
    main()
