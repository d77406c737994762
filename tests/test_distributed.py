"""Checkpoints with DDP and DCP: real 2-process gloo runs, and each rank's code in this process."""

import atexit
import multiprocessing
import os
import signal
import sys
import time

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DistributedDataParallel as DDP

from tutorials_pkg.distributed import (
    fail_on_rank,
    load_on_every_rank,
    load_sharded,
    load_sharded_into_plain_model,
    load_without_barrier,
    rank_batch,
    rank_device,
    save_on_rank0,
    save_sharded,
    save_with_barrier_inside_if,
    storage_locations,
    tiny_model,
    train_and_save_on_rank0,
)
from tutorials_pkg.launcher import (
    RankFailedError,
    RemoteTraceback,
    free_port,
    read_outcome,
    run_on_ranks,
    run_rank,
    stop_processes,
)

KEYS = ["0.weight", "0.bias", "2.weight", "2.bias"]
BOUND_S = 90  # a failed or stuck run must end well within this (startup included)


def averaged_sgd_step(world_size: int = 2):
    """What one data-parallel step must give, computed in one process: the mean of the
    ranks' losses (so the mean of their gradients), one SGD step of lr 0.1 from rank 0's weights."""
    model = tiny_model(seed=0)
    losses = [F.cross_entropy(model(x), y) for x, y in map(rank_batch, range(world_size))]
    (sum(losses) / world_size).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.1 * parameter.grad
    return model.state_dict(), [loss.item() for loss in losses]


def assert_same_tensors(actual: dict, expected: dict, exact: bool = True):
    assert list(actual) == list(expected)
    for name in expected:
        if exact:
            assert torch.equal(actual[name], expected[name]), name
        else:
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def ignore_sigterm_and_wait(ready) -> None:
    """A process that SIGTERM does not stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(600)


def exit_without_result(rank: int, world_size: int) -> None:
    """A rank that dies without a word (as one killed by the OOM killer would)."""
    os._exit(3)


def exit_badly_after_the_result(rank: int, world_size: int) -> int:
    """Rank 0 returns at once, then its process exits with code 3 (as a crash at exit
    would); rank 1 is still working then."""
    if rank == 0:
        atexit.register(os._exit, 3)
    else:
        time.sleep(3)
    return rank


class FreedByTheCollector:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self, path: str):
        self.path = path
        self.cycle = self

    def __del__(self):
        with open(self.path, "w") as file:
            file.write(f"group up: {dist.is_initialized()}")


def leave_a_reference_cycle(rank: int, world_size: int, folder: str) -> int:
    FreedByTheCollector(os.path.join(folder, f"freed{rank}.txt"))
    return rank


# --- two processes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rank0_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("rank0") / "weights.pt")
    return path, run_on_ranks(train_and_save_on_rank0, path)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dcp") / "checkpoint")
    return folder, run_on_ranks(save_sharded, folder)


def test_ddp_step_leaves_every_rank_with_the_same_averaged_update(rank0_file):
    _, results = rank0_file
    expected, losses = averaged_sgd_step()
    assert_same_tensors(results[0]["state_dict"], results[1]["state_dict"])  # bit for bit
    assert_same_tensors(results[0]["state_dict"], expected, exact=False)
    # each rank computed its loss on its own batch
    assert [r["loss"] for r in results] == pytest.approx(losses, rel=1e-6)
    assert results[0]["loss"] != results[1]["loss"]


def test_rank0_file_holds_the_trained_weights_without_module_prefix(rank0_file):
    path, results = rank0_file
    saved = torch.load(path, weights_only=True)
    assert list(saved) == KEYS
    assert_same_tensors(saved, results[0]["state_dict"])
    assert storage_locations(path) == ["cpu"]


def test_rank0_file_loads_on_every_rank(rank0_file):
    path, results = rank0_file
    loaded = run_on_ranks(load_on_every_rank, path)
    for rank, result in enumerate(loaded):
        assert result["keys"] == KEYS
        assert result["device"] == str(rank_device(rank))
        assert_same_tensors(result["state_dict"], results[0]["state_dict"])


def test_sharded_save_writes_one_file_per_rank_and_half_of_each_parameter(sharded):
    folder, results = sharded
    assert sorted(os.listdir(folder)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    full = results[0]["state_dict"]
    for result in results:
        assert list(result["local_shapes"]) == KEYS
        for name, shape in result["local_shapes"].items():
            assert shape == (full[name].shape[0] // 2, *full[name].shape[1:])
    assert_same_tensors(results[0]["state_dict"], results[1]["state_dict"])
    expected, _ = averaged_sgd_step()  # the first momentum step is a plain SGD step
    assert_same_tensors(full, expected, exact=False)


def test_sharded_checkpoint_round_trips_model_and_optimizer(sharded, tmp_path):
    folder, results = sharded
    loaded = run_on_ranks(load_sharded, folder)
    one_file = tmp_path / "one.pt"
    dcp_to_torch_save(folder, one_file)
    saved_optimizer = torch.load(one_file, weights_only=True)["optimizer"]
    for result in loaded:
        assert_same_tensors(result["state_dict"], results[0]["state_dict"])
        assert result["optimizer"]["param_groups"][0]["momentum"] == 0.9
        for name in KEYS:
            buffer = result["optimizer"]["state"][name]["momentum_buffer"]
            assert torch.equal(buffer, saved_optimizer["state"][name]["momentum_buffer"])
            assert buffer.abs().sum() > 0  # a real momentum, not a fresh zero buffer


def test_sharded_checkpoint_converts_to_one_file_and_back(sharded, tmp_path):
    folder, results = sharded
    dcp_to_torch_save(folder, tmp_path / "one.pt")
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    assert set(one) == {"model", "optimizer"}
    assert_same_tensors(one["model"], results[0]["state_dict"])
    plain = tiny_model(seed=7)
    plain.load_state_dict(one["model"])  # strict: the keys are the plain model's
    assert_same_tensors(plain.state_dict(), results[0]["state_dict"])

    torch_save_to_dcp(tmp_path / "one.pt", tmp_path / "back")
    again = load_sharded_into_plain_model(str(tmp_path / "back"), tiny_model(seed=8))
    assert_same_tensors(again.state_dict(), results[0]["state_dict"])


def test_a_checkpoint_written_by_two_ranks_loads_in_one_process(sharded):
    folder, results = sharded
    model = load_sharded_into_plain_model(folder, tiny_model(seed=9))
    assert_same_tensors(model.state_dict(), results[0]["state_dict"])


def test_a_failing_rank_ends_the_run_with_its_error_and_no_process_left():
    before = children()
    start = time.monotonic()
    with pytest.raises(RankFailedError) as caught:
        run_on_ranks(fail_on_rank, timeout_s=BOUND_S, collective_timeout_s=BOUND_S)
    assert time.monotonic() - start < BOUND_S
    error = caught.value
    assert list(error.failures)[0] == 1  # the root cause comes first
    assert error.failures[1] == "ValueError: rank 1 fails here on purpose"
    assert str(error).startswith("rank 1 of 2 failed with ValueError: rank 1 fails here on purpose")
    # rank 0 either saw its peer vanish, or was stopped while waiting
    assert 0 in error.failures or error.stopped == [0]
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "--- rank 1 ---" in str(error.__cause__) and "in fail_on_rank" in str(error.__cause__)
    assert multiprocessing.active_children() == []
    assert children() <= before


def test_mismatched_collectives_time_out_instead_of_hanging(tmp_path):
    start = time.monotonic()
    with pytest.raises(RankFailedError, match="Timed out waiting 2000ms"):
        run_on_ranks(save_with_barrier_inside_if, str(tmp_path / "w.pt"), collective_timeout_s=2)
    assert time.monotonic() - start < BOUND_S
    assert multiprocessing.active_children() == []


def test_a_run_still_going_after_timeout_s_is_stopped(tmp_path):
    before = children()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] of 2 were still running after 10 s"):
        run_on_ranks(save_with_barrier_inside_if, str(tmp_path / "w.pt"),
                     timeout_s=10, collective_timeout_s=600)
    assert time.monotonic() - start < 10 + 15  # the timeout, then SIGTERM and join
    assert multiprocessing.active_children() == []
    assert children() <= before


def test_reading_before_rank0_has_written_fails_on_the_reader(tmp_path):
    with pytest.raises(RankFailedError, match="rank 1 of 2 failed with FileNotFoundError") as caught:
        run_on_ranks(load_without_barrier, str(tmp_path / "w.pt"))
    assert list(caught.value.failures) == [1]


def test_a_rank_that_dies_without_a_result_is_reported():
    with pytest.raises(RankFailedError, match="rank 0 of 1 failed with exit code 3 and no result"):
        run_on_ranks(exit_without_result, world_size=1)
    assert multiprocessing.active_children() == []


def test_a_rank_that_exits_badly_after_its_result_does_not_stop_the_others():
    assert run_on_ranks(exit_badly_after_the_result) == [0, 1]
    assert multiprocessing.active_children() == []


def test_what_fn_leaves_in_reference_cycles_is_freed_while_the_group_is_up(tmp_path):
    """FSDP models sit in reference cycles; freed only at exit, after the group is gone,
    they can abort the process ("terminate called without an active exception")."""
    assert run_on_ranks(leave_a_reference_cycle, str(tmp_path)) == [0, 1]
    for rank in range(2):
        assert (tmp_path / f"freed{rank}.txt").read_text() == "group up: True"


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


def test_rank_failed_error_names_failed_and_stopped_ranks():
    error = RankFailedError({1: "ValueError: boom", 0: "RuntimeError: peer gone"}, 3, stopped=[2])
    assert str(error).splitlines() == ["rank 1 of 3 failed with ValueError: boom",
                                       "rank 0 of 3 failed with RuntimeError: peer gone",
                                       "stopped the ranks still running: [2]"]
    assert error.failures == {1: "ValueError: boom", 0: "RuntimeError: peer gone"}
    assert error.stopped == [2]


def test_world_size_must_be_positive():
    with pytest.raises(ValueError, match="world_size must be at least 1, got 0"):
        run_on_ranks(fail_on_rank, world_size=0)


# --- the same code as one rank, in this process ------------------------------------------------

@pytest.fixture
def one_rank(monkeypatch):
    """A gloo group of one: this process is rank 0 of 1."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_trains_saves_and_loads(one_rank, tmp_path):
    path = str(tmp_path / "w.pt")
    result = train_and_save_on_rank0(0, 1, path)
    expected, losses = averaged_sgd_step(world_size=1)
    assert result["loss"] == pytest.approx(losses[0], rel=1e-6)
    assert_same_tensors(result["state_dict"], expected, exact=False)
    loaded = load_on_every_rank(0, 1, path)
    assert loaded["keys"] == KEYS and loaded["device"] == str(rank_device(0))
    assert_same_tensors(loaded["state_dict"], result["state_dict"])


def test_one_rank_sharded_save_and_load(one_rank, tmp_path):
    folder = str(tmp_path / "dcp")
    saved = save_sharded(0, 1, folder)
    assert saved["local_shapes"] == {name: tuple(t.shape) for name, t in saved["state_dict"].items()}
    loaded = load_sharded(0, 1, folder)
    assert_same_tensors(loaded["state_dict"], saved["state_dict"])
    assert sorted(loaded["optimizer"]["state"]) == sorted(KEYS)


def test_one_rank_pitfalls_run_when_nobody_waits(one_rank, tmp_path):
    """With a single rank there is nobody to wait for: the wrong ways only go wrong with more."""
    assert fail_on_rank(0, 1) == 1.0
    with pytest.raises(ValueError, match="rank 0 fails here on purpose"):
        fail_on_rank(0, 1, failing_rank=0)
    assert list(load_without_barrier(0, 1, str(tmp_path / "a.pt"), write_s=0)) == KEYS
    assert save_with_barrier_inside_if(0, 1, str(tmp_path / "b.pt")) > 0


def test_saving_the_ddp_wrapper_gives_module_keys_a_plain_model_refuses(one_rank, tmp_path):
    wrapper = DDP(tiny_model(seed=0))
    path = str(tmp_path / "wrapper.pt")
    torch.save(wrapper.state_dict(), path)
    state_dict = torch.load(path, weights_only=True)
    assert list(state_dict) == ["module." + key for key in KEYS]
    with pytest.raises(RuntimeError, match='Unexpected key\\(s\\) in state_dict: "module.0.weight"'):
        tiny_model().load_state_dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "module.")
    tiny_model().load_state_dict(state_dict)
    assert_same_tensors(state_dict, tiny_model(seed=0).state_dict())
    # what save_on_rank0 saves instead: the plain keys
    save_on_rank0(wrapper, path)
    assert list(torch.load(path, weights_only=True)) == KEYS


def test_run_rank_writes_the_result_or_the_error(monkeypatch, tmp_path):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.setenv(name, "")  # restored after the test; run_rank sets them
    run_rank(0, 1, free_port(), str(tmp_path), 30, fail_on_rank, ())
    assert read_outcome(str(tmp_path), 0) == {"result": 1.0}
    assert not dist.is_initialized()  # it left the group
    run_rank(0, 1, free_port(), str(tmp_path), 30, fail_on_rank, (0,))
    outcome = read_outcome(str(tmp_path), 0)
    assert outcome["error"] == "ValueError: rank 0 fails here on purpose"
    assert "Traceback" in outcome["traceback"]
    assert not dist.is_initialized()
    assert read_outcome(str(tmp_path), 1) == {}


def test_run_rank_reports_a_rank_that_cannot_join_the_group(monkeypatch, tmp_path):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.setenv(name, "")
    run_rank(0, 0, free_port(), str(tmp_path), 30, fail_on_rank, ())  # a world of no one
    outcome = read_outcome(str(tmp_path), 0)
    assert outcome["error"].startswith("ValueError") and "init_process_group" in outcome["traceback"]
    assert not dist.is_initialized()


def test_stop_processes_kills_what_ignores_sigterm():
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    process = spawn.Process(target=ignore_sigterm_and_wait, args=(ready,))
    process.start()
    assert ready.wait(60)
    stop_processes([process], grace_s=1.0)
    assert not process.is_alive() and process.exitcode == -signal.SIGKILL


def test_rank_device_is_the_rank_gpu_when_there_are_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device(3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(0) == torch.device("cuda", 0)
    assert rank_device(3) == torch.device("cuda", 1)


def test_storage_locations_say_where_torch_load_would_put_tensors(device, tmp_path):
    path = str(tmp_path / "w.pt")
    torch.save(tiny_model().to(device).state_dict(), path)
    tag = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.current_device()}"
    assert storage_locations(path) == [tag]
    assert {t.device for t in torch.load(path, weights_only=True).values()} == {device}
    mapped = torch.load(path, map_location="cpu", weights_only=True)
    assert {t.device.type for t in mapped.values()} == {"cpu"}
