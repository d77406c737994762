"""DDP, its checkpoints and DCP: real multi-process runs (gloo on the CPU, nccl on two GPUs),
each rank's code in this process, and the launcher's promises under faults.

Starting a rank costs seconds (a fresh interpreter imports torch), so one launch checks
several things: ``first_launch`` and ``second_launch`` run every recipe the pages run on
several ranks, once per device; the launcher's failures take one short launch each.
"""

import contextlib
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.distributed.run
from torch import nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from tutorials_pkg.distributed import (
    count_allreduced,
    fail_on_rank,
    init_distributed,
    load_on_rank0_only,
    load_sharded_into_plain_model,
    load_sharded_run,
    load_training_state,
    load_without_barrier,
    main,
    one_file_from_shards,
    optimizer_and_scheduler,
    rank_device,
    save_sharded_run,
    save_training_state,
    save_with_barrier_inside_if,
    spawned_rank,
    storage_locations,
    sync_batchnorm_step,
    tiny_model,
    toy_dataset,
    train_ddp,
    train_step,
)
from tutorials_pkg.launcher import (
    RankFailedError,
    RemoteTraceback,
    free_port,
    run_on_ranks,
    run_rank,
    torchrun_variables,
)

KEYS = ["0.weight", "0.bias", "2.weight", "2.bias"]
BOUND_S = 90  # a failed or stuck run must end well within this (startup included)


def group_for(device: torch.device) -> tuple[str, int]:
    """The backend and world size of a run on ``device``: 2 CPU ranks, or 2 GPUs (skipped
    with fewer: one rank would compare every cross-rank result with itself)."""
    if device.type == "cuda":
        if torch.cuda.device_count() < 2:
            pytest.skip(f"needs 2 GPUs, {torch.cuda.device_count()} here: with one rank every "
                        "check across ranks would compare a rank with itself")
        return "nccl", 2
    return "gloo", 2


def assert_same_tensors(actual: dict, expected: dict, exact: bool = True):
    assert list(actual) == list(expected)
    for name in expected:
        if exact:
            assert torch.equal(actual[name], expected[name]), name
        else:
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5)


def rank_share(rank: int, world_size: int, epoch: int) -> list[int]:
    """The samples ``main``'s sampler gives ``rank`` in ``epoch`` (1, 2, ...)."""
    sampler = DistributedSampler(toy_dataset(), num_replicas=world_size, rank=rank, seed=0)
    sampler.set_epoch(epoch)
    return list(sampler)


def one_process_on_every_rank_batch(world_size: int, epochs: int = 2) -> dict:
    """What data-parallel training must give, in one process: each step on the batches of
    all ranks together (the mean of their losses), from rank 0's initial weights."""
    model = tiny_model(seed=0)
    optimizer, scheduler = optimizer_and_scheduler(model)
    dataset = toy_dataset()
    for epoch in range(1, epochs + 1):
        shares = [rank_share(rank, world_size, epoch) for rank in range(world_size)]
        for start in range(0, len(shares[0]), 4):
            train_step(model, optimizer, *dataset[[i for share in shares for i in share[start:start + 4]]])
        scheduler.step()
    return model.state_dict()


def children() -> set[int]:
    """This process's descendants, less multiprocessing's resource tracker (started on first
    use) and the tests' shared site build, which runs beside the tests with its kernels."""
    found = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "mkdocs" in child.cmdline():
                continue
            for process in [child, *child.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if "resource_tracker" not in " ".join(process.cmdline()):
                        found.add(process.pid)
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_left_over(folder: Path) -> list[int]:
    """The children noted in ``folder`` still alive; they are killed (so that a failing test
    leaves nothing behind)."""
    left = []
    for note in folder.glob("children*.txt"):
        for pid in map(int, note.read_text().split()):
            if alive(pid):
                left.append(pid)
                os.kill(pid, signal.SIGKILL)
    return left


# --- what the ranks run: several checks per launch ---------------------------------------------

def first_launch(rank: int, world_size: int, folder: str) -> dict:
    """Per rank: what the launcher set, DCP's sharded save, the one-file round trip of a sharded
    model, then DDP training with ``main`` (last: it leaves the group)."""
    return {"environ": {name: os.environ[name] for name in torchrun_variables(0, 1, 0)},
            "numpy": np.arange(3),  # any picklable result comes back
            "sharded": save_sharded_run(rank, world_size, f"{folder}/dcp"),
            "one_file": one_file_from_shards(rank, world_size, f"{folder}/one_file.pt"),
            "ddp": train_ddp(rank, world_size, f"{folder}/ddp")}


def second_launch(rank: int, world_size: int, folder: str, backend: str) -> dict:
    """Per rank: DCP's sharded load, then resuming from ``ddp/epoch1.pt`` on every rank, and
    (in a new group: ``main`` leaves its group) on rank 0 only."""
    loaded = load_sharded_run(rank, world_size, f"{folder}/dcp")
    every_rank = train_ddp(rank, world_size, f"{folder}/every_rank", 2, f"{folder}/ddp/epoch1.pt")
    dist.init_process_group(backend, store=dist.FileStore(f"{folder}/store", world_size),
                            rank=rank, world_size=world_size)
    rank0_only = train_ddp(rank, world_size, f"{folder}/rank0_only", 2, f"{folder}/ddp/epoch1.pt",
                           load_on_rank0_only)
    return {"loaded": loaded, "every_rank": every_rank, "rank0_only": rank0_only}


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """``first_launch`` then ``second_launch`` on every rank, once per device:
    ``(folder, world_size, first results, second results)``."""
    runs = {}

    def run(device: torch.device):
        if device.type not in runs:
            backend, world_size = group_for(device)
            folder = tmp_path_factory.mktemp(f"runs-{device.type}")
            first = run_on_ranks(first_launch, str(folder), backend=backend, world_size=world_size)
            second = run_on_ranks(second_launch, str(folder), backend, backend=backend,
                                  world_size=world_size)
            runs[device.type] = folder, world_size, first, second
        return runs[device.type]

    return run


# --- DDP training, saving on rank 0, resuming on every rank -----------------------------------

def test_ddp_ranks_end_with_the_weights_of_one_process_on_all_their_batches(device, launches):
    _, world_size, first, _ = launches(device)
    expected = one_process_on_every_rank_batch(world_size)
    for rank, result in enumerate(first):
        assert result["ddp"]["device"] == ("cpu" if device.type == "cpu" else f"cuda:{rank}")
        assert_same_tensors(result["ddp"]["state_dict"], expected, exact=False)
    assert_same_tensors(first[1]["ddp"]["state_dict"], first[0]["ddp"]["state_dict"])  # bit for bit


def test_the_sampler_gives_each_rank_its_share_and_reshuffles_every_epoch():
    for epoch in (1, 2):
        shares = [rank_share(rank, 2, epoch) for rank in range(2)]
        assert sorted(i for share in shares for i in share) == list(range(16))
        assert shares[0] != shares[1]
    assert rank_share(0, 2, 1) != rank_share(0, 2, 2)
    sampler = DistributedSampler(toy_dataset(), num_replicas=2, rank=0, seed=0)
    assert list(sampler) == list(sampler)  # without set_epoch, every epoch the same order


def test_rank0_writes_the_training_state_of_every_epoch(device, launches):
    folder, world_size, first, _ = launches(device)
    assert sorted(os.listdir(folder / "ddp")) == ["epoch1.pt", "epoch2.pt"]
    path = folder / "ddp" / "epoch2.pt"
    state = torch.load(path, weights_only=True)
    assert list(state) == ["model", "optimizer", "epoch", "scheduler", "rng"]
    assert list(state["model"]) == KEYS  # no "module." from the DDP wrapper
    assert_same_tensors(state["model"], first[0]["ddp"]["state_dict"])
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 2
    assert sorted(state["optimizer"]["state"]) == sorted(KEYS)  # a momentum buffer per parameter
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.025
    assert len(state["rng"]) == world_size
    assert [len(generators) for generators in state["rng"]] == [1 + torch.cuda.device_count()] * 2
    assert storage_locations(str(path)) == ["cpu"]  # everything gathered to the CPU


def test_resuming_on_every_rank_continues_as_if_never_stopped(device, launches):
    folder, _, first, second = launches(device)
    for rank in range(len(first)):
        resumed, straight = second[rank]["every_rank"], first[rank]["ddp"]
        assert resumed["lr"] == straight["lr"] == 0.025
        assert torch.equal(resumed["rng"], straight["rng"])  # each rank's generator restored
        assert_same_tensors(resumed["state_dict"], straight["state_dict"])
    assert sorted(os.listdir(folder / "every_rank")) == ["epoch2.pt"]


def test_resuming_on_rank0_only_leaves_the_other_ranks_behind(device, launches):
    _, _, first, second = launches(device)
    resumed = [result["rank0_only"] for result in second]
    assert [r["lr"] for r in resumed] == [0.025, 0.05]  # rank 1's scheduler started again
    assert [torch.equal(r["rng"], f["ddp"]["rng"]) for r, f in zip(resumed, first)] == [True, False]
    # DDP made the weights equal when it was built; the first step split them again
    drift = max((resumed[0]["state_dict"][k] - resumed[1]["state_dict"][k]).abs().max().item()
                for k in KEYS)
    assert drift > 1e-3


# --- sharded checkpoints -------------------------------------------------------------------------

def test_sharded_save_writes_one_file_per_rank_and_its_share_of_each_parameter(device, launches):
    folder, world_size, first, _ = launches(device)
    assert sorted(os.listdir(folder / "dcp")) == [".metadata"] + [f"__{r}_0.distcp"
                                                                  for r in range(world_size)]
    full = first[0]["sharded"]["state_dict"]
    for result in first:
        assert list(result["sharded"]["local_shapes"]) == KEYS
        for name, shape in result["sharded"]["local_shapes"].items():
            assert shape == (full[name].shape[0] // world_size, *full[name].shape[1:])
        assert_same_tensors(result["sharded"]["state_dict"], full)  # every rank gathered the same
    # one plain SGD step (the first momentum step is one) on the mean loss of all ranks
    averaged, summed = tiny_model(seed=0), tiny_model(seed=0)
    for model, lr in ((averaged, 0.1), (summed, 0.1 * world_size)):
        train_step(model, torch.optim.SGD(model.parameters(), lr=lr), *toy_dataset().tensors)
    if all(torch.allclose(full[k], summed.state_dict()[k], atol=1e-6) for k in KEYS):
        pytest.xfail(f"FSDP2 on gloo sums the ranks' gradients instead of averaging them on torch "
                     f"{torch.__version__} (pytorch/pytorch#162338)")
    assert_same_tensors(full, averaged.state_dict(), exact=False)


def test_sharded_checkpoint_round_trips_model_and_optimizer(device, launches, tmp_path):
    folder, _, first, second = launches(device)
    dcp_to_torch_save(folder / "dcp", tmp_path / "one.pt")
    saved_optimizer = torch.load(tmp_path / "one.pt", weights_only=True)["optimizer"]
    for result in second:
        loaded = result["loaded"]
        assert_same_tensors(loaded["state_dict"], first[0]["sharded"]["state_dict"])
        assert loaded["optimizer"]["param_groups"][0]["momentum"] == 0.9
        for name in KEYS:
            buffer = loaded["optimizer"]["state"][name]["momentum_buffer"]
            assert torch.equal(buffer, saved_optimizer["state"][name]["momentum_buffer"])
            assert buffer.abs().sum() > 0  # a real momentum, not a fresh zero buffer


def test_save_training_state_of_a_sharded_model_resumes_it(device, launches):
    """Issue 25, item 5: the one-file checkpoint of an FSDP model holds the whole optimizer
    state (not rank 0's slice), and a new sharded model resumes from it exactly."""
    folder, _, first, _ = launches(device)
    state = torch.load(folder / "one_file.pt", weights_only=True)
    assert list(state["optimizer"]["state"]) == KEYS
    for result in first:
        (saved_model, saved_optimizer), (loaded_model, loaded_optimizer) = (
            result["one_file"]["saved"], result["one_file"]["loaded"])
        assert_same_tensors(loaded_model, saved_model)
        assert_same_tensors(state["model"], saved_model)  # the whole tensors, not a slice
        for name in KEYS:
            momentum = loaded_optimizer["state"][name]["momentum_buffer"]
            assert torch.equal(momentum, saved_optimizer["state"][name]["momentum_buffer"])
            assert torch.equal(momentum, state["optimizer"]["state"][name]["momentum_buffer"])
        assert loaded_optimizer["param_groups"][0]["lr"] == 0.05  # the scheduler's step
        before, after = result["one_file"]["next_losses"]
        assert before == after  # the next step is the same step


def test_sharded_checkpoint_converts_to_one_file_and_back(launches, tmp_path):
    folder, _, first, _ = launches(torch.device("cpu"))
    expected = first[0]["sharded"]["state_dict"]
    dcp_to_torch_save(folder / "dcp", tmp_path / "one.pt")
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    assert set(one) == {"model", "optimizer"}
    assert_same_tensors(one["model"], expected)
    plain = tiny_model(seed=7)
    plain.load_state_dict(one["model"])  # strict: the keys are the plain model's
    torch_save_to_dcp(tmp_path / "one.pt", tmp_path / "back")
    for source in (tmp_path / "back", folder / "dcp"):
        again = load_sharded_into_plain_model(str(source), tiny_model(seed=8))
        assert_same_tensors(again.state_dict(), expected)


# --- the launcher: what it sets, failures, timeouts, and what it leaves behind ----------------

def documented_torchrun_variables() -> list[str]:
    """The variables ``torchrun``'s own documentation lists (torch/distributed/run.py)."""
    section = torch.distributed.run.__doc__.partition("Environment Variables")[2]
    section = section.partition("\nLogging\n")[0]
    return re.findall(r"^\d+\. ``([A-Z_]+)``", section, re.M)


def test_the_ranks_get_the_variables_torchrun_documents(launches):
    """Issue 25, item 12: every variable torchrun documents (``PYTHON_EXEC`` is one you set
    for torchrun, not one it sets), with torchrun --standalone's values."""
    _, world_size, first, _ = launches(torch.device("cpu"))
    documented = set(documented_torchrun_variables()) - {"PYTHON_EXEC"}
    assert len(documented) >= 12
    for rank, result in enumerate(first):
        environ = result["environ"]
        assert documented <= set(environ)
        for name in ("RANK", "LOCAL_RANK", "ROLE_RANK"):
            assert environ[name] == str(rank)
        for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "ROLE_WORLD_SIZE"):
            assert environ[name] == str(world_size)
        assert environ["GROUP_RANK"] == "0" and environ["GROUP_WORLD_SIZE"] == "1"
        assert environ["TORCHELASTIC_RESTART_COUNT"] == environ["TORCHELASTIC_MAX_RESTARTS"] == "0"
        assert environ["MASTER_PORT"] == first[0]["environ"]["MASTER_PORT"]
        assert np.array_equal(result["numpy"], np.arange(3))


def ignore_sigterm_start_children_then_fail_on_rank(rank: int, world_size: int, folder: str):
    """Rank 0 ignores SIGTERM and starts a subprocess and a forked child that would sleep ten
    minutes; then ``fail_on_rank``: rank 1 raises, rank 0 waits for it."""
    if rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        forked = os.fork()
        if forked == 0:
            time.sleep(600)
            os._exit(0)
        Path(folder, "children0.txt").write_text(f"{popen.pid} {forked}")
    return fail_on_rank(rank, world_size)


def test_a_failing_rank_is_named_with_its_traceback_and_nothing_outlives_the_run(tmp_path,
                                                                              monkeypatch):
    notes = tmp_path / "notes"
    notes.mkdir()
    scratch = tmp_path / "scratch"  # torch's error files and the launcher's folder go here
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = children()
    start = time.monotonic()
    try:
        with pytest.raises(RankFailedError) as caught:
            run_on_ranks(ignore_sigterm_start_children_then_fail_on_rank, str(notes),
                         timeout_s=BOUND_S, collective_timeout_s=BOUND_S)
    finally:
        left = kill_left_over(notes)
    assert time.monotonic() - start < BOUND_S
    error = caught.value
    assert error.rank == list(error.failures)[0] == 1  # the root cause, first
    assert str(error).splitlines()[0] == (
        "rank 1 of 2 failed with ValueError: rank 1 fails here on purpose")
    assert set(error.failures) <= {0, 1}  # rank 0 too, if it saw its partner vanish
    assert "in fail_on_rank" in error.traceback
    assert isinstance(error.__cause__, RemoteTraceback)
    assert f"--- rank 1 ---\n{error.traceback}" in str(error.__cause__)
    assert (notes / "children0.txt").exists()
    assert left == [], "processes rank 0 started outlived run_on_ranks"
    assert multiprocessing.active_children() == [] and children() <= before
    assert os.listdir(scratch) == []  # no error file, no temporary folder left


def record_barrier_inside_if(rank: int, world_size: int, folder: str) -> float:
    """``save_with_barrier_inside_if``, each rank noting the value it got, if it gets one."""
    value = save_with_barrier_inside_if(rank, world_size, f"{folder}/w.pt")
    Path(folder, f"value{rank}.txt").write_text(str(value))
    return value


def test_a_barrier_only_rank_0_reaches(device, tmp_path):
    """Issue 25, item 10. gloo: the barrier and rank 1's all-reduce never match, both wait
    until the group's timeout. nccl: the barrier is an all-reduce of one number, which
    rank 1's all-reduce completes (a silently wrong sum on rank 1); rank 0 then waits in
    its own all-reduce until NCCL's watchdog (or run_on_ranks's timeout) ends it."""
    backend, world_size = group_for(device)
    start = time.monotonic()
    with pytest.raises((RankFailedError, TimeoutError)) as caught:
        run_on_ranks(record_barrier_inside_if, str(tmp_path), backend=backend,
                     world_size=world_size, collective_timeout_s=2 if backend == "gloo" else 5,
                     timeout_s=BOUND_S / 2)
    assert time.monotonic() - start < BOUND_S
    assert multiprocessing.active_children() == []
    if backend == "gloo":
        assert isinstance(caught.value, RankFailedError)
        # the first to time out is named; the other may time out too, or lose its partner
        assert "Timed out waiting 2000ms" in str(caught.value)
        assert not list(tmp_path.glob("value*.txt"))  # neither rank went on
    else:
        assert float((tmp_path / "value1.txt").read_text()) != 0.5  # the mean loss is 0.5
        assert not (tmp_path / "value0.txt").exists()
        if isinstance(caught.value, RankFailedError):  # rank 0, ended by the watchdog
            assert 0 in caught.value.failures


def sleep_for_ten_minutes(rank: int, world_size: int) -> None:
    time.sleep(600)


def test_a_run_past_its_timeout_is_stopped_and_is_an_error():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0\] of 1 were still running after 2 s"):
        run_on_ranks(sleep_for_ten_minutes, world_size=1, backend=None, timeout_s=2)
    assert time.monotonic() - start < BOUND_S
    assert multiprocessing.active_children() == []


def exit_without_a_word(rank: int, world_size: int) -> None:
    """A rank that dies without a traceback (as one killed by the OOM killer would)."""
    os._exit(3)


def test_a_rank_that_dies_without_a_traceback_is_named():
    with pytest.raises(RankFailedError,
                       match=r"^rank 0 of 1 failed with exit code 3 and no traceback$"):
        run_on_ranks(exit_without_a_word, world_size=1, backend=None)
    assert multiprocessing.active_children() == []


class FreedByTheCollector:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self, path: str):
        self.path = path
        self.cycle = self

    def __del__(self):
        with open(self.path, "w") as file:
            file.write(f"group up: {dist.is_initialized()}")


def leave_a_cycle(rank: int, world_size: int, path: str) -> list:
    FreedByTheCollector(path)
    return [rank, os.environ["LOCAL_WORLD_SIZE"]]


@pytest.fixture
def restored_environ(monkeypatch):
    """run_rank sets torchrun's variables in this process: put them back afterwards."""
    for name in torchrun_variables(0, 1, 0):
        monkeypatch.setenv(name, "")


def test_run_rank_frees_cycles_in_the_group_saves_the_result_and_leaves(restored_environ,
                                                                       tmp_path):
    """What each rank's process runs, here in this one: FSDP models sit in reference cycles,
    which freed at exit, after the group is gone, can abort the process."""
    run_rank(0, 1, free_port(), str(tmp_path), "gloo", 30, leave_a_cycle,
             (str(tmp_path / "freed.txt"),))
    assert (tmp_path / "freed.txt").read_text() == "group up: True"
    assert torch.load(tmp_path / "rank0.pt", weights_only=True) == [0, "1"]
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="rank 0 fails here on purpose"):  # torch reports it
        run_rank(0, 1, free_port(), str(tmp_path / "none"), "gloo", 30, fail_on_rank, (0,))
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        run_rank(0, 1, free_port(), str(tmp_path), None, 30, fail_on_rank, ())  # fn's to make


def test_functions_the_ranks_could_not_import_are_refused(monkeypatch):
    def nested(rank, world_size):
        return rank

    for fn in (nested, lambda rank, world_size: rank, 42):
        with pytest.raises(TypeError, match="top level of a module"):
            run_on_ranks(fn)
    interactive = type(os)("__main__")  # a notebook's __main__ has no __file__
    monkeypatch.setitem(sys.modules, "__main__", interactive)
    monkeypatch.setattr(nested, "__qualname__", "nested")
    monkeypatch.setattr(nested, "__module__", "__main__")
    with pytest.raises(TypeError, match="nested is defined in a notebook"):
        run_on_ranks(nested)
    with pytest.raises(ValueError, match="world_size must be at least 1, got 0"):
        run_on_ranks(fail_on_rank, world_size=0)


def note_environ(rank: int, world_size: int, path: str) -> None:
    names = ("MASTER_ADDR", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    Path(path).write_text(" ".join(os.environ[name] for name in names) + f" {dist.get_backend()}")


def test_spawned_rank_sets_the_variables_and_runs_fn_in_a_group(restored_environ, tmp_path):
    """What each process of ``spawn_ranks`` (the launcher page's few lines) runs, here in this
    one; the page runs ``spawn_ranks`` itself."""
    spawned_rank(0, 1, free_port(), note_environ, (str(tmp_path / "rank0.txt"),))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    assert (tmp_path / "rank0.txt").read_text() == f"127.0.0.1 0 0 1 {backend}"
    assert not dist.is_initialized()  # it left the group


# --- the same code as one rank, in this process ------------------------------------------------

@pytest.fixture
def torchrun_environ(monkeypatch):
    """The variables torchrun would set for rank 0 of 1."""
    for name, value in torchrun_variables(0, 1, free_port()).items():
        monkeypatch.setenv(name, value)


@contextlib.contextmanager
def group_of_one(device: torch.device):
    """This process as rank 0 of 1, in a group of the device's backend."""
    if device.type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture
def one_rank(torchrun_environ):
    """A gloo group of one: this process is rank 0 of 1."""
    with group_of_one(torch.device("cpu")):
        yield


def test_the_torchrun_script_trains_saves_and_resumes(torchrun_environ, tmp_path):
    model, _ = main([str(tmp_path / "a")])
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not dist.is_initialized()  # it left the group
    main([str(tmp_path / "b"), "--resume-from", str(tmp_path / "a" / "epoch1.pt")])
    assert sorted(os.listdir(tmp_path / "a")) == ["epoch1.pt", "epoch2.pt"]
    assert os.listdir(tmp_path / "b") == ["epoch2.pt"]
    straight, resumed = (torch.load(tmp_path / run / "epoch2.pt", weights_only=True)
                         for run in ("a", "b"))
    assert_same_tensors(resumed["model"], straight["model"])
    assert torch.equal(resumed["rng"][0][0], straight["rng"][0][0])  # the CPU generator


def test_init_distributed_takes_the_gpu_of_local_rank(torchrun_environ, monkeypatch):
    calls = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **options: calls.append((backend, options)))
    assert init_distributed() == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)),  # before the group
                     ("nccl", {"device_id": torch.device("cuda", 1)})]


def test_the_rank_device_follows_the_backend(one_rank, monkeypatch):
    assert rank_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # what set_device chose
    assert rank_device() == torch.device("cuda", 1)


def test_a_state_saved_and_loaded_in_one_rank_restores_everything(torchrun_environ, device,
                                                                 tmp_path):
    path = str(tmp_path / "state.pt")
    with group_of_one(device):
        model = tiny_model(seed=0).to(device)
        optimizer, scheduler = optimizer_and_scheduler(model)
        ddp = DDP(model)
        train_step(ddp, optimizer, *(t.to(device) for t in toy_dataset().tensors))
        scheduler.step()
        save_training_state(path, ddp, optimizer, scheduler, epoch=1)
        expected_rng = torch.get_rng_state()
        torch.rand(5)  # the stream moves on

        fresh = tiny_model(seed=1).to(device)
        fresh_optimizer, fresh_scheduler = optimizer_and_scheduler(fresh)
        assert load_training_state(path, fresh, fresh_optimizer, fresh_scheduler) == 1
    assert_same_tensors(fresh.state_dict(), model.state_dict())
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert fresh_scheduler.get_last_lr() == [0.05]
    buffer = fresh_optimizer.state[fresh.state_dict(keep_vars=True)["0.weight"]]["momentum_buffer"]
    assert buffer.device == next(fresh.parameters()).device and buffer.abs().sum() > 0


def test_sync_batchnorm_uses_the_statistics_of_every_rank(device, torchrun_environ):
    """SyncBatchNorm refuses CPU modules; on two GPUs each rank gets the full batch's statistics."""
    if device.type == "cpu":
        with group_of_one(device), pytest.raises(
                ValueError, match="SyncBatchNorm layers only work with GPU modules"):
            sync_batchnorm_step(0, 1)
        return
    backend, world_size = group_for(device)
    means = run_on_ranks(sync_batchnorm_step, backend=backend, world_size=world_size)
    torch.manual_seed(0)
    linear = nn.Linear(4, 8)
    with torch.no_grad():
        full_batch_mean = linear(toy_dataset().tensors[0]).mean(0)
    for mean in means:  # momentum 0.1 from a running mean of 0
        torch.testing.assert_close(mean, 0.1 * full_batch_mean, rtol=1e-4, atol=1e-6)


def batch_of_images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 16, 16, generator=generator), torch.randint(0, 10, (4,), generator=generator)


def test_an_unused_registered_base_model_fails_under_ddp_at_the_second_step(one_rank):
    # Imported here: the ranks other tests start import this file, and these models
    # bring in torchvision.
    from tutorials_pkg.demo_models import RegistersUnusedBaseModel

    model = DDP(RegistersUnusedBaseModel())
    counts = count_allreduced(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, optimizer, *batch_of_images())
    assert counts == []  # the bucket with the unused parameters never got ready: nothing averaged
    with pytest.raises(RuntimeError, match="Expected to have finished reduction in the prior iteration"):
        train_step(model, optimizer, *batch_of_images())


def test_the_two_fixes_of_unused_parameters_and_what_the_flag_costs(one_rank):
    from tutorials_pkg.demo_models import RegistersUnusedBaseModel, StemAndHead

    local = DDP(StemAndHead())  # fix 1: the base model is a local
    flagged = DDP(RegistersUnusedBaseModel(), find_unused_parameters=True)  # fix 2
    sizes = {}
    for name, model in (("local", local), ("flagged", flagged)):
        counts = count_allreduced(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            train_step(model, optimizer, *batch_of_images())
        sizes[name] = counts
        assert sum(counts) == 2 * sum(p.numel() for p in model.parameters())
    unused = flagged.module.base_model[3]
    assert all(p.grad is None for p in unused.parameters())
    # the flag still all-reduces the unused parameters, every step
    assert sizes["flagged"][0] - sizes["local"][0] == sum(
        p.numel() for name, p in flagged.module.named_parameters()
        if name.startswith("base_model.") and not name.startswith(("base_model.0.", "base_model.1.")))
    assert len(StemAndHead().state_dict()) == 8 and len(RegistersUnusedBaseModel().state_dict()) == 46


def test_both_wrappers_put_module_in_front_of_every_key(one_rank):
    for wrapper in (nn.DataParallel(tiny_model(seed=0)), DDP(tiny_model(seed=0))):
        state_dict = wrapper.state_dict()
        assert list(state_dict) == ["module." + key for key in KEYS]
        with pytest.raises(RuntimeError, match='Unexpected key\\(s\\) in state_dict: "module.0.weight"'):
            tiny_model().load_state_dict(state_dict)
        consume_prefix_in_state_dict_if_present(state_dict, "module.")
        tiny_model().load_state_dict(state_dict)
        assert_same_tensors(state_dict, tiny_model(seed=0).state_dict())


def test_one_rank_pitfalls_run_when_nobody_waits(one_rank, tmp_path):
    """With a single rank there is nobody to wait for: the wrong ways only go wrong with more."""
    assert fail_on_rank(0, 1) == 1.0
    with pytest.raises(ValueError, match="rank 0 fails here on purpose"):
        fail_on_rank(0, 1, failing_rank=0)
    assert list(load_without_barrier(0, 1, str(tmp_path / "a.pt"), write_s=0)) == KEYS
    assert save_with_barrier_inside_if(0, 1, str(tmp_path / "b.pt")) == 0.5


def test_one_rank_runs_the_multi_rank_recipes(torchrun_environ, tmp_path):
    """In this process, a group of one: the per-rank code of the launches above."""
    with group_of_one(torch.device("cpu")):
        saved = save_sharded_run(0, 1, str(tmp_path / "dcp"))
        assert saved["local_shapes"] == {name: tuple(t.shape)
                                         for name, t in saved["state_dict"].items()}
        loaded = load_sharded_run(0, 1, str(tmp_path / "dcp"))
        assert_same_tensors(loaded["state_dict"], saved["state_dict"])
        assert sorted(loaded["optimizer"]["state"]) == sorted(KEYS)
        one_file = one_file_from_shards(0, 1, str(tmp_path / "one.pt"))
        assert_same_tensors(one_file["loaded"][0], one_file["saved"][0])
        trained = train_ddp(0, 1, str(tmp_path / "run"), epochs=1)  # leaves the group
    with group_of_one(torch.device("cpu")):
        resumed = train_ddp(0, 1, str(tmp_path / "run"), 2, str(tmp_path / "run" / "epoch1.pt"),
                            load_on_rank0_only)
    assert trained["lr"] == 0.05 and resumed["lr"] == 0.025 and resumed["momentum_buffers"] == 4


def test_storage_locations_say_where_torch_load_would_put_tensors(device, tmp_path):
    path = str(tmp_path / "w.pt")
    torch.save(tiny_model().to(device).state_dict(), path)
    tag = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.current_device()}"
    assert storage_locations(path) == [tag]
    assert {t.device for t in torch.load(path, weights_only=True).values()} == {device}
    mapped = torch.load(path, map_location="cpu", weights_only=True)
    assert {t.device.type for t in mapped.values()} == {"cpu"}
