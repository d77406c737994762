"""tutorials_pkg.summary."""

import re
from collections import OrderedDict

import pytest
import torch
import torchinfo
import torchsummary
import torchvision
from torch import nn

from handbook_tools import (
    assert_state_unchanged,
    list_of_images_detector,
    model_state,
    no_hooks_left,
)
from tutorials_pkg.definition import count_parameters
from tutorials_pkg.demo_models import ResNet18Stem, ResNet18StemKeepingBaseModel, tiny_resnet
from tutorials_pkg import summary as summary_module
from tutorials_pkg.summary import hooked_forward, summary


class KeptTwice(nn.Module):
    """A child kept as ``self.base_model`` and inside a ModuleList: torchsummary's bug."""

    def __init__(self):
        super().__init__()
        self.base_model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.ModuleList([self.base_model])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.base_model(x).mean((2, 3)))


class TiedWithScale(nn.Module):
    """Decoder weight tied to the embedding, plus a parameter on the model itself."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.decode = nn.Linear(4, 10)
        self.decode.weight = self.embed.weight
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, tokens):
        return self.decode(self.embed(tokens) * self.scale)


class CallsTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)

    def forward(self, x):
        return self.block(torch.relu(self.block(x)))


def torchsummary_total(model, input_size, capsys) -> int:
    torchsummary.summary(model, input_size, device="cpu")
    printed = capsys.readouterr().out
    return int(re.search(r"Total params: ([\d,]+)", printed).group(1).replace(",", "")), printed


def test_torchsummary_counts_a_module_kept_twice_twice(capsys):
    model = KeptTwice()
    total, printed = torchsummary_total(model, (3, 16, 16), capsys)
    base = count_parameters(model.base_model)
    assert total == count_parameters(model) + base  # the base model counted once per parent
    assert printed.count("Conv2d-") == 2


def test_our_summary_lists_each_module_once_and_counts_each_parameter_once():
    model = KeptTwice()
    result = summary(model, input_size=(1, 3, 16, 16))
    assert result.total_params == count_parameters(model) == 330
    assert len(result.rows) == len(list(model.modules()))  # modules() dedupes by identity
    conv_rows = [row for row in result.rows if row.type == "Conv2d"]
    assert len(conv_rows) == 1 and conv_rows[0].name == "base_model.0"
    assert conv_rows[0].aliases == ["stages.0.0"]
    assert str(result).count("(Conv2d)") == 1


def unet():
    from tutorials_pkg.blocks.unet import UNet

    return UNet(n_channels=3, n_classes=2)


def mobilenet_v1():
    from tutorials_pkg.blocks.mobilenet import MobileNetV1

    return MobileNetV1(num_classes=1000)


@pytest.mark.parametrize("make", [torchvision.models.resnet18, torchvision.models.mobilenet_v2,
                                  tiny_resnet, unet, mobilenet_v1])
def test_summary_agrees_with_torchinfo_and_with_the_parameters(make):
    model = make()
    for param in list(model.parameters())[:6]:  # some frozen, so trainable != total
        param.requires_grad_(False)
    ours = summary(model, input_size=(1, 3, 32, 32))
    theirs = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0)
    assert ours.total_params == theirs.total_params == count_parameters(model)
    assert ours.trainable_params == theirs.trainable_params
    assert ours.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ours.trainable_params < ours.total_params


def test_resnet18_parameter_count_is_torchvisions():
    # 11,689,512: the figure torchvision's model docs give for resnet18
    assert summary(torchvision.models.resnet18(), input_size=(1, 3, 32, 32)).total_params == 11_689_512


def test_tied_weights_and_parameters_of_the_model_itself_count_once(capsys):
    model = TiedWithScale()
    tokens = torch.tensor([[1, 2, 3]])
    result = summary(model, input_data=tokens)
    assert result.total_params == count_parameters(model) == 10 * 4 + 10 + 4
    root = result.rows[0]
    assert root.name == "" and root.params == 4  # the scale, which no submodule owns
    decode = next(row for row in result.rows if row.name == "decode")
    assert decode.params == 10 and decode.shared_params == ["weight = embed.weight"]
    assert "weight = embed.weight (shared)" in str(result)


def test_reused_modules_are_marked_and_unused_ones_said():
    result = summary(CallsTwice(), input_size=(2, 6))
    rows = {row.name: row for row in result.rows}
    assert rows["block"].calls == 2 and rows["block"].reused
    assert rows["unused"].calls == 0 and not rows["unused"].reused
    assert rows["unused"].note == "not called, weights unused"
    assert rows[""].calls == 1 and not rows[""].reused
    table = str(result)
    assert "called 2x" in table and "not called, weights unused" in table
    assert result.unused_params == 6 * 6 + 6
    assert result.total_params == count_parameters(CallsTwice())


def test_rows_record_shapes_of_the_first_call():
    result = summary(tiny_resnet(), input_size=(2, 3, 16, 16))
    rows = {row.name: row for row in result.rows}
    assert rows[""].input_shape == [2, 3, 16, 16] and rows[""].output_shape == [2, 10]
    assert rows["4.conv1"].input_shape == [2, 8, 16, 16]
    assert rows["4.conv1"].output_shape == [2, 16, 8, 8]
    assert rows["6"].output_shape == [2, 16]


def test_memory_estimate_counts_input_leaf_outputs_and_parameters():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5), nn.BatchNorm1d(5))
    result = summary(model, input_size=(3, 10))
    assert result.input_bytes == 3 * 10 * 4
    assert result.output_bytes == 4 * (3 * 20 + 3 * 20 + 3 * 5 + 3 * 5)  # leaf modules only
    assert result.param_bytes == 4 * count_parameters(model)
    assert result.buffer_bytes == 4 * 5 + 4 * 5 + 8  # running mean, var, int64 counter
    assert result.total_bytes == (result.input_bytes + result.output_bytes
                                  + result.param_bytes + result.buffer_bytes)
    assert "Estimated total size" in str(result) and repr(result) == str(result)


def test_summary_leaves_modes_and_batchnorm_statistics_alone(device):
    model = torchvision.models.resnet18().to(device)
    model.layer2.eval()  # a part frozen in eval mode must stay in eval mode
    before = model_state(model)
    summary(model, input_size=(2, 3, 32, 32))
    assert_state_unchanged(model, before)
    assert model.training and not model.layer2.training
    assert no_hooks_left(model)


def test_torchsummary_changes_batchnorm_statistics(capsys):
    """The pitfall our summary avoids: a forward pass in training mode."""
    model = KeptTwice()
    mean = model.base_model[1].running_mean.clone()
    torchsummary_total(model, (3, 16, 16), capsys)
    assert not torch.equal(model.base_model[1].running_mean, mean)
    assert model.base_model[1].num_batches_tracked.item() == 1


def test_summary_runs_on_the_models_device_and_dtype(device):
    model = tiny_resnet().to(device, torch.float64)
    result = summary(model, input_size=(1, 3, 16, 16))
    assert result.input_bytes == 3 * 16 * 16 * 8
    data = torch.randn(1, 3, 16, 16, device=device, dtype=torch.float64)
    assert summary(model, input_data=data).total_params == count_parameters(model)


def test_several_inputs_by_shape_and_by_data():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    by_shape = summary(Pair(), input_size=[(2, 3), (2, 5)])
    assert by_shape.input_shape == [[2, 3], [2, 5]]
    assert by_shape.rows[0].input_shape == [[2, 3], [2, 5]]
    by_data = summary(Pair(), input_data=(torch.randn(2, 3), torch.randn(2, 5)))
    assert by_data.total_params == by_shape.total_params == 2 * (3 * 4 + 4) + 4 * 2


def test_both_kinds_of_input_or_none_are_refused():
    with pytest.raises(ValueError, match="pass input_size or input_data, not both"):
        summary(nn.Linear(3, 2), input_size=(1, 3), input_data=torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"pass input_size \(a shape .*input_data .*input_kwargs"):
        summary(nn.Linear(3, 2))


@pytest.mark.parametrize("size", [(1, 0, 3), (1, -3), "1, 3", 3, [], [(1, 3), "x"]])
def test_bad_input_size_is_named(size):
    with pytest.raises(ValueError, match="input_size must be a shape"):
        summary(nn.Linear(3, 2), input_size=size)


@pytest.mark.parametrize("data, got", [
    ([1.0, 2.0], "got a list"), ("abc", "got a str"), ({"x": 1}, "got a dict"),
])
def test_input_data_that_is_neither_a_tensor_nor_a_tuple_is_refused_with_the_call_that_works(
        data, got):
    with pytest.raises(TypeError, match=rf"input_data takes a tensor, or a tuple of the model's "
                                        rf"positional arguments; {got}: to pass it as the "
                                        rf"model's one argument, wrap it in a tuple, "
                                        rf"input_data=\(x,\)"):
        summary(nn.Linear(3, 2), input_data=data)
    if isinstance(data, dict):
        with pytest.raises(TypeError, match="pass keyword arguments as input_kwargs"):
            summary(nn.Linear(3, 2), input_data=data)


class TakesABatchDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, batch, extra=None):
        x = self.fc(batch["image"])
        return x if batch.get("mask") is None else x * batch["mask"]


@pytest.mark.parametrize("batch, shown", [
    ({"image": torch.randn(4, 3), "label": "cat"}, {"image": [4, 3], "label": "cat"}),
    ({"image": torch.randn(4, 3), "mask": None}, {"image": [4, 3], "mask": None}),
])
def test_arguments_that_are_not_only_tensors_pass_through(batch, shown):
    """Issue 24: a str label or a None mask was refused ('argument 0['label'] is a str')."""
    result = summary(TakesABatchDict(), input_data=(batch,))
    assert result.input_shape == shown
    assert result.rows[1].input_shape == [4, 3] and result.rows[1].output_shape == [4, 2]
    assert result.input_bytes == 4 * 4 * 3  # the tensors found in the arguments


def test_an_empty_dict_argument_passes_through():
    """Issue 24: an empty dict was refused ('argument 1 is an empty dict')."""
    result = summary(TakesABatchDict(), input_data=({"image": torch.randn(2, 3)}, {}))
    assert result.input_shape == [{"image": [2, 3]}, {}]
    assert result.total_params == 3 * 2 + 2


def test_a_list_of_images_is_one_positional_argument():
    images = [torch.randn(3, 8, 8), torch.randn(3, 6, 10)]
    result = summary(list_of_images_detector(), input_data=(images,))
    rows = {row.name: row for row in result.rows}
    assert result.input_shape == [[3, 8, 8], [3, 6, 10]]
    assert rows["backbone"].calls == 2 and rows["backbone"].input_shape == [1, 3, 8, 8]
    assert rows[""].output_shape == [{"scores": [1, 2]}, {"scores": [1, 2]}]
    assert result.input_bytes == 4 * (3 * 8 * 8 + 3 * 6 * 10)


def test_the_list_itself_as_input_data_is_refused_with_the_call_that_works():
    with pytest.raises(TypeError, match=r"got a list: to pass it as the model's one "
                                        r"argument, wrap it in a tuple, input_data=\(x,\)"):
        summary(list_of_images_detector(), input_data=[torch.randn(3, 8, 8)])


def test_arguments_holding_dicts_and_tuples_of_tensors():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, batch, extra):
            return self.fc(batch["x"]) + extra[0]

    result = summary(Pair(), input_data=({"x": torch.randn(4, 3)}, (torch.randn(4, 2),)))
    assert result.input_shape == [{"x": [4, 3]}, ([4, 2],)]  # a tuple stays a tuple
    assert result.rows[1].input_shape == [4, 3]


def test_inputs_passed_by_keyword_are_shown():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            x = self.fc(input=x)
            return self.attn(query=x, key=x, value=x, need_weights=False)[0]

    rows = {row.name: row for row in summary(Attention(), input_size=(1, 5, 8)).rows}
    assert rows["fc"].input_shape == {"input": [1, 5, 8]}
    assert rows["attn"].input_shape == {"query": [1, 5, 8], "key": [1, 5, 8], "value": [1, 5, 8],
                                        "need_weights": False}
    assert rows["attn"].output_shape == ([1, 5, 8], None)  # need_weights=False: no weights


def test_positional_and_keyword_inputs_together():
    class Scaled(nn.Module):
        def forward(self, x, *, scale, note):
            return x * scale

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Scaled()

        def forward(self, x):
            return self.inner(x, scale=torch.ones(3), note="not a tensor")

    row = summary(Outer(), input_size=(2, 3)).rows[1]
    assert row.input_shape == [[2, 3], {"scale": [3], "note": "not a tensor"}]


class MaskedByKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, *, mask):
        return self.fc(x) * mask


def test_keyword_arguments_are_passed_with_input_kwargs():
    """Issue 24: keyword-only arguments could not be passed ('missing ... argument: 'mask'')."""
    mask = torch.ones(2, 2)
    result = summary(MaskedByKeyword(), input_size=(2, 3), input_kwargs={"mask": mask})
    assert result.input_shape == [[2, 3], {"mask": [2, 2]}]
    assert result.rows[1].calls == 1 and result.total_params == 8
    assert result.input_bytes == 4 * (2 * 3 + 2 * 2)
    data = summary(MaskedByKeyword(), input_data=torch.randn(2, 3), input_kwargs={"mask": mask})
    assert data.input_shape == result.input_shape


def test_keyword_arguments_alone():
    class KeywordsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, *, input_ids, attention_mask=None):
            return self.fc(input_ids)

    result = summary(KeywordsOnly(), input_kwargs={"input_ids": torch.randn(1, 3),
                                                   "attention_mask": None})
    assert result.input_shape == {"input_ids": [1, 3], "attention_mask": None}
    assert result.rows[1].calls == 1


def test_too_small_an_input_keeps_torchs_error_and_adds_a_note_and_removes_hooks():
    model = torchvision.models.squeezenet1_1()
    before = model_state(model)
    with pytest.raises(RuntimeError, match=r"Output size is too small") as caught:
        summary(model, input_size=(1, 3, 16, 16))
    assert type(caught.value) is RuntimeError
    assert len(caught.value.__notes__) == 1  # torch's message is clear: no reworded hint
    assert re.fullmatch(r"summary: the model failed in 'features\.\d+' \(MaxPool2d\) on input "
                        r"of shape \[1, 3, 16, 16\]", caught.value.__notes__[0])
    assert no_hooks_left(model)
    assert_state_unchanged(model, before)
    assert summary(model, input_size=(1, 3, 64, 64)).total_params == count_parameters(model)


def test_an_error_in_the_models_own_forward_is_reported_without_the_too_small_hint():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).view(3, 5)

    model = Broken()
    with pytest.raises(RuntimeError, match=r"shape '\[3, 5\]' is invalid") as caught:
        summary(model, input_size=(2, 4))
    assert caught.value.__notes__ == ["summary: the model failed on input of shape [2, 4]"]
    assert no_hooks_left(model)


class Raises(nn.Module):
    def __init__(self, error):
        super().__init__()
        self.fc, self.error = nn.Linear(3, 3), error

    def forward(self, x):
        raise self.error


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    NotImplementedError("this layer has no CPU kernel"),
    KeyError("features"),
])
def test_errors_keep_their_type_and_message(error):
    with pytest.raises(type(error), match=re.escape(str(error).strip("'"))) as caught:
        summary(nn.Sequential(Raises(error)), input_size=(1, 3))
    assert caught.value is error
    assert caught.value.__notes__ == ["summary: the model failed in '0' (Raises) on input of "
                                      "shape [1, 3]"]


def test_a_missing_forward_is_a_not_implemented_error():
    class NoForward(nn.Module):
        pass

    with pytest.raises(NotImplementedError, match='missing the required "forward" function'):
        summary(nn.Sequential(nn.Linear(3, 3), NoForward()), input_size=(1, 3))


def compiled_and_called():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    compiled = torch.compile(model, backend="eager")
    compiled.eval()
    with torch.no_grad():  # the mode summary runs in: the compiled code is reused
        compiled(torch.randn(2, 3))
    return model, compiled


def test_a_compiled_model_that_already_ran_is_summarised_through_its_original_module():
    model, compiled = compiled_and_called()
    result = summary(compiled, input_size=(2, 3))
    assert [row.name for row in result.rows] == ["", "0", "1", "2"]
    assert all(row.calls == 1 for row in result.rows)
    assert result.compiled and str(result).startswith("Compiled with torch.compile")
    assert result.total_params == count_parameters(model)
    assert not summary(model, input_size=(2, 3)).compiled


def test_a_compiled_submodule_that_already_ran_is_summarised_with_every_layer_called():
    """Hooks added after a compiled module's first call do not fire in its compiled code;
    summary runs it with torch.compiler.set_stance("force_eager"), so they do."""
    model, compiled = compiled_and_called()
    later = []
    handle = model[2].register_forward_hook(lambda *args: later.append(1))
    with torch.no_grad():
        compiled(torch.randn(2, 3))
    assert later == []  # the pitfall: a hook added after the first call is not seen
    handle.remove()
    outer = nn.Sequential(OrderedDict(body=compiled, head=nn.Linear(2, 2)))
    rows = {row.name: row for row in summary(outer, input_size=(2, 3)).rows}
    assert [rows[f"body._orig_mod.{i}"].calls for i in range(3)] == [1, 1, 1]
    assert rows["body"].type == "OptimizedModule" and rows["head"].calls == 1
    assert no_hooks_left(outer)


def test_hooks_registered_before_the_first_call_of_a_compiled_model_fire():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    fired = []
    model[0].register_forward_hook(lambda *args: fired.append(1))
    torch.compile(model, backend="eager")(torch.randn(2, 3))
    assert fired == [1]


class Scripted(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 4)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated
@pytest.mark.parametrize("make, what", [
    (lambda: torch.jit.script(Scripted()), "the model is TorchScript"),
    (lambda: torch.jit.trace(Scripted(), torch.randn(1, 128)), "the model is TorchScript"),
    (lambda: nn.Sequential(OrderedDict(enc=torch.jit.script(Scripted()), act=nn.ReLU())),
     "submodule 'enc' is TorchScript"),
])
def test_torchscript_is_refused_before_running_with_what_to_pass(make, what):
    """Issue 24: TorchScript failed in register_forward_pre_hook, with a false note that
    'the model failed on input of shape [64, 128]' (it never ran)."""
    with pytest.raises(TypeError, match=rf"{what} \(torch\.jit\.script or torch\.jit\.trace\), "
                                        r"which takes no forward hooks: summarise the nn\.Module "
                                        r"before scripting or tracing it") as caught:
        summary(make(), input_size=(64, 128))
    assert not getattr(caught.value, "__notes__", [])


def test_lazy_modules_are_counted_after_the_forward_pass():
    """Issue 24: 'Attempted to use an uninitialized parameter in numel'; torchinfo gives 20."""
    model = nn.Sequential(nn.LazyLinear(5))
    result = summary(model, input_size=(1, 3))
    assert result.total_params == 20 == torchinfo.summary(
        nn.Sequential(nn.LazyLinear(5)), input_size=(1, 3), verbose=0).total_params
    assert result.rows[1].params == 20 and result.param_bytes == 4 * 20


def test_the_core_runs_on_its_own_and_summary_calls_it(monkeypatch):
    model = TiedWithScale()
    tokens = torch.tensor([[1, 2, 3]])
    records = hooked_forward(model, tokens)
    assert [r["name"] for r in records.values()] == ["", "embed", "decode"]
    assert [r["calls"] for r in records.values()] == [1, 1, 1]
    assert records[model.decode]["input"] == [1, 3, 4]
    assert sum(p.numel() for r in records.values() for p in r["params"].values()) == 54
    assert list(records[model.decode]["params"]) == ["bias"]  # the tied weight counted once
    assert no_hooks_left(model)
    calls = []
    real = summary_module.hooked_forward
    monkeypatch.setattr(summary_module, "hooked_forward",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert summary(model, input_data=tokens).total_params == 54 and calls == [1]


def test_a_lazy_module_in_the_core():
    model = nn.Sequential(nn.LazyLinear(5))
    records = hooked_forward(model, torch.randn(1, 3))
    assert sum(p.numel() for p in records[model[0]]["params"].values()) == 20


class EncoderModel(nn.Module):
    """A transformer encoder with a classifier, as readers build one."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def test_not_called_but_weights_used_by_the_parent_is_told_apart():
    """Issue 25.15: attention passes out_proj.weight to one function and never calls out_proj."""
    result = summary(EncoderModel(), input_size=(2, 5, 16))
    rows = {row.name: row for row in result.rows}
    for name in ["encoder.layers.0.self_attn.out_proj", "encoder.layers.1.self_attn.out_proj"]:
        assert rows[name].calls == 0 and rows[name].note == "not called, weights used"
    assert rows["encoder.layers"].note == "not called, weights used"  # a ModuleList
    assert result.unused_params == 0
    assert "not called, weights used" in str(result)
    assert "Unused params (no operation read them): 0" in str(result)


def test_watching_the_operations_does_not_change_which_modules_run():
    model = EncoderModel().eval()
    called = set()
    handles = [m.register_forward_hook(lambda m, a, o: called.add(m)) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(2, 5, 16))
    for handle in handles:
        handle.remove()
    rows = summary(model, input_size=(2, 5, 16)).rows
    assert {row.name for row in rows if row.calls} == {
        name for name, m in model.named_modules() if m in called}


def test_the_weights_attention_reads_are_those_autograd_records():
    """What the ops read is what a backward pass would reach (for trainable parameters)."""
    model = EncoderModel()
    output = model(torch.randn(2, 5, 16)).sum()
    reached, todo, seen = set(), [output.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            reached.add(id(node.variable))
        todo.extend(next_node for next_node, _ in node.next_functions)
    result = summary(model, input_size=(2, 5, 16))
    assert reached == {id(p) for p in model.parameters()} and result.unused_params == 0


def test_vit_out_proj_is_not_called_and_its_weights_are_used():
    model = torchvision.models.vit_b_16(weights=None, image_size=32)
    result = summary(model, input_size=(1, 3, 32, 32))
    out_proj = [row for row in result.rows if row.name.endswith("self_attention.out_proj")]
    assert len(out_proj) == 12 and all(row.calls == 0 for row in out_proj)
    assert all(row.note == "not called, weights used" for row in out_proj)
    assert result.unused_params == 0 and result.total_params == count_parameters(model)


def test_branches_that_run_only_in_training_are_unused_in_eval_mode():
    """GoogLeNet's auxiliary classifiers run in training mode only; summary runs in eval mode."""
    model = torchvision.models.googlenet(weights=None, init_weights=True)
    result = summary(model, input_size=(1, 3, 224, 224))
    rows = {row.name: row for row in result.rows}
    aux = count_parameters(model.aux1) + count_parameters(model.aux2)
    assert rows["aux1"].note == rows["aux2"].note == "not called, weights unused"
    assert result.unused_params == aux
    assert model.training  # its own mode given back: in training mode aux1 and aux2 run


def test_a_module_kept_but_not_used_is_unused_weight():
    kept = ResNet18StemKeepingBaseModel()
    result = summary(kept, input_size=(1, 3, 32, 32))
    rows = {row.name: row for row in result.rows}
    used = count_parameters(ResNet18Stem())
    assert result.unused_params == count_parameters(kept) - used
    assert rows["base_model"].note == (f"not called, {count_parameters(kept) - used:,} of "
                                       f"{count_parameters(kept):,} params unused")
    assert rows["base_model.layer1"].note == "not called, weights unused"
    assert rows["base_model.relu"].calls == 1 and rows["base_model.relu"].note == ""


def test_a_table_down_to_a_depth_counts_what_it_hides():
    model = tiny_resnet()
    result = summary(model, input_size=(1, 3, 16, 16))
    top = result.table(max_depth=0).splitlines()
    assert top[2].split()[:2] == ["Sequential", "[1,"] and f"{count_parameters(model):,}" in top[2]
    shallow = result.table(max_depth=1)
    assert f"{count_parameters(model[3]):,}" in shallow.splitlines()[2 + 4]  # the first BasicBlock
    assert "3.conv1" not in shallow and "3.conv1" in str(result)
    with pytest.raises(ValueError, match="max_depth must be None or an int >= 0"):
        result.table(max_depth=-1)


def test_long_shapes_are_cut_in_the_table_and_kept_in_the_rows():
    images = [torch.randn(3, 8, 8)] * 12
    result = summary(list_of_images_detector(), input_data=(images,))
    assert result.rows[0].input_shape == [[3, 8, 8]] * 12
    cell = str(result).splitlines()[2].split("  ")
    assert any(part.strip().endswith("...") and len(part.strip()) == 44 for part in cell)


def test_the_qa_model_registers_resnet18_and_the_fix_registers_three_layers(capsys):
    kept, fixed = ResNet18StemKeepingBaseModel(), ResNet18Stem()
    used = count_parameters(fixed)
    assert used == 64 * 3 * 7 * 7 + 2 * 64 == 9_536
    assert count_parameters(kept) == 11_689_512 == count_parameters(kept.base_model)
    assert len(kept.state_dict()) == len(kept.base_model.state_dict()) + 6 == 128
    assert sorted(fixed.state_dict()) == [f"layer0.{k}" for k in sorted(
        ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
         "1.num_batches_tracked"])]
    # torchsummary: conv1, bn1, relu hooked twice, once per parent
    assert torchsummary_total(kept, (3, 32, 32), capsys)[0] == 2 * used
    assert torchsummary_total(fixed, (3, 32, 32), capsys)[0] == used
    rows = {row.name: row for row in summary(kept, input_size=(1, 3, 32, 32)).rows}
    assert rows["base_model"].calls == 0 and rows["base_model.layer1"].calls == 0
    assert rows["base_model.conv1"].calls == 1 and rows["base_model.conv1"].aliases == ["layer0.0"]
    assert "not called" in summary(kept, input_size=(1, 3, 32, 32)).table(max_depth=1)


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class ClassToken(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.cls.expand(len(x), -1, -1), x], 1))


def test_torchsummary_fails_on_tuple_and_none_outputs_and_ours_does_not():
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'size'"):
        torchsummary.summary(LSTMClassifier(), (5, 8), device="cpu")

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    failed = Attention()
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'size'"):
        torchsummary.summary(failed, (5, 8), device="cpu")
    assert not no_hooks_left(failed)  # torchsummary removes its hooks only when it succeeds
    lstm = summary(LSTMClassifier(), input_size=(1, 5, 8))
    assert lstm.rows[1].output_shape == ([1, 5, 16], ([1, 1, 16], [1, 1, 16]))
    assert lstm.total_params == count_parameters(LSTMClassifier())
    assert summary(Attention(), input_size=(1, 5, 8)).total_params == 4 * (8 * 8 + 8)


def test_torchsummary_counts_only_weight_and_bias(capsys):
    model = ClassToken()
    total, _ = torchsummary_total(model, (5, 8), capsys)
    assert total == count_parameters(model.fc) == count_parameters(model) - 8  # cls missed
    assert summary(model, input_size=(1, 5, 8)).total_params == count_parameters(model) == 26


def test_torchinfo_counts_a_tied_weight_twice():
    """torchinfo 1.8.0 (the version the page prints) counts the shared matrix in both layers."""
    assert torchinfo.__version__ == "1.8.0"

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.decode = nn.Embedding(10, 4), nn.Linear(4, 10)
            self.decode.weight = self.embed.weight

        def forward(self, tokens):
            return self.decode(self.embed(tokens))

    tokens = torch.tensor([[1, 2]])
    theirs = torchinfo.summary(Tied(), input_data=tokens, verbose=0).total_params
    assert theirs == count_parameters(Tied()) + 10 * 4 == 90
    assert summary(Tied(), input_data=tokens).total_params == 50


def test_dataparallel_and_compile_wrappers_are_unwrapped():
    model, compiled = compiled_and_called()
    result = summary(nn.DataParallel(compiled), input_size=(2, 3))
    assert [row.name for row in result.rows] == ["", "0", "1", "2"] and result.compiled
    plain = summary(nn.DataParallel(model), input_size=(2, 3))
    assert not plain.compiled and plain.total_params == count_parameters(model)


def test_a_module_without_parameters_that_is_not_called_is_only_not_called():
    class SpareActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.spare = nn.Linear(3, 3), nn.GELU()

        def forward(self, x):
            return self.fc(x)

    rows = {row.name: row for row in summary(SpareActivation(), input_size=(1, 3)).rows}
    assert rows["spare"].note == "not called" and rows["fc"].note == ""
