# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Model summaries
#
# `print(model)` shows how a model is *built*; a summary shows what happens
# when it *runs*: every layer with the shapes it sees, its parameters, and the
# totals. It works by running one forward pass with a hook on every module.
# The idea is simple, and the details are easy to get wrong: the popular
# `torchsummary` package prints some layers twice for a common kind of model.
# This chapter reproduces that report, fixes the model behind it, and builds a
# summary that lists each module once, counts each parameter once and leaves
# the model exactly as it found it.
#
# The chapter has three pages:
#
# - this one: torchsummary's double count and why, the model to fix, the
#   core of a summary that counts each module once, and what `summary` takes;
# - [Summaries of real models](real_models/): ResNet-18 checked against
#   torchinfo, a detection model, tied weights, `not called` that is not dead
#   weight, the memory estimate, and the model left as it was;
# - [Model summaries: in the wild](in_the_wild/): a slice of a `Sequential`,
#   a summary in training mode, `model.eval()` without the way back, an input
#   too small, torchsummary on tuples and class tokens, and more.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## The torchsummary double count
#
# A widely read question about `torchsummary` comes with a model like this
# one: it builds a resnet18, keeps it as `self.base_model`, and takes its first
# three layers (`conv1`, `bn1`, `relu`) into a `Sequential` called `layer0`.
# `forward` uses `layer0` only.

# %%
from tutorials_pkg.demo_models import ResNet18StemKeepingBaseModel
from tutorials_pkg.source import show_source

show_source(ResNet18StemKeepingBaseModel)

# %% [markdown]
# `torchsummary` 1.5.1 (the last release on PyPI) prints each of the three
# layers twice, and its total adds their parameters twice: 19,072 for the
# 9,536 that `forward` uses.

# %%
import contextlib
import io
import re

import torch
from torch import nn
from torchsummary import summary as torchsummary_summary

torch.manual_seed(0)
kept = ResNet18StemKeepingBaseModel()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(kept, (3, 32, 32), device="cpu")
print(printed.getvalue())

total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
used = sum(p.numel() for p in kept.layer0.parameters())
assert reported == 2 * used == 19_072  # conv1, bn1 and relu hooked once per parent

# %% [markdown]
# ### Why: `model.apply` visits a module once per parent
#
# `torchsummary` registers its hook with `model.apply(register_hook)`.
# `Module.apply` calls the function on every child, recursively, and
# `children()` skips a repeated module only *within one parent*. `conv1`,
# `bn1` and `relu` have two parents (`base_model` and `layer0`), so `apply`
# reaches each of them twice. Each visit registers one more forward hook; in
# the forward pass every hook fires, and each adds a row and the layer's
# `weight` and `bias` to the total. `model.modules()` and
# `model.named_modules()`, by contrast, keep a set of the modules they have
# already seen and give each module once:

# %%
visits = []
kept.apply(lambda module: visits.append(type(module).__name__))
print("apply visits Conv2d:   ", visits.count("Conv2d"), "times")
print("modules() gives Conv2d:", sum(isinstance(m, nn.Conv2d) for m in kept.modules()), "times")
assert visits.count("Conv2d") == 20 + 1  # resnet18 has 20 convolutions; conv1 a second time

# %% [markdown]
# One answer fixes the tool: it posts a modified copy of torchsummary's
# `summary` that skips a module it has hooked already. As printed in the
# answer, that copy does not even parse (a `SyntaxError`), so here is the
# same idea in a few lines of our own. `apply` still reaches `conv1`, `bn1`
# and `relu` twice; the second visit registers nothing, and each layer gives
# one row:

# %%
def hooked_layers(model, x, skip_hooked):
    """The layer names a torchsummary-style loop records in one forward pass."""
    hooked, rows, handles = set(), [], []

    def register(module):
        if skip_hooked and module in hooked:
            return  # apply reached it through a second parent: hooked already
        hooked.add(module)
        if not list(module.children()):  # leaves only, as torchsummary's rows
            handles.append(module.register_forward_hook(
                lambda m, args, output: rows.append(type(m).__name__)))

    model.apply(register)
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return rows


x = torch.randn(1, 3, 32, 32)
print("a hook at every visit:", hooked_layers(kept.eval(), x, skip_hooked=False))
print("skip what is hooked:  ", hooked_layers(kept, x, skip_hooked=True))
assert hooked_layers(kept, x, skip_hooked=True) == ["Conv2d", "BatchNorm2d", "ReLU"]

# %% [markdown]
# ## Fix the model, not only the tool
#
# That fixes the report. The model has a bigger problem:
# `self.base_model = ...` *registers* the whole resnet18. Its 11,689,512 parameters are in `parameters()`, so an optimizer
# gets them all; all 122 of its `state_dict` entries are saved with every
# checkpoint, beside `layer0`'s 6 copies of the same three layers. Our own
# summary (next section) shows the diagnosis in one table: `base_model` holds
# almost all the parameters, is `not called`, and all of them but the 9,536
# that `layer0` runs are unused: no operation of the forward pass read them.
# (`layer0`'s three layers are counted where they were registered first,
# inside `base_model`, so `layer0`'s own row shows `--`.)

# %%
from tutorials_pkg.summary import summary

diagnosis = summary(kept, input_size=(1, 3, 32, 32))
print(diagnosis.table(max_depth=1))
rows = {row.name: row for row in diagnosis.rows}
assert rows["base_model"].calls == 0 and diagnosis.total_params == 11_689_512
assert diagnosis.unused_params == 11_689_512 - used
print("state_dict entries:", len(kept.state_dict()))
assert len(kept.state_dict()) == 128

# %% [markdown]
# The fix is to keep `base_model` in a local variable: the three layers that
# `layer0` holds stay registered, the rest of the resnet18 is garbage once
# `__init__` returns.

# %%
from tutorials_pkg.demo_models import ResNet18Stem

show_source(ResNet18Stem)

# %%
fixed_stem = ResNet18Stem()
print(summary(fixed_stem, input_size=(1, 3, 32, 32)).table(max_depth=1))
print(sorted(fixed_stem.state_dict()))
assert sum(p.numel() for p in fixed_stem.parameters()) == used == 9_536
assert len(fixed_stem.state_dict()) == 6

# %% [markdown]
# Under `DistributedDataParallel` the unused parameters are an error, not only
# waste: DDP waits for a gradient of every parameter, and the second training
# step fails with a `RuntimeError` that asks for
# `find_unused_parameters=True` (which would hide the problem at a cost in
# every step). One process is enough to see it:

# %% tags=["raises-exception"] raises="RuntimeError"
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18StemKeepingBaseModel())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()

# %% [markdown]
# The fixed model trains under DDP without that flag:

# %%
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18Stem())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()
print("two steps, no unused parameters")

# %% [markdown]
# ### torchsummary's defaults: `device="cuda"`, and no batch dimension
#
# Two more things to know before calling `torchsummary`. Its `device`
# defaults to `"cuda"`: where CUDA is available it makes the random input on
# the GPU, and a model left on the CPU fails (where CUDA is not available it
# quietly uses the CPU). And its `input_size` has *no* batch dimension: it makes
# a batch of 2 itself (`torch.rand(2, *input_size)`) and prints the batch as
# `-1`. `torchinfo` and the summary below take the shape *with* the batch.

# %%
import inspect

print(inspect.signature(torchsummary_summary))

# %% [markdown]
# Given a shape with the batch, as `torchinfo` takes it, `torchsummary` adds a
# second batch dimension, and the first convolution raises a `RuntimeError`
# about a 5-D input:

# %% tags=["raises-exception"] raises="RuntimeError"
torchsummary_summary(ResNet18Stem(), (1, 3, 32, 32), device="cpu")

# %% [markdown]
# ## A summary that counts each module once
#
# A summary needs two things: one forward pass with a hook on every module,
# and a count that gives each parameter to one module. `hooked_forward` is
# that core, and `summary` calls it:
#
# - `named_modules()` gives each module once, under the first name it was
#   registered with, so each module gets one hook (`model.apply` would hook
#   `conv1` once per parent);
# - the hook counts calls (a module called twice in `forward` is marked) and
#   keeps the shapes of the first call, also of inputs passed by keyword
#   (`attn(query=x, key=x, value=x)`): every tensor in the arguments becomes
#   its shape, other values stay as they are;
# - the hooks are removed in a `finally`, so also when the forward pass fails;
# - after the call, each module gets the parameters no earlier module owns, so
#   the counts add up to `sum(p.numel() for p in model.parameters())`, tied
#   weights and parameters of the model itself included. Counting *after* the
#   call also counts lazy modules (`nn.LazyLinear`), which make their
#   parameters in the first call.

# %%
from tutorials_pkg.summary import hooked_forward

show_source(hooked_forward)

# %% [markdown]
# It runs on its own. On the question's model: every module once, `conv1`
# called once though it has two names, and each parameter counted once:

# %%
records = hooked_forward(kept, torch.randn(1, 3, 32, 32))
for module, record in list(records.items())[:4]:
    print(f"{record['name'] or '(model)':18} calls={record['calls']}  "
          f"params={sum(p.numel() for p in record['params'].values()):,}")
unique = sum(p.numel() for record in records.values() for p in record["params"].values())
assert unique == sum(p.numel() for p in kept.parameters()) == 11_689_512

# %% [markdown]
# `summary` calls `hooked_forward`; the rest of its file (the caption above
# links `tutorials_pkg/summary.py`) takes the models readers bring: it makes
# the inputs, runs in eval mode under `torch.no_grad()` and gives each module
# its own mode back, refuses TorchScript, runs compiled submodules eagerly,
# notes which layer an error came from, tells unused weights from weights used
# without their module being called, and prints the table with a memory
# estimate.
#
# ## What `summary` takes
#
# `summary(model, input_size=None, input_data=None, input_kwargs=None)`:
#
# - `model`: an `nn.Module`; one wrapped by `torch.compile`, `DataParallel` or
#   DDP is summarised through the module inside; lazy modules and compiled
#   submodules work. TorchScript (`torch.jit.script`, `torch.jit.trace`) takes
#   no hooks: a `TypeError` says to pass the module before scripting it.
# - `input_size`: a shape *with* the batch dimension, as in `torchinfo`, or a
#   list of shapes, one per positional argument: random tensors on the model's
#   device, in its dtype.
# - `input_data`: a tensor, or a tuple of the positional arguments as `forward`
#   takes them: lists of images, dicts, strings, `None`. The tensors are found
#   wherever they are. A list or dict on its own is refused, because it could
#   be the arguments or one argument: write `(images,)`.
# - `input_kwargs`: keyword arguments for `forward`, with either input or alone.
#
# Passing both `input_size` and `input_data` is a `ValueError` (one would be
# ignored). Here a model takes a batch dict holding a string and a keyword-only
# mask:

# %%
class MaskedClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, batch, *, mask):
        return self.fc(batch["features"] * mask)


batch = {"features": torch.randn(2, 8), "label": "cat"}
masked = summary(MaskedClassifier(), input_data=(batch,), input_kwargs={"mask": torch.ones(8)})
print(masked)
assert masked.input_shape == [{"features": [2, 8], "label": "cat"}, {"mask": [8]}]

# %% [markdown]
# ### Hooks and `torch.compile`
#
# A hook registered *before* the first call of a compiled model fires, as long as
# no model of the same class was compiled earlier without hooks (compiled code
# checks for hooks only where the module had some when it was compiled:
# [the intermediate chapter](../intermediate/) shows that miss). One added
# *after* the first call does not fire: the calls that follow reuse compiled
# code made without it.

# %%
fired = []
early = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
early[0].register_forward_hook(lambda *args: fired.append("registered before"))
torch.compile(early, backend="eager")(torch.randn(2, 3))

late = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
compiled = torch.compile(late, backend="eager")
compiled(torch.randn(2, 3))
late[0].register_forward_hook(lambda *args: fired.append("registered after"))
compiled(torch.randn(2, 3))
print(fired)
assert fired == ["registered before"]

# %% [markdown]
# `summary` adds its hooks late, so it summarises a compiled model through the
# module it wraps (`_orig_mod`), and runs compiled submodules with
# `torch.compiler.set_stance("force_eager")`, which runs their Python code,
# hooks included. Every layer of the compiled part is called:

# %%
with_compiled_part = nn.Sequential(compiled, nn.Linear(4, 2))
rows = summary(with_compiled_part, input_size=(2, 3)).rows
print([(row.name, row.calls) for row in rows])
assert all(row.calls == 1 for row in rows)

# %% [markdown]
# The rows are data, too: `name`, `type`, `input_shape`, `output_shape`,
# `params`, `trainable_params`, `unused_params`, `calls` (and `reused`, true
# when `calls > 1`), `aliases`, `note`. The first layer of the question's model
# is registered under two names:

# %%
conv_row = diagnosis.rows[2]
print(conv_row)
print("reused:", conv_row.reused)

# %% [markdown]
# `str(result)` is the whole table; `result.table(max_depth=1)`, used above,
# stops at a depth, and each row it shows then counts the parameters of the
# rows it hides.
