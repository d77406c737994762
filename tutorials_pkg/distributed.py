"""Chapter: DDP on CPUs or GPUs, its checkpoints, and sharded checkpoints.

``main`` is the script ``torchrun`` starts on each rank
(``torchrun --nproc-per-node=2 -m tutorials_pkg.distributed FOLDER``). The
functions taking ``(rank, world_size, ...)`` are what one rank runs inside a
process group; ``run_on_ranks`` (from ``tutorials_pkg.launcher``) runs them
from a notebook or a test.
"""

import argparse
import gc
import os
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
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
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.launcher import RankFailedError, run_on_ranks

__all__ = [
    "RankFailedError", "RegistersUnusedBaseModel", "StemAndHead", "count_allreduced",
    "fail_on_rank", "fit", "full_state_dict", "init_distributed", "load_sharded",
    "load_sharded_into_plain_model", "load_training_state", "load_without_barrier", "main",
    "optimizer_and_scheduler", "rank_device", "resume_on_rank0_only", "run_on_ranks",
    "save_sharded", "save_training_state", "save_with_barrier_inside_if", "shard_model",
    "storage_locations", "sync_batchnorm_step", "tiny_model", "toy_dataset", "train_ddp",
    "train_step", "wrap_ddp",
]


# --- the script torchrun starts: device, group, data, model, training ------------------------

def init_distributed() -> torch.device:
    """Join the group that torchrun's variables describe; return this rank's device."""
    local_rank = int(os.environ["LOCAL_RANK"])  # this process's number on its machine
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before any CUDA work, NCCL's included
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def rank_device() -> torch.device:
    """The device of this rank's group: GPU ``LOCAL_RANK`` under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cpu")


def tiny_model(seed: int = 0) -> nn.Sequential:
    """A two-layer network that trains in milliseconds, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def toy_dataset(size: int = 16) -> TensorDataset:
    """``size`` random samples of 4 features and a class, the same in every process."""
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(size, 4, generator=generator),
                         torch.randint(0, 2, (size,), generator=generator))


def optimizer_and_scheduler(model: nn.Module):
    """SGD with momentum, and a learning rate halved after every epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def wrap_ddp(model: nn.Module, device: torch.device) -> DDP:
    """The model on this rank's device, inside DDP."""
    if device.type == "cuda":
        return DDP(model.to(device), device_ids=[device.index])
    return DDP(model.to(device))  # a CPU module: device_ids must stay None


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimisation step; under DDP, ``backward`` averages the gradients of all ranks."""
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def fit(model: DDP, optimizer, scheduler, device: torch.device, folder: str,
        start_epoch: int, epochs: int) -> dict:
    """Per rank: train epochs ``start_epoch`` to ``epochs - 1`` on this rank's share of the data,
    saving ``folder/epoch<N>.pt`` after each."""
    at_start = {"lr": scheduler.get_last_lr()[0], "momentum_buffers": len(optimizer.state),
                "rng": torch.get_rng_state()}
    dataset = toy_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)  # rank, world size: the group's
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    orders, losses = [], []
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        orders.append(list(sampler))
        for x, y in loader:
            losses.append(train_step(model, optimizer, x.to(device), y.to(device)))
        scheduler.step()
        save_training_state(os.path.join(folder, f"epoch{epoch + 1}.pt"),
                            model, optimizer, scheduler, epoch + 1)
    return {"device": str(device), "at_start": at_start, "orders": orders, "losses": losses,
            "lr": scheduler.get_last_lr()[0],
            "state_dict": {name: t.cpu() for name, t in model.module.state_dict().items()}}


def train_ddp(rank: int, world_size: int, folder: str, epochs: int = 2,
              resume_from: str | None = None) -> dict:
    """Per rank: DDP training, from scratch or resumed from a checkpoint that every rank loads."""
    device = rank_device()
    model = tiny_model(seed=rank).to(device)  # DDP copies rank 0's weights to every rank
    optimizer, scheduler = optimizer_and_scheduler(model)
    start_epoch = 0
    if resume_from:
        start_epoch = load_training_state(resume_from, model, optimizer, scheduler, device)
    return fit(wrap_ddp(model, device), optimizer, scheduler, device, folder, start_epoch, epochs)


def main(argv: list[str] | None = None) -> None:
    """What ``torchrun --nproc-per-node=N -m tutorials_pkg.distributed FOLDER`` runs on each rank."""
    parser = argparse.ArgumentParser(description="DDP training of a tiny model")
    parser.add_argument("folder", help="where the checkpoints of every epoch go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume-from", help="a checkpoint this script wrote")
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    init_distributed()
    try:
        result = train_ddp(dist.get_rank(), dist.get_world_size(), args.folder,
                           args.epochs, args.resume_from)
        every_rank = [None] * dist.get_world_size()
        dist.all_gather_object(every_rank, (result["device"], result["losses"]))
        if dist.get_rank() == 0:
            for rank, (device, losses) in enumerate(every_rank):
                print(f"rank {rank} on {device}: losses", [round(loss, 4) for loss in losses])
    finally:
        gc.collect()  # free DDP's reference cycles while the group is up: at exit, gloo can abort
        dist.destroy_process_group()


# --- a checkpoint in one file: saved on rank 0, loaded on every rank -------------------------

def save_training_state(path: str, model: nn.Module, optimizer, scheduler, epoch: int) -> None:
    """Every rank calls this; rank 0 writes, and all wait until the file is complete.

    The random generators' states are per rank: resume with as many ranks.
    """
    rng = [None] * dist.get_world_size()
    own = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    dist.all_gather_object(rng, own)  # every rank's own random stream
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(model, options=options),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "rng": rng}
    if dist.get_rank() == 0:
        torch.save(state, path)
    dist.barrier()  # nobody reads the file before rank 0 has finished writing it


def load_training_state(path: str, model: nn.Module, optimizer, scheduler,
                        device: torch.device) -> int:
    """Every rank calls this, before wrapping the model; returns the epoch to start from."""
    state = torch.load(path, map_location=device, weights_only=True)  # onto this rank's device
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"][dist.get_rank()]
    torch.set_rng_state(rng["cpu"].cpu())
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"].cpu())
    return state["epoch"]


def storage_locations(path: str) -> list[str]:
    """The devices a checkpoint's tensors were saved from: where ``torch.load`` puts them
    when no ``map_location`` is given."""
    locations = set()

    def keep_on_cpu(storage, location):  # torch.load calls this for every storage
        locations.add(location)
        return storage

    torch.load(path, map_location=keep_on_cpu, weights_only=True)
    return sorted(locations)


# --- BatchNorm across ranks, and parameters forward never uses -------------------------------

def sync_batchnorm_step(rank: int, world_size: int) -> torch.Tensor:
    """Per rank: one training forward of a BatchNorm model made SyncBatchNorm, on this rank's
    half of the data; returns the running mean it leaves."""
    device = rank_device()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    model = wrap_ddp(nn.SyncBatchNorm.convert_sync_batchnorm(model), device)
    x = toy_dataset().tensors[0].chunk(world_size)[rank]
    model(x.to(device)).sum().backward()
    return model.module[1].running_mean.cpu()


class StemAndHead(nn.Module):
    """The first layers of a base model, then a new head: the base model is a local."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        base_model = tiny_resnet()
        self.layer0 = nn.Sequential(*list(base_model.children())[:3])  # conv, bn, relu
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer0(x).mean((2, 3)))


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


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank, gathered from the shards (a collective)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def save_sharded(rank: int, world_size: int, folder: str) -> dict:
    """Per rank: train a sharded model one step, then write model and optimizer with DCP.

    Each rank writes only the shards it holds; no rank ever holds the whole model.
    """
    device = rank_device()
    model = shard_model(tiny_model(seed=0), world_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = toy_dataset().tensors
    train_step(model, optimizer, x.chunk(world_size)[rank].to(device),
               y.chunk(world_size)[rank].to(device))
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
    total = torch.ones(1, device=rank_device())
    dist.all_reduce(total)  # the failed rank never arrives
    return total.item()


# --- Wrong: what the page shows failing --------------------------------------------------

def resume_on_rank0_only(rank: int, world_size: int, path: str, folder: str,
                         start_epoch: int = 1, epochs: int = 2) -> dict:
    """Wrong: only rank 0 loads the checkpoint, counting on DDP to copy it to the others."""
    device = rank_device()
    model = tiny_model(seed=rank).to(device)
    optimizer, scheduler = optimizer_and_scheduler(model)
    if rank == 0:
        load_training_state(path, model, optimizer, scheduler, device)
    return fit(wrap_ddp(model, device), optimizer, scheduler, device, folder, start_epoch, epochs)


class RegistersUnusedBaseModel(nn.Module):
    """Wrong: keeps the whole base model as an attribute, though forward uses only its first layers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.base_model = tiny_resnet()
        self.layer0 = nn.Sequential(*list(self.base_model.children())[:3])  # conv, bn, relu
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer0(x).mean((2, 3)))


def load_without_barrier(rank: int, world_size: int, path: str, write_s: float = 30.0) -> dict:
    """Wrong: rank 0 saves, every rank loads at once, with no barrier in between."""
    model = tiny_model(seed=0)
    if rank == 0:
        time.sleep(write_s)
        torch.save(model.state_dict(), path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_with_barrier_inside_if(rank: int, world_size: int, path: str) -> float:
    """Wrong: the barrier sits inside ``if rank == 0``, so only rank 0 waits in it.

    The others go on to the next collective (here an all-reduce of the loss,
    for the log).
    """
    model = tiny_model(seed=0)
    if rank == 0:
        torch.save(model.state_dict(), path)
        dist.barrier()  # wrong: the other ranks never get here
    loss = torch.tensor([0.5], device=rank_device())
    dist.all_reduce(loss)
    return loss.item() / world_size


if __name__ == "__main__":
    main()
