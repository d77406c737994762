import io
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from unittest import mock

import pytest
import torch
from torch import nn

from tutorials_pkg.demo_models import TiedEmbeddingNet
from tutorials_pkg.digits import digits_classifier, train_epoch
from tutorials_pkg.save_load import (
    CheckpointMismatchError,
    copy_state_dict,
    load_checkpoint,
    load_on_meta,
    restore_rng_states,
    rng_states,
    save_atomically,
    save_checkpoint,
    strip_prefix,
    strip_prefix_by_replacing_anywhere,
    strip_prefix_by_slicing_every_key,
    strip_wrapper_prefixes,
    unwrap_model,
)


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


def encoder_net():
    encoder = nn.Sequential(OrderedDict(module=nn.Linear(6, 4), act=nn.ReLU()))
    return nn.Sequential(OrderedDict(encoder=encoder, head=nn.Linear(4, 2)))


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


def half_then_fail(real_save):
    def save(obj, file):
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
    with mock.patch("torch.save", half_then_fail(torch.save)), pytest.raises(OSError):
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
    with pytest.raises((RuntimeError, OSError)):
        torch.load(path)


KILLED_SAVE = """
import io, sys, time
import torch
from tutorials_pkg.digits import digits_classifier
from tutorials_pkg.save_load import save_checkpoint

real_save = torch.save

def slow_save(obj, file):
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


def test_a_process_killed_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    old, _ = trained_model(seed=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, old, epoch=1)
    before = path.read_bytes()
    process = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "half written"
    finally:
        process.kill()
        process.wait(timeout=60)
        process.stdout.close()
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # killed mid-write
    assert path.read_bytes() == before
    fresh = digits_classifier()
    assert load_checkpoint(path, fresh) == {"epoch": 1} and same_weights(fresh, old)


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
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "whole.pt", digits_classifier())


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


def test_non_strict_loads_what_fits_but_never_a_wrong_shape(tmp_path):
    model, _ = trained_model()
    state = model.state_dict()
    del state["fc2.bias"]
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    fresh = digits_classifier()
    assert load_checkpoint(path, fresh, strict=False) == {}
    assert torch.equal(fresh.fc1.weight, model.fc1.weight)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch") as error:
        load_checkpoint(path, digits_classifier(hidden=8), strict=False)
    assert "fc1.weight: checkpoint (32, 64), model (8, 64)" in str(error.value)


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
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # nothing loaded
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(TypeError, match="holds a Tensor"):
        load_checkpoint(tmp_path / "tensor.pt", digits_classifier())


# --- resuming -----------------------------------------------------------------

def new_run(seed):
    torch.manual_seed(seed)
    model = digits_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return model, optimizer, scheduler, torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:600], dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target[:600])


def run_epochs(run, digits, epochs, losses):
    model, optimizer, scheduler, generator = run
    for _ in epochs:
        losses.append(train_epoch(model, optimizer, *digits, generator))
        scheduler.step()
    return losses


def test_resumed_training_matches_an_uninterrupted_run_exactly(tmp_path, digits):
    straight = run_epochs(new_run(0), digits, range(4), [])

    first = new_run(0)
    losses = run_epochs(first, digits, range(2), [])
    model, optimizer, scheduler, generator = first
    path = tmp_path / "resume.pt"
    save_checkpoint(path, model, optimizer, epoch=1, losses=losses,
                    scheduler=scheduler.state_dict(), **rng_states(generator))
    torch.manual_seed(999)  # whatever happens in between must not matter

    second = new_run(123)
    model, optimizer, scheduler, generator = second
    meta = load_checkpoint(path, model, optimizer)
    scheduler.load_state_dict(meta["scheduler"])
    restore_rng_states(meta, generator)
    resumed = run_epochs(second, digits, range(meta["epoch"] + 1, 4), list(meta["losses"]))
    assert resumed == straight
    assert len(set(straight)) == 4 and straight[-1] < straight[0]


@pytest.mark.parametrize("left_out", ["optimizer", "rng"])
def test_resuming_without_optimizer_or_random_state_gives_a_different_run(tmp_path, digits, left_out):
    straight = run_epochs(new_run(0), digits, range(4), [])
    first = new_run(0)
    losses = run_epochs(first, digits, range(2), [])
    model, optimizer, scheduler, generator = first
    path = tmp_path / "resume.pt"
    save_checkpoint(path, model, optimizer, epoch=1, losses=losses,
                    scheduler=scheduler.state_dict(), **rng_states(generator))
    second = new_run(123)
    model, optimizer, scheduler, generator = second
    meta = load_checkpoint(path, model, None if left_out == "optimizer" else optimizer)
    scheduler.load_state_dict(meta["scheduler"])
    if left_out != "rng":
        restore_rng_states(meta, generator)
    resumed = run_epochs(second, digits, range(2, 4), list(meta["losses"]))
    assert resumed[:2] == straight[:2] and resumed[2:] != straight[2:]


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


def test_load_on_meta_gives_the_same_model_with_real_tensors(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    path = tmp_path / "r.pt"
    save_checkpoint(path, model)
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
    with pytest.raises(ValueError, match=r"\['table'\].*non-persistent"):
        load_on_meta(tmp_path / "t.pt", WithTable)
    with pytest.raises(RuntimeError, match="fc.weight"):
        load_on_meta(tmp_path / "t.pt", lambda: nn.Sequential(nn.Linear(2, 2)))


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


# --- devices ------------------------------------------------------------------

def test_saved_on_the_device_loaded_on_cpu(tmp_path, device):
    model, optimizer = trained_model()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    nn.functional.cross_entropy(model(torch.randn(4, 64, device=device)),
                                torch.tensor([1, 2, 3, 4], device=device)).backward()
    optimizer.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer)
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
