import argparse
import io
import os
import pathlib
import pickle
import stat
import subprocess
import sys
from collections import OrderedDict
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from tutorials_pkg.demo_models import TiedEmbeddingNet
from tutorials_pkg.digits import digits_classifier, train_epoch
from tutorials_pkg.save_load import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    NotACheckpointError,
    TruncatedCheckpointError,
    convert_to_state_dicts,
    copy_state_dict,
    digits_run,
    drop_from_page_cache,
    filter_state_dict,
    in_page_cache,
    load_checkpoint,
    load_on_meta,
    misspelt_visible_devices,
    restore_run_state,
    run_state,
    save_atomically,
    save_checkpoint,
    select_gpus,
    strip_prefix,
    strip_prefix_by_replacing_anywhere,
    strip_prefix_by_slicing_every_key,
    strip_prefix_with_a_misspelt_name,
    strip_wrapper_prefixes,
    touch_every_page,
    train_run,
    warm_page_cache,
)
from tutorials_pkg.unwrap import unwrap_model


def trained_model(seed=0):
    torch.manual_seed(seed)
    model = digits_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return model.eval(), optimizer


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def unchanged(model: nn.Module, before: dict) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def encoder_net():
    encoder = nn.Sequential(OrderedDict(module=nn.Linear(6, 4), act=nn.ReLU()))
    return nn.Sequential(OrderedDict(encoder=encoder, head=nn.Linear(4, 2)))


class WithExtraState(nn.Module):
    """A module with state outside its tensors (``get_extra_state``)."""

    def __init__(self, extra=None):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.extra = {"version": 1} if extra is None else extra

    def get_extra_state(self):
        return self.extra

    def set_extra_state(self, state):
        self.extra = state


# --- saving -----------------------------------------------------------------

def test_round_trip_restores_model_optimizer_and_meta(tmp_path):
    model, optimizer = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer, epoch=3, losses=[1.5, 0.5], note="digits")
    fresh = digits_classifier()
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1.0)
    meta = load_checkpoint(path, fresh, fresh_optimizer)
    assert meta == {"epoch": 3, "losses": [1.5, 0.5], "note": "digits"}
    assert same_weights(fresh, model)
    assert fresh_optimizer.param_groups[0]["lr"] == 1e-2
    exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left


def test_saved_file_gets_the_usual_permissions(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({}, plain)
    atomic = tmp_path / "atomic.pt"
    save_atomically({}, atomic)
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_overwriting_keeps_the_files_permissions(tmp_path, mode):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, digits_classifier(), epoch=1)
    os.chmod(path, mode)
    save_checkpoint(path, digits_classifier(), epoch=2)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert torch.load(path)["epoch"] == 2


def test_saving_through_a_symlink_writes_the_file_it_points_to(tmp_path):
    real = tmp_path / "runs" / "ckpt.pt"
    real.parent.mkdir()
    link = tmp_path / "latest.pt"
    link.symlink_to(real)
    save_checkpoint(link, digits_classifier(), epoch=1)  # a dangling link: creates the target
    save_checkpoint(link, digits_classifier(), epoch=2)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert torch.load(real)["epoch"] == 2
    assert sorted(p.name for p in real.parent.iterdir()) == ["ckpt.pt"]


def half_then_fail(real_save):
    def save(obj, file):
        if not str(getattr(file, "name", "")).endswith((".tmp", ".pt")):  # the weights_only check
            return real_save(obj, file)
        data = io.BytesIO()
        real_save(obj, data)
        file.write(data.getvalue()[: len(data.getvalue()) // 2])
        raise OSError(28, "No space left on device")
    return save


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path):
    old, _ = trained_model(seed=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, old, epoch=1)
    new, _ = trained_model(seed=2)
    with mock.patch("torch.save", half_then_fail(torch.save)), pytest.raises(OSError, match="No space"):
        save_checkpoint(path, new, epoch=2)
    fresh = digits_classifier()
    assert load_checkpoint(path, fresh) == {"epoch": 1}
    assert same_weights(fresh, old)
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_the_same_failure_during_a_plain_save_destroys_the_checkpoint(tmp_path):
    """The control: without the temporary file the old checkpoint is lost."""
    old, _ = trained_model(seed=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": old.state_dict()}, path)
    with open(path, "wb") as file, pytest.raises(OSError, match="No space"):
        half_then_fail(torch.save)({"model": old.state_dict()}, file)
    with pytest.raises(OSError, match=r"\[Errno 22\] Invalid argument"):  # torch's own message
        torch.load(path)
    with pytest.raises(TruncatedCheckpointError, match=r"ckpt\.pt is cut short: its [\d,]+ bytes"):
        load_checkpoint(path, digits_classifier())


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1, 0.0])
def test_a_truncated_or_empty_file_gets_an_error_that_names_it(tmp_path, keep):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, digits_classifier())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    expected = "is empty" if keep == 0 else "is cut short"
    with pytest.raises(TruncatedCheckpointError, match=rf"ckpt\.pt {expected}"):
        load_checkpoint(path, digits_classifier())
    with pytest.raises(ValueError, match=r"ckpt\.pt is not a whole torch.save file"):
        load_on_meta(path, digits_classifier)


def test_errors_that_are_not_truncation_keep_their_own_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt", digits_classifier())
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, digits_classifier())
    with mock.patch("torch.load", side_effect=RuntimeError("Attempting to deserialize object on a CUDA device")):
        with pytest.raises(RuntimeError, match="CUDA device"):  # a complete file: not called truncated
            load_checkpoint(path, digits_classifier())


def test_save_errors_name_the_callers_path_not_the_temporary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'[^']*/missing/ckpt\.pt'$"):
        save_checkpoint(tmp_path / "missing" / "ckpt.pt", digits_classifier())


def test_a_long_but_valid_file_name_saves(tmp_path):
    name = "n" * 250 + ".pt"
    torch.save({}, tmp_path / name)  # the control: the name itself is valid
    save_checkpoint(tmp_path / name, digits_classifier(), epoch=1)
    assert load_checkpoint(tmp_path / name, digits_classifier()) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_saving_to_a_directory_names_the_directory_not_the_temporary_file(tmp_path):
    """Issue 25, item 9: it named '.adir.d8f602ec.tmp' -> 'adir'."""
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match=r"Is a directory: '[^']*adir'$"):
        save_checkpoint(tmp_path / "adir", digits_classifier())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_a_long_name_of_chinese_characters_saves(tmp_path):
    """252 bytes of 3-byte characters: the temporary name is cut between characters (issue 25, 9)."""
    name = "检" * 83 + ".pt"  # 249 + 3 = 252 bytes
    assert len(name.encode()) == 252
    save_checkpoint(tmp_path / name, digits_classifier(), epoch=1)
    assert load_checkpoint(tmp_path / name, digits_classifier()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [name]


KILLED_SAVE = """
import io, sys, time
import torch
from tutorials_pkg.digits import digits_classifier
from tutorials_pkg.save_load import save_checkpoint

real_save = torch.save

def slow_save(obj, file):
    if not str(getattr(file, "name", "")).endswith(".tmp"):  # the weights_only check's pickle
        return real_save(obj, file)
    data = io.BytesIO()
    real_save(obj, data)
    file.write(data.getvalue()[: len(data.getvalue()) // 2])
    file.flush()
    print("half written", flush=True)
    time.sleep(120)

torch.save = slow_save
torch.manual_seed(2)
save_checkpoint(sys.argv[1], digits_classifier(), epoch=2)
"""


def start_killed_save(path):
    process = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "half written"
    return process


def stop(process):
    process.kill()
    process.wait(timeout=60)
    process.stdout.close()


def test_a_process_killed_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    old, _ = trained_model(seed=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, old, epoch=1)
    before = path.read_bytes()
    stop(start_killed_save(path))
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # killed mid-write
    assert path.read_bytes() == before
    fresh = digits_classifier()
    assert load_checkpoint(path, fresh) == {"epoch": 1} and same_weights(fresh, old)
    save_checkpoint(path, old, epoch=3)  # the next save removes what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_the_next_save_replaces_a_killed_saves_leftover_and_nothing_else(tmp_path):
    """One fixed temporary name per target: no lock, no search, nothing piles up."""
    path = tmp_path / "ckpt.pt"
    leftover = tmp_path / ".ckpt.pt.tmp"  # what a killed save leaves
    leftover.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".ckpt.pt.backup.tmp"
    unrelated.write_bytes(b"keep me")
    for epoch in range(3):
        save_checkpoint(path, digits_classifier(), epoch=epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.pt.backup.tmp", "ckpt.pt"]


# --- saving: metadata the loader would refuse ---------------------------------------

@pytest.mark.parametrize("value, global_name", [
    (np.float64(0.9), "numpy"),
    (np.zeros(3), "numpy"),
    (pathlib.Path("data/train"), "pathlib"),
    (argparse.Namespace(lr=0.1), "argparse.Namespace"),
    (slice(1, 2), "slice"),
], ids=["numpy-scalar", "numpy-array", "path", "namespace", "other"])
def test_meta_the_loader_would_refuse_is_refused_at_save_time(tmp_path, value, global_name):
    """torch's own message names the global: no search for the entry (issue 22)."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, digits_classifier(), epoch=1)
    before = path.read_bytes()
    with pytest.raises(pickle.UnpicklingError, match=global_name):
        save_checkpoint(path, digits_classifier(), epoch=2, momentum=value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]
    with pytest.raises(pickle.UnpicklingError):  # the control: the loader does refuse it
        buffer = io.BytesIO()
        torch.save({"momentum": value}, buffer)
        buffer.seek(0)
        torch.load(buffer)


def test_a_refused_value_deep_inside_is_refused_and_the_fixed_value_saves(tmp_path):
    path = tmp_path / "ckpt.pt"
    config = {"data": {"root": pathlib.Path("data"), "sizes": [1, np.int64(2)]}}
    with pytest.raises(pickle.UnpicklingError, match="pathlib"):
        save_checkpoint(path, digits_classifier(), config=config)
    config["data"]["root"] = str(config["data"]["root"])
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        save_checkpoint(path, digits_classifier(), config=config)
    config["data"]["sizes"] = [1, 2]
    args = argparse.Namespace(lr=0.1, out=pathlib.Path("runs"))
    save_checkpoint(path, digits_classifier(), config=config, args={**vars(args), "out": str(args.out)})
    assert load_checkpoint(path, digits_classifier())["args"] == {"lr": 0.1, "out": "runs"}
    assert not path.with_name(".ckpt.pt.tmp").exists()


def test_a_value_whose_pickle_runs_code_is_refused_at_save_time_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    with pytest.raises(pickle.UnpicklingError, match="os.makedirs"):
        save_checkpoint(tmp_path / "ckpt.pt", digits_classifier(), note=Payload(str(marker)))
    assert not marker.exists() and os.listdir(tmp_path) == []


def test_the_weights_only_check_reads_no_tensor_bytes_and_needs_no_gpu():
    """It checks the pickle only (skip_data, map_location='meta'): a 1 GiB tensor costs nothing,
    and a tensor saved from a GPU is not loaded onto one (issue 25, item 6)."""
    from tutorials_pkg.save_load import check_loads_with_weights_only

    huge = torch.empty(2**28)  # 1 GiB, never written nor read back
    with mock.patch("torch.load", wraps=torch.load) as load:
        check_loads_with_weights_only({"model": {"w": huge}, "epoch": 1})
    assert load.call_args.kwargs["map_location"] == "meta"
    with mock.patch("torch.serialization.location_tag", return_value="cuda:0"):  # as if on a GPU
        check_loads_with_weights_only({"w": torch.ones(2)})  # no CUDA needed, none touched
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        check_loads_with_weights_only([np.float64(1.0)])


def test_extra_state_saves_loads_and_is_checked_like_the_rest(tmp_path):
    model = WithExtraState({"version": 7})
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model)
    fresh = WithExtraState()
    load_checkpoint(path, fresh)
    assert fresh.extra == {"version": 7} and torch.equal(fresh.fc.weight, model.fc.weight)
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state_dict with extra state
    load_checkpoint(tmp_path / "bare.pt", WithExtraState())
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        save_checkpoint(path, WithExtraState({"v": np.float32(1.0)}))


# --- loading: security -----------------------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    model, _ = trained_model()
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "note": Payload(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError, match="os.makedirs"):
        load_checkpoint(path, digits_classifier())
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unsafe load runs it
    assert marker.exists()


def test_a_whole_pickled_model_is_refused(tmp_path):
    model, _ = trained_model()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(pickle.UnpicklingError, match="torch.nn.modules.container.Sequential"):
        load_checkpoint(tmp_path / "whole.pt", digits_classifier())


ALLOWED = [nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout]


@pytest.mark.parametrize("wrap", ["plain", "dataparallel"])
def test_an_old_whole_model_file_converts_to_state_dicts_once(tmp_path, wrap):
    model, optimizer = trained_model()
    saved = nn.DataParallel(model) if wrap == "dataparallel" else model
    old = tmp_path / "best.pt"
    torch.save({"epoch": 9, "model": saved, "ema": saved, "optimizer": optimizer.state_dict()}, old)
    new = tmp_path / "best-state.pt"
    allowed = ALLOWED + ([nn.DataParallel] if wrap == "dataparallel" else [])
    assert convert_to_state_dicts(old, new, allowed) == ["ema", "model"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(new) == []
    fresh = digits_classifier()
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    meta = load_checkpoint(new, fresh, fresh_optimizer)  # the defaults work from now on
    assert same_weights(fresh, model) and meta["epoch"] == 9 and set(meta) == {"epoch", "ema"}


def test_conversion_refuses_a_file_that_needs_more_than_allowed(tmp_path):
    old = tmp_path / "best.pt"
    torch.save({"model": digits_classifier(), "note": Payload(str(tmp_path / "ran"))}, old)
    with pytest.raises(pickle.UnpicklingError, match="os.makedirs"):  # torch's message names it
        convert_to_state_dicts(old, tmp_path / "new.pt", ALLOWED)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "new.pt").exists()
    torch.save(digits_classifier(), old)  # a bare pickled model is converted too
    assert convert_to_state_dicts(old, tmp_path / "new.pt", ALLOWED) == ["model"]
    torch.save(torch.zeros(2), old)
    with pytest.raises(TypeError, match="holds a Tensor, neither a module nor a dictionary"):
        convert_to_state_dicts(old, tmp_path / "new.pt", ALLOWED)


# --- the files and models readers bring (issue 24) ------------------------------------

@pytest.mark.parametrize("kind", ["text", "json", "npy", "npz", "pickle"])
def test_a_file_that_is_not_a_pytorch_checkpoint_says_so_and_never_suggests_weights_only_false(
        tmp_path, kind):
    import json

    path = tmp_path / f"weights.{kind}"
    if kind == "text":
        path.write_text("hello world\n")  # torch.load: KeyError: 101
    elif kind == "json":
        path.write_text(json.dumps({"fc1.weight": [[0.0]]}))  # torch.load: "weights_only=False will likely succeed"
    elif kind == "npy":
        np.save(path, np.zeros(3))
    elif kind == "npz":
        np.savez(path, w=np.zeros(3))
    else:
        path.write_bytes(pickle.dumps({"w": [0.0]}))
    model = digits_classifier()
    before = copy_state_dict(model)
    with pytest.raises(NotACheckpointError) as error:
        load_checkpoint(path, model)
    assert str(path) in str(error.value) and "not" in str(error.value)
    assert "weights_only" not in str(error.value)
    assert unchanged(model, before)


def test_a_file_from_torch_save_s_old_format_still_loads(tmp_path):
    model, _ = trained_model()
    torch.save({"model": model.state_dict(), "epoch": 2}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    fresh = digits_classifier()
    assert load_checkpoint(tmp_path / "old.pt", fresh) == {"epoch": 2} and same_weights(fresh, model)


def test_optimizer_as_a_meta_name_is_refused_with_the_reason(tmp_path):
    with pytest.raises(TypeError, match="optimizer= is the optimizer, not a dict: rename it"):
        save_checkpoint(tmp_path / "ckpt.pt", digits_classifier(), optimizer={"lr": 0.1})
    assert os.listdir(tmp_path) == []


def test_a_model_on_the_meta_device_gets_the_files_tensors(tmp_path):
    model, _ = trained_model()
    save_checkpoint(tmp_path / "ckpt.pt", model, epoch=1)
    with torch.device("meta"):
        skeleton = digits_classifier()
    assert load_checkpoint(tmp_path / "ckpt.pt", skeleton) == {"epoch": 1}
    assert not any(t.is_meta for t in skeleton.state_dict().values())
    assert same_weights(skeleton, model)


@pytest.mark.parametrize("layout", ["state_dict", "model_state_dict", "bare"])
def test_the_common_checkpoint_layouts_load(tmp_path, layout):
    model, _ = trained_model()
    checkpoint = (model.state_dict() if layout == "bare"
                  else {layout: model.state_dict(), "epoch": 5, "global_step": 50})
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    fresh = digits_classifier()
    meta = load_checkpoint(tmp_path / "ckpt.pt", fresh)
    assert same_weights(fresh, model)
    assert meta == ({} if layout == "bare" else {"epoch": 5, "global_step": 50})


def test_a_file_with_its_weights_under_another_name_names_that_key(tmp_path):
    model, _ = trained_model()
    torch.save({"net": model.state_dict(), "epoch": 5}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"holds no model weights: .* the tensors are under \['net'\]: "
                                         r"pass checkpoint\['net'\]"):
        load_checkpoint(tmp_path / "ckpt.pt", digits_classifier())


def test_load_on_meta_strips_wrapper_prefixes_and_keeps_tied_weights_tied(tmp_path):
    tied = TiedEmbeddingNet(vocab_size=20, dim=4)
    save_checkpoint(tmp_path / "tied.pt", nn.DataParallel(tied))  # module.embed.weight, ...
    loaded = load_on_meta(tmp_path / "tied.pt", lambda: TiedEmbeddingNet(vocab_size=20, dim=4))
    assert loaded.out.weight is loaded.embed.weight
    assert len(list(loaded.parameters())) == len(list(tied.parameters()))
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(tokens), tied(tokens))
    with torch.device("meta"):
        skeleton = TiedEmbeddingNet(vocab_size=20, dim=4)
    load_checkpoint(tmp_path / "tied.pt", skeleton)  # the same through load_checkpoint
    assert skeleton.out.weight is skeleton.embed.weight


def damage(path: pathlib.Path, where: float, count: int = 200) -> None:
    """Zero ``count`` bytes at ``where`` (a fraction of the file), as a bad disk or copy might."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    data[start:start + count] = bytes(count)
    path.write_bytes(data)


def test_zeroed_bytes_inside_a_checkpoint_are_caught_by_its_crc32(tmp_path):
    model, _ = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model)
    damage(path, 0.5)  # inside fc1.weight's bytes
    assert torch.load(path)["model"]  # the control: torch.load does not notice
    fresh = digits_classifier()
    before = copy_state_dict(fresh)
    with pytest.raises(CorruptCheckpointError, match=r"ckpt\.pt is damaged: the bytes of .*/data/\d+ are "
                                                     r"not those torch.save wrote"):
        load_checkpoint(path, fresh)
    assert unchanged(fresh, before)


def test_a_damaged_record_header_is_reported_as_damage(tmp_path):
    import zipfile

    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, digits_classifier())
    with zipfile.ZipFile(path) as archive:
        second = archive.infolist()[1].header_offset
    data = bytearray(path.read_bytes())
    data[second:second + 4] = bytes(4)  # the record's "PK\x03\x04"
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpointError, match=r"ckpt\.pt is damaged: the bytes of archive/\.format_version"):
        load_checkpoint(path, digits_classifier())


def test_a_file_saved_without_crc32s_still_loads(tmp_path):
    from torch.utils.serialization import config

    model, _ = trained_model()
    with mock.patch.object(config.save, "compute_crc32", False):
        save_checkpoint(tmp_path / "ckpt.pt", model, epoch=1)
    fresh = digits_classifier()
    assert load_checkpoint(tmp_path / "ckpt.pt", fresh) == {"epoch": 1} and same_weights(fresh, model)


# --- loading: prefixes ------------------------------------------------------

@pytest.mark.parametrize("save_wrap", ["plain", "dp", "compile", "dp+compile", "compile+dp"])
@pytest.mark.parametrize("load_wrap", ["plain", "dp", "compile"])
def test_every_wrapper_combination_loads(tmp_path, save_wrap, load_wrap):
    def wrap(model, how):
        for step in how.split("+"):
            if step == "dp":
                model = nn.DataParallel(model)
            elif step == "compile":
                model = torch.compile(model)  # only wrapped, never called
        return model

    model, _ = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, wrap(model, save_wrap))
    target = wrap(digits_classifier(), load_wrap)
    load_checkpoint(path, target)
    assert same_weights(unwrap_model(target), model)


def test_module_inside_a_name_survives_prefix_removal(tmp_path):
    net = encoder_net()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, nn.DataParallel(net))
    assert "module.encoder.module.weight" in torch.load(path)["model"]
    fresh = encoder_net()
    load_checkpoint(path, fresh)
    assert same_weights(fresh, net)


def test_a_checkpoint_of_a_model_with_a_compiled_child_loads_either_way(tmp_path):
    """0._orig_mod.weight <-> 0.weight (issue 25, item 8)."""
    def net(compiled):
        first = nn.Linear(6, 4)
        return nn.Sequential(torch.compile(first) if compiled else first, nn.ReLU(), nn.Linear(4, 2))

    for saved, loaded in [(True, False), (False, True)]:
        torch.manual_seed(0)
        source = net(saved)
        save_checkpoint(tmp_path / "ckpt.pt", source)
        target = net(loaded)
        load_checkpoint(tmp_path / "ckpt.pt", target)
        assert torch.equal(unwrap_model(target[0]).weight, unwrap_model(source[0]).weight)


def test_a_real_child_named_module_saved_through_dataparallel_loads(tmp_path):
    """module.module.weight -> module.weight (issue 25, item 8)."""
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(3, 3)

    model = Holder()
    save_checkpoint(tmp_path / "ckpt.pt", nn.DataParallel(model))
    assert list(torch.load(tmp_path / "ckpt.pt")["model"]) == ["module.module.weight", "module.module.bias"]
    fresh = Holder()
    load_checkpoint(tmp_path / "ckpt.pt", fresh)
    assert same_weights(fresh, model)


def test_a_model_whose_own_top_level_layer_is_called_module_keeps_its_keys(tmp_path):
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(3, 3)

    model = Holder()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model)
    fresh = Holder()
    load_checkpoint(path, fresh)
    assert same_weights(fresh, model)


def test_strip_prefix_copies_and_keeps_metadata():
    state = nn.DataParallel(encoder_net()).state_dict()
    stripped = strip_prefix(state)
    assert list(stripped) == ["encoder.module.weight", "encoder.module.bias", "head.weight", "head.bias"]
    assert next(iter(state)) == "module.encoder.module.weight"  # the input is unchanged
    assert "encoder.module" in stripped._metadata and "module.encoder.module" in state._metadata
    assert strip_prefix({"a.weight": torch.zeros(1)}) == {"a.weight": torch.zeros(1)}
    assert list(strip_prefix({"_orig_mod.fc.weight": torch.zeros(1)}, "_orig_mod.")) == ["fc.weight"]


def test_strip_prefix_takes_whole_names_with_or_without_the_dot():
    state = nn.DataParallel(digits_classifier()).state_dict()
    assert list(strip_prefix(state, "module")) == list(digits_classifier().state_dict())
    assert list(strip_prefix({"modules.x": torch.zeros(1)}, "module")) == ["modules.x"]
    assert list(strip_prefix(state, "")) == list(state)


def test_strip_wrapper_prefixes_removes_nested_wrappers_in_any_order():
    model = digits_classifier()
    for prefix in ("module._orig_mod.", "_orig_mod.module.", "module.", "_orig_mod.", ""):
        state = {prefix + k: v for k, v in model.state_dict().items()}
        assert list(strip_wrapper_prefixes(state, model)) == list(model.state_dict())


def test_the_wrong_prefix_strippers_damage_keys():
    state = digits_classifier().state_dict()
    assert list(strip_prefix_by_slicing_every_key(state)) == ["ght", "s"]  # 4 tensors in, 2 out
    saved = nn.DataParallel(encoder_net()).state_dict()
    replaced = strip_prefix_by_replacing_anywhere(saved)
    assert "encoder.weight" in replaced and "encoder.module.weight" not in replaced
    net = encoder_net()
    result = net.load_state_dict(replaced, strict=False)
    assert result.missing_keys == ["encoder.module.weight", "encoder.module.bias"]
    assert not torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])


def test_the_misspelt_prefix_strips_nothing_and_strict_false_loads_nothing():
    saved = nn.DataParallel(digits_classifier()).state_dict()
    assert list(strip_prefix_with_a_misspelt_name(saved)) == list(saved)
    with pytest.raises(RuntimeError, match="Missing key"):  # loud under the default strict=True
        digits_classifier().load_state_dict(strip_prefix_with_a_misspelt_name(saved))
    net = digits_classifier()
    before = copy_state_dict(net)
    result = net.load_state_dict(strip_prefix_with_a_misspelt_name(saved), strict=False)
    assert result.missing_keys == list(net.state_dict()) and result.unexpected_keys == list(saved)
    assert unchanged(net, before)


# --- loading: mismatches -------------------------------------------------------

def test_mismatch_error_lists_missing_unexpected_and_shapes(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = digits_classifier().state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["fc2.bias"]
    state["fc1.weight"] = torch.zeros(5, 64)
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(path, digits_classifier())
    message = str(error.value)
    assert "missing (in the model, not in the checkpoint): fc2.bias" in message
    assert "unexpected (in the checkpoint, not in the model): extra.weight" in message
    assert "fc1.weight: checkpoint (5, 64), model (32, 64)" in message
    assert isinstance(error.value, ValueError)


def test_non_strict_loads_what_fits_says_what_it_skipped_and_never_a_wrong_shape(tmp_path):
    model, _ = trained_model()
    state = model.state_dict()
    del state["fc2.bias"]
    state["head.weight"] = torch.zeros(2)
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    fresh = digits_classifier()
    with pytest.warns(UserWarning, match=r"ckpt\.pt loaded with strict=False: not in the file, left as "
                                         r"they were: fc2\.bias; not in the model, ignored: head\.weight"):
        assert load_checkpoint(path, fresh, strict=False) == {}
    assert torch.equal(fresh.fc1.weight, model.fc1.weight)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch") as error:
        load_checkpoint(path, digits_classifier(hidden=8), strict=False)
    assert "fc1.weight: checkpoint (32, 64), model (8, 64)" in str(error.value)


def test_a_file_without_model_weights_is_refused(tmp_path):
    torch.save({"epoch": 3, "accuracy": 0.9}, tmp_path / "metrics.pt")
    fresh = digits_classifier()
    before = copy_state_dict(fresh)
    with pytest.raises(ValueError, match=r"metrics\.pt holds no model weights: .* accuracy, epoch"):
        load_checkpoint(tmp_path / "metrics.pt", fresh, strict=False)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "other.pt")  # tensors, none of ours
    with pytest.raises(CheckpointMismatchError, match="unexpected .*: other.weight"):
        load_checkpoint(tmp_path / "other.pt", fresh, strict=False)
    assert unchanged(fresh, before)


def test_long_key_lists_are_shortened(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(12)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"layer7\.weight \.\.\. and 4 more"):
        load_checkpoint(path, digits_classifier())


def test_missing_optimizer_state_and_non_dict_files_get_clear_errors(tmp_path):
    model, optimizer = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, epoch=1)
    fresh = digits_classifier()
    before = copy_state_dict(fresh)
    with pytest.raises(KeyError, match=r"no optimizer state; it holds \['epoch', 'model'\]"):
        load_checkpoint(path, fresh, optimizer)
    assert unchanged(fresh, before)  # nothing loaded
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(TypeError, match="holds a Tensor"):
        load_checkpoint(tmp_path / "tensor.pt", digits_classifier())


@pytest.mark.parametrize("groups", [[["fc1.weight"], ["fc2.weight"]], [["fc1.weight", "fc1.bias"]]],
                         ids=["two-groups", "fewer-parameters"])
def test_an_optimizer_that_does_not_fit_is_refused_before_the_model_changes(tmp_path, groups):
    model, optimizer = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer)
    fresh = digits_classifier()
    params = dict(fresh.named_parameters())
    wrong = torch.optim.Adam([{"params": [params[name] for name in group]} for group in groups])
    before = copy_state_dict(fresh)
    with pytest.raises(ValueError, match=r"the optimizer state has 1 parameter groups of \[4\] parameters"):
        load_checkpoint(path, fresh, wrong)
    assert unchanged(fresh, before) and wrong.state_dict()["state"] == {}


def test_an_optimizer_of_another_kind_is_refused_before_anything_changes(tmp_path):
    """Adam's state into SGD: torch loads it (lr silently Adam's), then the step fails (issue 25, 7)."""
    model, optimizer = trained_model()  # Adam
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer)
    fresh = digits_classifier()
    sgd = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    before = copy_state_dict(fresh)
    with pytest.raises(ValueError, match=r"saved by another kind of optimizer: it has settings "
                                         r"\[.*'betas'.*\], which SGD does not have"):
        load_checkpoint(path, fresh, sgd)
    assert unchanged(fresh, before) and sgd.param_groups[0]["lr"] == 0.1


def test_optimizer_state_for_parameters_in_another_order_is_refused(tmp_path):
    model, optimizer = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer)
    fresh = digits_classifier()
    reordered = torch.optim.Adam(list(fresh.parameters())[::-1], lr=1e-2)
    before = copy_state_dict(fresh)
    with pytest.raises(ValueError, match=r"parameter 0 \(exp_avg\) has shape \(32, 64\), the parameter "
                                         r"\(10,\): the parameters are not in the order"):
        load_checkpoint(path, fresh, reordered)
    assert unchanged(fresh, before)


# --- loading to fine-tune -----------------------------------------------------------

def test_filter_state_dict_keeps_what_fits_and_says_why_the_rest_does_not():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    pretrained = nn.DataParallel(resnet18(num_classes=1000)).state_dict()  # prefixes are handled
    pretrained["module.extra.weight"] = torch.zeros(1)
    model = resnet18(num_classes=10)
    kept, dropped = filter_state_dict(pretrained, model)
    assert dropped == {"fc.weight": "shape (1000, 512) in the checkpoint, (10, 512) in the model",
                       "fc.bias": "shape (1000,) in the checkpoint, (10,) in the model",
                       "extra.weight": "not in the model"}
    assert len(kept) == len(model.state_dict()) - 2
    result = model.load_state_dict(kept, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"] and result.unexpected_keys == []
    assert torch.equal(model.conv1.weight, pretrained["module.conv1.weight"])


def test_filter_state_dict_refuses_a_checkpoint_where_nothing_fits():
    """Passing the whole checkpoint instead of its model entry would load nothing, silently."""
    model = digits_classifier()
    checkpoint = {"model": model.state_dict(), "epoch": 1}
    with pytest.raises(CheckpointMismatchError, match=r"nothing in it fits the model; it holds "
                                                      r"\['epoch', 'model'\]"):
        filter_state_dict(checkpoint, model)
    kept, dropped = filter_state_dict(checkpoint["model"], nn.DataParallel(digits_classifier()))
    assert list(kept) == list(model.state_dict()) and dropped == {}  # keys fit the unwrapped model


# --- resuming -----------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:600], dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target[:600])


@pytest.fixture(scope="module")
def straight(digits):
    """Four epochs of a run that never stopped."""
    return train_run(digits_run(0), *digits, 4, [])


@pytest.fixture
def stopped(tmp_path, digits):
    """The same run stopped after two epochs and saved with its ``run_state``: the checkpoint's path."""
    run = digits_run(0)
    path = tmp_path / "resume.pt"
    losses = train_run(run, *digits, 2, [])
    save_checkpoint(path, run.model, run.optimizer, epoch=2, losses=losses, **run_state(run))
    torch.manual_seed(999)  # whatever happens in between must not matter
    return path


def test_resumed_training_matches_an_uninterrupted_run_exactly(digits, straight, stopped):
    run = digits_run(123)
    meta = load_checkpoint(stopped, run.model, run.optimizer)
    restore_run_state(run, meta)
    resumed = train_run(run, *digits, 4 - meta["epoch"], list(meta["losses"]))
    assert resumed == straight
    assert len(set(straight)) == 4 and straight[-1] < straight[0]


@pytest.mark.parametrize("left_out", ["optimizer", "rng"])
def test_resuming_without_optimizer_or_random_state_gives_a_different_run(digits, straight, stopped,
                                                                          left_out):
    run = digits_run(123)
    meta = load_checkpoint(stopped, run.model, None if left_out == "optimizer" else run.optimizer)
    if left_out == "rng":
        run.scheduler.load_state_dict(meta["scheduler"])
    else:
        restore_run_state(run, meta)
    resumed = train_run(run, *digits, 2, list(meta["losses"]))
    assert resumed[:2] == straight[:2] and resumed[2:] != straight[2:]


def test_restore_run_state_refuses_a_checkpoint_saved_without_it_before_changing_anything(tmp_path):
    run = digits_run(0)
    save_checkpoint(tmp_path / "ckpt.pt", run.model, run.optimizer, epoch=1)
    other = digits_run(1)
    before = other.scheduler.state_dict(), other.generator.get_state()
    with pytest.raises(KeyError, match=r"\['scheduler', 'torch_rng', 'data_rng'\] are not in"):
        restore_run_state(other, load_checkpoint(tmp_path / "ckpt.pt", other.model, other.optimizer))
    assert other.scheduler.state_dict() == before[0] and torch.equal(other.generator.get_state(), before[1])


def test_train_epoch_returns_the_mean_loss_over_all_samples():
    model = nn.Linear(2, 3)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(10, 2), torch.randint(0, 3, (10,))
    loss = train_epoch(model, optimizer, x, y, torch.Generator().manual_seed(0), batch_size=3)
    assert loss == pytest.approx(torch.log(torch.tensor(3.0)).item())  # uniform logits


# --- snapshots, fast loading, safetensors ----------------------------------------

def test_state_dict_is_live_and_copy_state_dict_is_not():
    model = nn.Linear(3, 3)
    shallow, snapshot = model.state_dict(), copy_state_dict(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(shallow["weight"], model.weight)
    assert torch.equal(snapshot["weight"] + 1.0, model.weight)
    assert not snapshot["weight"].requires_grad


@pytest.mark.parametrize("warm", [True, False])
def test_load_on_meta_gives_the_same_model_with_real_tensors(tmp_path, warm):
    """With or without warm_page_cache first (the page's advice for a file on the disk only)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    path = tmp_path / "r.pt"
    save_checkpoint(path, model)
    if warm:
        warm_page_cache(path)
    fast = load_on_meta(path, lambda: resnet18(num_classes=10)).eval()
    assert not any(t.is_meta for t in [*fast.parameters(), *fast.buffers()])
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fast(x), model(x))
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state_dict works too
    assert same_weights(load_on_meta(tmp_path / "bare.pt", lambda: resnet18(num_classes=10)), model)


def test_load_on_meta_refuses_what_the_file_cannot_fill(tmp_path):
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    save_checkpoint(tmp_path / "t.pt", WithTable())
    with pytest.raises(ValueError, match=r"\['table'\]: not in .* on meta \(non-persistent"):
        load_on_meta(tmp_path / "t.pt", WithTable)
    with pytest.raises(RuntimeError, match="fc.weight"):
        load_on_meta(tmp_path / "t.pt", lambda: nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="Linux only")
def test_warm_page_cache_reads_a_file_that_is_on_the_disk_only(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(8 << 20))
    assert in_page_cache(path) and warm_page_cache(path) is False  # just written: nothing to do
    drop_from_page_cache(path)
    if in_page_cache(path):
        pytest.skip("this file system keeps its pages in memory (tmpfs?)")
    assert warm_page_cache(path) is True
    assert in_page_cache(path)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="Linux only")
def test_a_mapped_load_reads_nothing_until_its_pages_are_touched(tmp_path):
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024))  # 8 MB
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    drop_from_page_cache(path)
    if in_page_cache(path):
        pytest.skip("this file system keeps its pages in memory (tmpfs?)")
    lazy = load_on_meta(path, lambda: nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024)))
    assert not in_page_cache(path)
    touch_every_page(lazy)
    assert in_page_cache(path) and same_weights(lazy, model)


def test_safetensors_needs_save_model_for_tied_weights(tmp_path):
    from safetensors.torch import load_file, load_model, save_file, save_model

    tied = TiedEmbeddingNet(vocab_size=20, dim=4)
    assert tied.out.weight is tied.embed.weight
    with pytest.raises(RuntimeError, match="share memory"):
        save_file(tied.state_dict(), str(tmp_path / "t.safetensors"))
    save_model(tied, str(tmp_path / "t.safetensors"))
    assert len(load_file(str(tmp_path / "t.safetensors"))) == 1
    fresh = TiedEmbeddingNet(vocab_size=20, dim=4)
    load_model(fresh, str(tmp_path / "t.safetensors"))
    assert fresh.out.weight is fresh.embed.weight
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(fresh(tokens), tied(tokens))


# --- choosing GPUs ----------------------------------------------------------------

def test_misspelt_visible_devices_finds_the_tutorials_three_typos_and_nothing_else():
    environ = {name: "1" for name in ["CUDA_VISIBLE_DIVICES", "CUDA_VISIABLE_DIVICES",
                                      "CUDA_VISIABLE_DEVICES", "CUDA_VISIBLE_DEVICES",
                                      "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "cuda_visible_devices"]}
    assert misspelt_visible_devices(environ) == [
        "CUDA_VISIABLE_DEVICES", "CUDA_VISIABLE_DIVICES", "CUDA_VISIBLE_DIVICES", "cuda_visible_devices"]


def test_select_gpus_sets_the_variable_and_refuses_when_it_would_be_ignored(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    select_gpus("1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIABLE_DEVICES", "0")
    with pytest.raises(ValueError, match=r"\['CUDA_VISIABLE_DEVICES'\] .* ignores them silently"):
        select_gpus("0")
    monkeypatch.delenv("CUDA_VISIABLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match=r"already initialised .*\(CUDA_VISIBLE_DEVICES=0 python"):
        select_gpus("0")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # refused: unchanged


def test_select_gpus_refuses_spaces_or_other_separators_between_gpus(monkeypatch):
    """'0 1' or '0;1': CUDA (and torch, which copies its parsing) reads only GPU 0."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for value in ("0 1", "0;1", "0 ,1 2"):
        with pytest.raises(ValueError, match="separate the GPUs with commas"):
            select_gpus(value)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    select_gpus("0, 1")  # a space after the comma is read as '0,1': allowed
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0, 1"


@pytest.mark.parametrize("value, seen", [("0,1", [0, 1]), ("0, 1", [0, 1]), ("0 1", [0]), ("0;1", [0])])
def test_how_torch_reads_cuda_visible_devices(value, seen):
    """torch's copy of CUDA's parsing (private; what select_gpus guards against)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": value}
    result = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda._parse_visible_devices())"],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(seen)


COUNT_DEVICES = """
import os, sys, torch
if sys.argv[1] == "after":
    torch.zeros(1, device="cuda")  # initialises CUDA
os.environ[sys.argv[2]] = ""
print(torch.cuda.device_count())
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("when, name, hidden", [
    ("before", "CUDA_VISIBLE_DEVICES", True),
    ("before", "CUDA_VISIABLE_DEVICES", False),
    ("after", "CUDA_VISIBLE_DEVICES", False),
])
def test_cuda_visible_devices_works_only_spelt_right_and_before_cuda_starts(when, name, hidden):
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run([sys.executable, "-c", COUNT_DEVICES, when, name], env=env,
                            capture_output=True, text=True, check=True)
    assert (int(result.stdout) == 0) == hidden, result.stdout


# --- devices ------------------------------------------------------------------

def test_saved_on_the_device_loaded_on_cpu(tmp_path, device):
    model, optimizer = trained_model()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    nn.functional.cross_entropy(model(torch.randn(4, 64, device=device)),
                                torch.tensor([1, 2, 3, 4], device=device)).backward()
    optimizer.step()
    path = tmp_path / "ckpt.pt"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
    save_checkpoint(path, model, optimizer)
    if device.type == "cuda":  # the save-time check loads nothing back onto the GPU (issue 25, 6)
        assert torch.cuda.max_memory_allocated(device) == allocated
    assert torch.load(path, map_location=None)["model"]["fc1.weight"].device.type == device.type
    fresh = digits_classifier()
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    load_checkpoint(path, fresh, fresh_optimizer, map_location="cpu")
    assert same_weights(fresh, model.cpu())
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].device.type == "cpu"


def test_saved_on_cpu_loaded_on_the_device(tmp_path, device):
    model, optimizer = trained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, nn.DataParallel(model), optimizer)
    fresh = digits_classifier().to(device)
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    load_checkpoint(path, fresh, fresh_optimizer, map_location=device)
    assert fresh.fc1.weight.device.type == device.type
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].device.type == device.type
    x = torch.randn(4, 64)
    assert torch.allclose(fresh.eval()(x.to(device)).cpu(), model(x), atol=1e-6)


@pytest.fixture
def benchmark_files(tmp_path):
    """A small model saved as the load benchmark saves its large one: (model, .pt path, .safetensors path)."""
    from safetensors.torch import save_file

    from benchmarks.checkpoint_load import build

    torch.manual_seed(0)
    model = build(2, width=64)
    checkpoint, tensors = tmp_path / "m.pt", tmp_path / "m.safetensors"
    save_checkpoint(checkpoint, model)
    save_file(model.state_dict(), str(tensors))
    return model, checkpoint, tensors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_every_gpu_recipe_of_the_load_benchmark_gives_the_saved_weights(benchmark_files):
    from benchmarks.checkpoint_load import cuda_load_recipes

    model, checkpoint, tensors = benchmark_files
    for name, recipe in cuda_load_recipes(checkpoint, tensors, 2, torch.device("cuda"), width=64).items():
        loaded = recipe()
        assert all(t.device.type == "cuda" for t in loaded.parameters()), name
        assert same_weights(loaded.cpu(), model), name


def test_every_cpu_recipe_of_the_load_benchmark_gives_the_saved_weights(benchmark_files):
    from benchmarks.checkpoint_load import FLOOR, load_recipes

    model, checkpoint, tensors = benchmark_files
    recipes = load_recipes(checkpoint, tensors, 2, bytearray(checkpoint.stat().st_size), width=64)
    assert recipes.pop(FLOOR)() == checkpoint.stat().st_size
    assert "model" in recipes.pop("torch.load only")()
    for name, recipe in recipes.items():
        assert same_weights(recipe(), model), name
