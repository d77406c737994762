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
# # 模型保存与读取
#
# 模型训练得再好，文件存坏了、读不回来，也是白费。本页按 PyTorch 推荐的方式保存和读取（保存 `state_dict`，用 `weights_only=True` 读回），让检查点不会因为程序崩溃而损坏，无论检查点是在哪种包装下保存的都能读取，把预训练检查点装进换了分类头的模型，让恢复后的训练得到完全相同的数字，并以磁盘的速度读取大文件。最后是那些会悄悄留下随机权重的错误。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# 示例在 scikit-learn 自带的 8×8 手写数字上训练一个小分类器。所有文件都写进一个新建的临时目录，并把它设为工作目录，这样文件名都很短。

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
os.chdir(tempfile.mkdtemp())

show_source(digits_classifier)

# %% [markdown]
# ## `state_dict` 是什么
#
# `model.state_dict()` 是一个有序字典，把每个参数和 buffer 的点号名字映射到它的张量。优化器也有一个：它的设置，以及每个参数的运行状态（Adam 的滑动平均）。两者都是纯数据：名字、数字和张量。

# %%
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()

print({name: tuple(tensor.shape) for name, tensor in model.state_dict().items()})
print(list(optimizer.state_dict()["state"][0]))

# %% [markdown]
# ## 保存 `state_dict`，而不是整个模型
#
# `torch.save(model, path)` 会把模型对象 pickle 下来。pickle 不保存类的代码，只保存从哪里导入它（`torch.nn.modules.linear.Linear`、`my_project.models.Net`），而且为了重建对象，它可以调用文件里写明的任何函数。所以，类一旦移动或改名，整模型文件就打不开了；打开别人给的整模型文件，则可能运行别人的代码。从 PyTorch 2.6 起，`torch.load` 默认 `weights_only=True`：只重建张量、数字、字符串和普通容器，其余一律拒绝。因此读取整个模型会失败，抛出 `UnpicklingError`：

# %% tags=["raises-exception"] raises="UnpicklingError"
torch.save(model, "whole_model.pt")
torch.load("whole_model.pt")

# %% [markdown]
# 错误信息给出两条出路。一条是 `weights_only=False`，即完全信任这个文件。更窄的一条：先在不加载的情况下查看文件需要哪些全局对象（`torch.serialization.get_unsafe_globals_in_checkpoint`，它返回的顺序不固定，所以这里先排序），确认它们符合预期，再用 `torch.serialization.safe_globals` 上下文管理器只放行这些：

# %%
needed = sorted(torch.serialization.get_unsafe_globals_in_checkpoint("whole_model.pt"))
print(needed)

expected = [nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout]
assert needed == sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in expected)
with torch.serialization.safe_globals(expected):
    loaded = torch.load("whole_model.pt")
assert torch.equal(loaded(x[:4]), model(x[:4]))
print(type(loaded).__name__, "loaded from a file we trust")

# %% [markdown]
# `state_dict` 完全不需要这些：它是纯数据，用默认参数就能读取，并装进由你当前代码构建的模型：

# %%
torch.save(model.state_dict(), "weights.pt")
fresh = digits_classifier()
fresh.load_state_dict(torch.load("weights.pt"))
assert torch.equal(fresh.eval()(x[:4]), model(x[:4]))

# %% [markdown]
# ### 把整个模型 pickle 下来的旧文件
#
# 流传中的很多检查点都早于这个默认值。比如 YOLOv5 式的文件是一个字典，其中 `"model"` 一项就是整个模型对象，为它写的代码读作 `torch.load("best.pt")["model"]`。如今这一行会以同样的 `UnpicklingError` 失败：

# %% tags=["raises-exception"] raises="UnpicklingError"
torch.save({"epoch": 9, "model": model, "optimizer": optimizer.state_dict()}, "best.pt")
torch.load("best.pt")["model"]

# %% [markdown]
# 对来源可信的这类文件，转换一次，变成由 `state_dict` 组成的检查点：只有当文件需要的每个全局对象都在你给出的列表里时，`convert_to_state_dicts` 才会在 `safe_globals` 中加载它，并把找到的每个模块写成它的 `state_dict`。此后用默认参数就能读取，类再怎么移动或修改也不会让文件失效：

# %%
from tutorials_pkg.save_load import convert_to_state_dicts

show_source(convert_to_state_dicts)

# %%
from tutorials_pkg.save_load import load_checkpoint

print(convert_to_state_dicts("best.pt", "best-state.pt", expected))
print(torch.serialization.get_unsafe_globals_in_checkpoint("best-state.pt"))
converted = digits_classifier()
print(load_checkpoint("best-state.pt", converted, torch.optim.Adam(converted.parameters())))

# %% [markdown]
# 用这种方式 pickle 下来的整个 `DataParallel` 模型（`torch.save(nn.DataParallel(model))`，多卡教程里很常见），还需要把 `DataParallel` 本身放进列表，模型则是它的 `.module`。它还记着保存时那台机器的 GPU：pickle 保存的是对象的属性，而 `DataParallel.__init__` 按它找到的 GPU 设置了 `device_ids`、`output_device` 和 `src_device_obj`。读取时不会再运行 `__init__`，所以读回来的包装仍然要找那些 GPU。这里按 `__init__` 在一台有 4 块 GPU 的机器上的做法设置这三个属性；在本机上调用读回来的包装，会抛出一个关于 `cuda:0` 的 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
wrapped = nn.DataParallel(model)
wrapped.device_ids, wrapped.output_device, wrapped.src_device_obj = [0, 1, 2, 3], 0, torch.device("cuda", 0)
torch.save(wrapped, "dataparallel_whole.pt")

with torch.serialization.safe_globals([nn.DataParallel, *expected]):
    loaded = torch.load("dataparallel_whole.pt")
print(loaded.device_ids, loaded.output_device, loaded.src_device_obj)
loaded(x[:4])

# %% [markdown]
# 里面的模型没有这种记忆。取出 `.module`，保存它的 `state_dict`：

# %%
print(type(loaded.module).__name__, list(loaded.module.state_dict())[:2])
torch.save(loaded.module.state_dict(), "weights.pt")

# %% [markdown]
# ### 不带代码地交付模型：`torch.export`
#
# 当代码不应随权重一起交出去时（一个服务、另一个团队、C++ 运行时），`torch.export` 把模型追踪成由 torch 算子组成、内含权重的计算图，保存为 `.pt2` 文件。读取它只需要 torch，别的都不需要。这里由一个从不导入本项目的独立 Python 进程读取并运行这个文件：

# %%
import subprocess
import sys

from torch.export import Dim

exported = torch.export.export(model.eval(), (x[:4],), dynamic_shapes=({0: Dim("batch")},))
torch.export.save(exported, "digits.pt2")
torch.save(x[:5], "inputs.pt")

script = """import torch
program = torch.export.load("digits.pt2").module()
torch.save(program(torch.load("inputs.pt")), "outputs.pt")"""
subprocess.run([sys.executable, "-c", script], check=True)
assert torch.allclose(torch.load("outputs.pt"), model(x[:5]))
print("same outputs from a process that has no model code")

# %% [markdown]
# ## 写一个能扛住崩溃的检查点
#
# `torch.save(obj, path)` 先以写入方式打开 `path`（这会清空它），然后才开始写。如果进程中途死掉（磁盘满了、被调度系统杀掉、断电），上一个好的检查点已经没了，留下的是一个截断的文件。读取它会失败；像这里这样从中间截断时，`torch.load` 抛出 zip 读取器的 `OSError`，其中没有提到是哪个文件（截在别处，则是说 zip 文件没有中央目录的 `RuntimeError`；空文件则只有一个光秃秃的 `EOFError`）：

# %% tags=["raises-exception"] raises="OSError"
import io

buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
with open("truncated.pt", "wb") as file:
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # what a crash leaves
torch.load("truncated.pt")

# %% [markdown]
# 读者需要的错误信息应当指出是哪个文件、它出了什么问题。本页的读取函数 `load_checkpoint` 遇到空文件或被截断的文件时，抛出 `TruncatedCheckpointError`（一种 `ValueError`）：

# %% tags=["raises-exception"] raises="TruncatedCheckpointError"
load_checkpoint("truncated.pt", digits_classifier())

# %% [markdown]
# `save_checkpoint` 从不直接写 `path`。它在旁边写一个临时文件，调用 `flush` 和 `os.fsync`，让字节真正落到磁盘上而不只是在操作系统的缓存里，然后用 `os.replace` 一步把新文件换到位（同一文件系统内的重命名是原子的）。读取的一方看到的，要么是旧的检查点，要么是完整的新检查点。
#
# ```mermaid
# flowchart LR
#     s["torch.save 写入 .ckpt.pt.1f3a9c2b.tmp"] --> c["读回检查：weights_only 能读吗？"] --> f["flush + fsync"] --> r["os.replace(临时文件, ckpt.pt)"]
#     s -. 崩溃 .-> old(["ckpt.pt：上一个检查点，完好无损"])
#     c -. 拒绝 .-> old
#     f -. 崩溃 .-> old
# ```
#
# 新文件替换旧文件之前，会先用 `torch.load(weights_only=True)` 读回一遍（以映射方式，不会再读一遍张量的字节）：凡是 `load_checkpoint` 会拒绝的内容，此刻就在保存时被拒绝，并指出是哪一项。经由符号链接保存时，它替换的是链接指向的文件（和 `torch.save` 一样），并保留该文件的权限；它的错误信息给出你的路径，而不是临时文件的路径；必要时临时文件名会缩短，所以很长但合法的文件名也能保存。

# %%
from tutorials_pkg.save_load import save_checkpoint

show_source(save_checkpoint)

# %% [markdown]
# 来验证一下：先保存一次，再让下一次保存中途失败。下面替代 `torch.save` 的函数只写一半字节，然后抛出磁盘已满时的 `OSError`。

# %% tags=["raises-exception"] raises="OSError"
import errno
from unittest import mock

save_checkpoint("ckpt.pt", model, optimizer, epoch=1)
real_save = torch.save


def disk_full_half_way(obj, file):
    data = io.BytesIO()
    real_save(obj, data)
    file.write(data.getvalue()[: len(data.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


with mock.patch("torch.save", disk_full_half_way):
    save_checkpoint("ckpt.pt", model, optimizer, epoch=2)

# %% [markdown]
# 之前的检查点还在，能正常读取，写了一半的临时文件也被删掉了：

# %%
assert torch.load("ckpt.pt")["epoch"] == 1
assert not [name for name in os.listdir() if name.endswith(".tmp")]

# %% [markdown]
# 被 `SIGKILL`（或内存不足时的 OOM killer）杀掉的进程，来不及删除它的临时文件。每次保存在写入期间都对自己的临时文件持有一把建议锁（`flock`），下一次保存同一路径时，会删掉没有任何正在运行的保存持有锁的临时文件。下面经由链接 `latest.pt` 保存检查点，把它指向的文件的权限设为 `0600`，再在旁边放一个模拟的残留文件；下一次保存之后，链接仍是链接，文件仍是 `0600`，残留文件已被删除：

# %%
os.makedirs("run-1")
os.symlink("run-1/ckpt.pt", "latest.pt")
save_checkpoint("latest.pt", model, epoch=1)
os.chmod("run-1/ckpt.pt", 0o600)
with open("run-1/.ckpt.pt.0123abcd.tmp", "wb") as file:  # what a killed save leaves
    file.write(b"half a checkpoint")

save_checkpoint("latest.pt", model, epoch=2)
print(os.path.islink("latest.pt"), oct(os.stat("run-1/ckpt.pt").st_mode & 0o777), sorted(os.listdir("run-1")))
assert torch.load("run-1/ckpt.pt")["epoch"] == 2

# %% [markdown]
# ### 读取时会被拒绝的元数据
#
# `save_checkpoint` 把其余的关键字参数都当作元数据，而无论它们装着什么，都必须能经由 `weights_only=True` 读回来。有三种常见的值做不到：numpy 数值（用 numpy 算出的指标，`np.float64(0.9)`）、`pathlib.Path`，以及保存本次运行设置的 `argparse.Namespace`。普通的 `torch.save` 会一声不响地写进去，等到恢复训练时才发现读不回来。`save_checkpoint` 当场拒绝它们，抛出 `TypeError`，指出是哪一项、应当改存什么，旧文件保持原样：

# %% tags=["raises-exception"] raises="TypeError"
import argparse
import pathlib

import numpy as np

args = argparse.Namespace(lr=0.01, data=pathlib.Path("data/digits"))
save_checkpoint("ckpt.pt", model, epoch=3, accuracy=np.float64(0.9), args=args)

# %% [markdown]
# 改存为 `float`、`str` 和字典（`vars(args)`）之后，同样的元数据就能保存并读回：

# %%
settings = {**vars(args), "data": str(args.data)}
save_checkpoint("ckpt.pt", model, epoch=3, accuracy=float(np.float64(0.9)), args=settings)
print(load_checkpoint("ckpt.pt", digits_classifier()))

# %% [markdown]
# ## 读取检查点：`load_checkpoint`
#
# `load_checkpoint` 用 `weights_only=True` 读取，把权重装进模型、把状态装进优化器，并返回保存的其他所有内容（epoch、损失、设置）。它先检查一切，再改动任何东西：权重的键和形状，以及优化器的参数组个数、每组参数个数是否与保存的状态一致。不含模型权重的文件（比如一个指标字典）会被拒绝，`strict=False` 时也一样；而在 `strict=False` 时，会有一条警告列出没有加载的键。不是张量的项，比如模块的 `get_extra_state` 返回的状态，也和其他项一样正常读取。
#
# 它还会去掉包装带来的前缀。`nn.DataParallel` 和 `DistributedDataParallel` 把模型存为 `self.module`，所以它们 `state_dict` 的每个键都以 `module.` 开头；`torch.compile` 之后的模型则把它存为 `_orig_mod`。前缀用 torch 自己的 `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present` 去掉，它只看键的开头：模型里真的叫 `module` 的层（`encoder.module.weight`）会保留自己的名字。模型这一侧也以同样方式解包，所以无论检查点是怎样保存的，都能对得上。

# %%
show_source(load_checkpoint)

# %% [markdown]
# 各种包装写出的前缀如下（这里 `torch.compile` 只是包装一下；模型被调用之前不会编译任何东西）：

# %%
print(list(nn.DataParallel(model).state_dict())[:2])
print(list(torch.compile(model).state_dict())[:2])

# %% [markdown]
# ### 单设备或多设备保存，单设备或多设备读取
#
# `nn.DataParallel` 在只有 CPU 的机器上也能运行（它只是直接调用模型），足以产生它的前缀。四种组合都能读取，并给出相同的输出：

# %%
reference = model.eval()(x[:8])
for save_wrapped in (False, True):
    for load_wrapped in (False, True):
        save_checkpoint("ckpt.pt", nn.DataParallel(model) if save_wrapped else model, epoch=4)
        target = nn.DataParallel(digits_classifier()) if load_wrapped else digits_classifier()
        meta = load_checkpoint("ckpt.pt", target)
        same = torch.equal(target.eval()(x[:8]), reference)
        print(f"DataParallel when saving: {save_wrapped!s:5}  when loading: {load_wrapped!s:5}  same outputs: {same}")
        assert same

# %% [markdown]
# 通常的建议仍然成立：从包装过的模型保存 `model.module.state_dict()`，这样文件里的名字对别人来说也是干净的。
#
# ### 在 GPU 与 CPU 之间切换：`map_location`
#
# `torch.load` 会把每个张量放回保存时所在的设备。因此在 GPU 上保存的检查点，读取时也需要 GPU，除非用 `map_location` 另行指定：
#
# ```python
# load_checkpoint(path, model, map_location="cpu")              # 在 cuda 上保存，在只有 CPU 的机器上读取
# load_checkpoint(path, model.to("cuda"), map_location="cuda")  # 在 CPU 上保存，直接读到 GPU 上
# torch.load(path, map_location={"cuda:1": "cuda:0"})           # 本机没有这个编号的 GPU
# ```
#
# `load_checkpoint` 默认用 `"cpu"`：`load_state_dict` 会把数值复制到模型自己的张量里，无论它们在哪个设备上，所以经由 CPU 读取对任何模型都适用，也不会在 GPU 显存里多占一份副本。下面是同一段代码在本页运行所在的设备上执行：

# %%
from tutorials_pkg.runtime import default_device

device = default_device()
on_device = digits_classifier().to(device)
load_checkpoint("ckpt.pt", on_device, map_location=device)
print(on_device.fc1.weight.device, torch.equal(on_device.eval()(x[:8].to(device)).cpu(), reference))

# %% [markdown]
# ### 对不上的检查点
#
# 按 8 个隐藏单元（而不是 32 个）构建的模型，会得到 `CheckpointMismatchError`（一种 `ValueError`），其中列出形状不同的键：

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
load_checkpoint("ckpt.pt", digits_classifier(hidden=8))

# %% [markdown]
# 优化器的构建方式与保存时不同（这里是两个参数组而不是一个），会在加载任何东西之前得到 `ValueError`，所以模型保留原来的权重：

# %% tags=["raises-exception"] raises="ValueError"
save_checkpoint("ckpt.pt", model, optimizer, epoch=4)
target = digits_classifier()
before = target.fc1.weight.detach().clone()
two_groups = torch.optim.Adam([{"params": target.fc1.parameters()}, {"params": target.fc2.parameters()}])
load_checkpoint("ckpt.pt", target, two_groups)

# %%
assert torch.equal(target.fc1.weight, before)
print("the model was not changed")

# %% [markdown]
# 在 `strict=False` 时，对不上的键被跳过，并有一条警告指出是哪些（这里把警告捕获下来，只打印它的内容）：

# %%
import warnings

partial = model.state_dict()
del partial["fc2.bias"]
torch.save(partial, "partial.pt")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    load_checkpoint("partial.pt", digits_classifier(), strict=False)
print(caught[0].category.__name__, caught[0].message)

# %% [markdown]
# ## 加载预训练权重来微调
#
# 实践中最常见的读取，是把为一个任务训练的检查点装进另一个任务的模型：把 1000 类的 ImageNet ResNet-18 装进一个 10 类的模型。主干对得上，分类头对不上，所以 `load_checkpoint` 以 `CheckpointMismatchError` 拒绝它，`strict=False` 时也一样（`strict=False` 只跳过缺失和多余的键，从不跳过形状不对的键）：

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
from torchvision.models import resnet18

torch.manual_seed(0)
torch.save(resnet18(num_classes=1000).state_dict(), "imagenet.pt")  # stands in for a downloaded file
finetuned = resnet18(num_classes=10)
load_checkpoint("imagenet.pt", finetuned, strict=False)

# %% [markdown]
# `filter_state_dict` 留下名字（去掉包装前缀之后）和形状都与模型相符的项，并说明其余每一项为什么被丢掉：

# %%
from tutorials_pkg.save_load import filter_state_dict

show_source(filter_state_dict)

# %% [markdown]
# 然后用 `load_state_dict(kept, strict=False)` 加载留下的部分。它返回一对 `IncompatibleKeys`，读法是：`missing_keys` 是文件没有填上的模型项，这些层保留随机初始化，从头开始训练（这里是新的分类头 `fc`）；`unexpected_keys` 是文件里有、模型里没有位置的项（这里没有，因为 `filter_state_dict` 已经把它们丢掉了）。

# %%
kept, dropped = filter_state_dict(torch.load("imagenet.pt"), finetuned)
print(len(kept), "entries kept;", dropped)
result = finetuned.load_state_dict(kept, strict=False)
print(result)
assert result.missing_keys == ["fc.weight", "fc.bias"] and not result.unexpected_keys

# %% [markdown]
# ### `assign=True`：文件里的张量直接成为参数
#
# 默认情况下，`load_state_dict` 把每个值复制进模型已有的张量，保留那个张量的 dtype 和设备。用 `assign=True` 时，读入的张量本身成为参数（只有 `requires_grad` 取自模型）。这有两个后果：以 float16 保存的检查点会得到一个 float16 的模型；来自 `torch.load(mmap=True)` 的张量仍然是文件的内存映射，不会被复制：

# %%
half = {key: value.half() for key, value in resnet18(num_classes=10).state_dict().items()
        if value.is_floating_point()}
copied, assigned = resnet18(num_classes=10), resnet18(num_classes=10)
copied.load_state_dict(half, strict=False)
assigned.load_state_dict(half, strict=False, assign=True)
print("copy:", copied.fc.weight.dtype, " assign:", assigned.fc.weight.dtype)

mapped = torch.load("imagenet.pt", mmap=True)
copied, assigned = resnet18(num_classes=1000), resnet18(num_classes=1000)
copied.load_state_dict(mapped)
assigned.load_state_dict(mapped, assign=True)
print("shares the mapped memory: copy", copied.fc.weight.data_ptr() == mapped["fc.weight"].data_ptr(),
      " assign", assigned.fc.weight.data_ptr() == mapped["fc.weight"].data_ptr())

# %% [markdown]
# 所以要在加载之后再构建优化器。加载之前构建的优化器拿着旧的参数对象，而 `assign=True` 已经把它们换掉了：它更新的是模型不再使用的张量，模型什么也学不到。

# %%
model_first = resnet18(num_classes=1000)
too_early = torch.optim.SGD(model_first.parameters(), lr=0.1)
model_first.load_state_dict(torch.load("imagenet.pt"), assign=True)
before = model_first.fc.weight.detach().clone()
model_first(torch.randn(2, 3, 64, 64)).sum().backward()
too_early.step()
print("optimizer holds the model's fc.weight:", too_early.param_groups[0]["params"][-2] is model_first.fc.weight)
assert torch.equal(model_first.fc.weight, before)  # the step changed nothing in the model

after_load = torch.optim.SGD(model_first.parameters(), lr=0.1)  # the fix
after_load.step()
assert not torch.equal(model_first.fc.weight, before)

# %% [markdown]
# ## 精确地恢复训练
#
# 要让训练像从没停过一样继续，检查点里光有权重是不够的：还要有优化器的状态（Adam 的滑动平均）、学习率调度器的进度、epoch，以及决定数据顺序和 dropout 掩码的随机数状态。`Run` 装着一次训练在进行中会改变的四个对象：

# %%
from tutorials_pkg.save_load import Run, digits_run, train_run

show_source(Run, digits_run, train_run)

# %% [markdown]
# 先不间断地跑 4 个 epoch：

# %%
straight = train_run(digits_run(seed=0), x, y, 4, [])
print([round(loss, 4) for loss in straight])

# %% [markdown]
# `run_state` 收集检查点在模型和优化器之外还需要的东西，`restore_run_state` 把它们放回去：

# %%
from tutorials_pkg.save_load import restore_run_state, run_state

show_source(run_state, restore_run_state)

# %% [markdown]
# 然后同一次训练在 2 个 epoch 后停下、保存，再由新建的对象继续。新对象用不同的随机种子创建，这样它们最后拥有的一切都只能来自检查点：

# %%
run = digits_run(seed=0)
losses = train_run(run, x, y, 2, [])
save_checkpoint("resume.pt", run.model, run.optimizer, epoch=2, losses=losses, **run_state(run))

run = digits_run(seed=123)
meta = load_checkpoint("resume.pt", run.model, run.optimizer)
restore_run_state(run, meta)
resumed = train_run(run, x, y, 4 - meta["epoch"], list(meta["losses"]))
print([round(loss, 4) for loss in resumed])
assert resumed == straight  # exactly, not approximately

# %% [markdown]
# 如果不保存优化器状态（一种常见的偷懒做法：只存权重），恢复后的训练从第 3 个 epoch 起就成了另一次训练，因为 Adam 的滑动平均又从零开始；不保存随机数状态，数据的顺序就会不同。在 GPU 上，要做到逐位相同，还需要确定性的算子（`torch.use_deterministic_algorithms(True)`）和 CUDA 的随机数状态（`torch.cuda.get_rng_state_all()`）；带 worker 的 `DataLoader` 也要用同样的方式保存它自己的生成器。
#
# ## 拒绝会运行代码的文件
#
# pickle 可以让加载方调用任何能导入的函数，参数也随它定。这里的检查点在真实权重旁边带了一个对象，它 pickle 后的内容是“调用 `os.makedirs(...)`”；真正的攻击会调用更糟糕的东西。`load_checkpoint` 用 `weights_only=True` 读取，所以在调用任何东西之前就失败了，抛出 `UnpicklingError`：

# %% tags=["raises-exception"] raises="UnpicklingError"
class Payload:
    def __reduce__(self):  # what pickle stores: call this function with these arguments
        return (os.makedirs, ("payload-ran",))


torch.save({"model": model.state_dict(), "note": Payload()}, "untrusted.pt")
load_checkpoint("untrusted.pt", digits_classifier())

# %% [markdown]
# 那个函数从未被调用，而且可以安全地检查这个文件：

# %%
assert not os.path.exists("payload-ran")
print(torch.serialization.get_unsafe_globals_in_checkpoint("untrusted.pt"))

# %% [markdown]
# ## safetensors
#
# [safetensors](https://huggingface.co/docs/safetensors) 格式完全不用 pickle：一个记录名字、dtype 和形状的 JSON 头，后面是原始字节。文件里没有任何东西能运行，而且可以直接从磁盘映射。它只存张量（外加字符串元数据），所以适合存权重；带优化器状态的训练检查点仍然用 `torch.save`。

# %%
from safetensors.torch import load_file, save_file

save_file(model.state_dict(), "digits.safetensors", metadata={"epoch": "4"})
fresh = digits_classifier()
fresh.load_state_dict(load_file("digits.safetensors"))
assert torch.equal(fresh.eval()(x[:4]), model.eval()(x[:4]))

# %% [markdown]
# ### 共享权重要用 `save_model` 和 `load_model`
#
# 有些模型在两处使用同一个权重矩阵，比如语言模型的输入嵌入层和输出层：

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

show_source(TiedEmbeddingNet)

# %% [markdown]
# `state_dict` 在两个名字下列出这同一个矩阵。`save_file` 拒绝为同一块内存写两个名字，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
tied = TiedEmbeddingNet()
save_file(tied.state_dict(), "tied.safetensors")

# %% [markdown]
# `save_model` 只把共享的张量写一次，`load_model` 把它加载进一个由自身代码重新绑定了权重的模型。保存再读取之后，共享关系依然存在：

# %%
from safetensors.torch import load_model, save_model

save_model(tied, "tied.safetensors")
copy_of_tied = TiedEmbeddingNet()
missing, unexpected = load_model(copy_of_tied, "tied.safetensors")
print(sorted(load_file("tied.safetensors")), missing, unexpected)
assert copy_of_tied.out.weight is copy_of_tied.embed.weight
assert torch.equal(copy_of_tied.embed.weight, tied.embed.weight)

# %% [markdown]
# ## 快速读取大模型
#
# 常规的读取方式把活干了三遍：先用随机初始化的权重构建模型，`torch.load` 再把整个文件读进新的张量，`load_state_dict` 又把它们复制进模型。对大模型来说，下面三点能省掉其中大部分：
#
# - 在 **meta 设备**上构建模型：张量只有形状、没有数据，所以不分配内存，也不运行初始化；
# - `torch.load(..., mmap=True)` **映射**文件而不是读取它：张量的字节在第一次使用时才读入；
# - `load_state_dict(..., assign=True)` 让读入的张量直接成为模型的参数，而不是复制进（没有数据的）meta 参数。
#
# 不过，映射的文件是靠一次次缺页中断读进来的：文件不在操作系统的页缓存里时（冷缓存），每一页第一次被访问都要等磁盘，逐页访问一个模型，比顺序读一遍文件要慢。所以 `load_on_meta` 先预热页缓存：`warm_page_cache` 用 `os.sendfile` 把整个文件顺序读一遍、送进 `/dev/null`（相当于 `cat file > /dev/null`，字节不会复制进 Python），除非 `in_page_cache` 发现它已经在缓存里，这个检查只花几十微秒。之后再映射，就完全不用访问磁盘了。

# %%
from tutorials_pkg.save_load import load_on_meta

show_source(load_on_meta)

# %% [markdown]
# 在 meta 设备上，ResNet-50 瞬间构建完成，而且不占内存：

# %%
from torchvision.models import resnet50

with torch.device("meta"):
    skeleton = resnet50()
print(skeleton.fc.weight)

# %% [markdown]
# 下面在构建本页的机器上计时，用的是语言模型里那种大矩阵的替身（两个 `Linear(4096, 4096)`，134 MB），每项取 5 次运行的中位数，并与单纯读取文件字节的时间（下限）对比。热缓存：文件在页缓存里。冷缓存：每次运行前，`drop_from_page_cache` 请内核丢掉这个文件的缓存页（`posix_fadvise(DONTNEED)`，不需要 root 权限），`in_page_cache` 检查确实丢掉了。`touch_every_page` 读取模型张量每一页的一个字节，就像它的第一次前向传播那样，所以每一行都是完整的读取。

# %% tags=["measured"]
import statistics

from tutorials_pkg.measure import seconds_each
from tutorials_pkg.save_load import drop_from_page_cache, in_page_cache, touch_every_page


def large():
    return nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 4096))


save_checkpoint("large.pt", large())
file_bytes = bytearray(os.path.getsize("large.pt"))


def read_the_bytes():
    with open("large.pt", "rb", buffering=0) as file:
        file.readinto(file_bytes)


def usual_load():
    load_checkpoint("large.pt", large())


def mapped_without_warming():
    touch_every_page(load_on_meta("large.pt", large, warm=False))


def mapped_after_warming():
    touch_every_page(load_on_meta("large.pt", large))


loads = {"read the bytes (floor)": read_the_bytes, "build + torch.load + copy": usual_load,
         "meta + mmap + assign": mapped_without_warming, "load_on_meta (warms the cache)": mapped_after_warming}
warm = [statistics.median(runs) for runs in seconds_each(list(loads.values()), repeats=5)]
drop_from_page_cache("large.pt")
print("dropped from the page cache:", not in_page_cache("large.pt"))
cold = [statistics.median(runs) for runs in seconds_each(
    list(loads.values()), repeats=5, before=lambda: drop_from_page_cache("large.pt"))]

print(f"{'':32} {'warm s':>8} {'x floor':>8} {'cold s':>8} {'x floor':>8}")
for name, w, c in zip(loads, warm, cold):
    print(f"{name:32} {w:8.3f} {w / warm[0]:8.2f} {c:8.3f} {c / cold[0]:8.2f}")

# %% [markdown]
# `benchmarks/checkpoint_load.py --cold` 在一个 269 MB 的文件上做同样的测量，并列出 safetensors 和 `MAP_SHARED` 的结果。另外两个容易想到的设置并不会预读文件：`torch.serialization.set_default_mmap_options` 只接受 `MAP_PRIVATE`（默认值）或 `MAP_SHARED`，所以没法要求一次读入整个映射（`MAP_POPULATE`）；而在 Linux 上，`os.posix_fadvise(..., POSIX_FADV_WILLNEED)` 每次调用最多只预读设备的预读窗口那么多，而不是整个文件。

# %%
import mmap

try:
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED | mmap.MAP_POPULATE)
except ValueError as error:
    print(error)

# %% [markdown]
# 预热缓存什么时候有用？在文件不在内存里的时候：重启后或新容器里的第一次读取，比页缓存能在两次运行之间留住的更大的文件（大模型、很多检查点、繁忙的机器），以及网络文件系统，在那里每次缺页中断都要经过一次网络往返，而一次顺序读取可以连续传输。什么时候没用？文件刚写过或刚读过的时候（表中的热缓存一列：`in_page_cache` 看到它在缓存里，什么都不会重复读），小文件，以及模型只会用到一部分权重的时候：这时用 `warm=False`，只读被访问到的页。比空闲内存还大的文件，预读也是白读（它开头的页在模型用到之前就被挤出去了）：这时同样用 `warm=False`。`warm_page_cache` 需要 Linux（`os.RWF_NOWAIT`，以及能对普通文件使用的 `os.sendfile`）；在别的系统上它什么也不做。
#
# ## 选择 GPU：`CUDA_VISIBLE_DEVICES`
#
# 多卡教程用 `os.environ["CUDA_VISIBLE_DEVICES"] = "1"` 选择 GPU，而且常常写在脚本中间，这个名字也很容易拼错；一篇流传很广的教程里出现了三种拼法，没有一种是对的。CUDA 只在进程里初始化时（第一次调用 CUDA，而不是 `import torch` 时）读一次这个变量。在那之后再设置，什么也不会改变；拼错了，它就只是一个没人读的变量。两种情况都没有任何警告。每种情况开一个新的 Python 进程来演示：各自把变量设为空字符串（名字正确、值为空，会隐藏所有 GPU），分别在 CUDA 启动之前或之后，然后打印看到几块 GPU；最后一种设置的是那篇教程的三种拼法：

# %%
count_gpus = """import os, sys, torch
names, when = sys.argv[1].split(","), sys.argv[2]
if when == "after" and torch.cuda.is_available():
    torch.zeros(1, device="cuda")  # initialises CUDA
for name in names:
    os.environ[name] = ""
print(torch.cuda.device_count())"""

print("GPUs on this machine:", torch.cuda.device_count())
environment = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
for names, when in [("CUDA_VISIBLE_DEVICES", "before"), ("CUDA_VISIBLE_DEVICES", "after"),
                    ("CUDA_VISIBLE_DIVICES,CUDA_VISIABLE_DIVICES,CUDA_VISIABLE_DEVICES", "before")]:
    result = subprocess.run([sys.executable, "-c", count_gpus, names, when], env=environment,
                            capture_output=True, text=True, check=True)
    print(f"{names} set {when} CUDA starts: {result.stdout.strip()} GPUs seen, "
          f"warnings: {result.stderr.strip() or 'none'}")

# %% [markdown]
# 只有第一行隐藏了 GPU。在没有 GPU 的机器上，每一行的数都是 0，这时仍能看出来的是：没有一行给出警告。稳妥的做法是在 Python 之外设置这个变量（`CUDA_VISIBLE_DEVICES=1 python train.py`），或者写在脚本的最前面。`select_gpus` 做的是后一种，并拒绝这两种错误：

# %%
from tutorials_pkg.save_load import select_gpus

show_source(select_gpus)

# %% [markdown]
# 环境里有一个拼错的名字时，它抛出 `ValueError`，而不是让 CUDA 悄悄忽略它（CUDA 已经初始化时，则抛出 `RuntimeError`）：

# %% tags=["raises-exception"] raises="ValueError"
os.environ["CUDA_VISIABLE_DEVICES"] = "1"
try:
    select_gpus("1")
finally:
    del os.environ["CUDA_VISIABLE_DEVICES"]

# %% [markdown]
# ## 实践中常见的错误
#
# ### `model.state_dict = loaded`
#
# 这一行看起来像是在加载，也不会报错。它其实是用一个字典替换了模型的 `state_dict` **方法**；权重仍然是随机的：

# %%
trained = torch.load("weights.pt")
victim = digits_classifier()
victim.state_dict = trained  # an assignment, not a load
assert not torch.equal(victim.fc1.weight, trained["fc1.weight"])  # still the random init
print("fc1.weight is still random")

# %% [markdown]
# 加载是一次方法调用：

# %%
victim = digits_classifier()
victim.load_state_dict(trained)
assert torch.equal(victim.fc1.weight, trained["fc1.weight"])

# %% [markdown]
# ### `torch.save(model.state_dict, path)`
#
# 少了括号，`torch.save` 拿到的是绑定方法。pickle 一个绑定方法，会把它绑定的对象一起 pickle，所以这样保存的终究还是整个模型，`torch.load` 会拒绝它，抛出 `UnpicklingError`：

# %% tags=["raises-exception"] raises="UnpicklingError"
torch.save(model.state_dict, "method.pt")
torch.load("method.pt")

# %% [markdown]
# 文件要求的全局对象说明了它装的是什么：`getattr`（用来重新查找这个方法）和模型的各个类。用 `weights_only=False` 读取（这是我们自己的文件，可以信任），得到的是模型副本的一个方法，而不是字典。改正的方法是加上括号调用它：

# %%
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("method.pt")))
assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint("method.pt")
method = torch.load("method.pt", weights_only=False)
print(type(method).__name__, type(method.__self__).__name__)
assert callable(method) and not isinstance(method, dict)

torch.save(model.state_dict(), "method.pt")  # the fix: call it
assert isinstance(torch.load("method.pt"), dict)

# %% [markdown]
# ### `.pth`：也是 Python 路径配置文件的扩展名
#
# 教程里保存成 `.pth` 和 `.pt` 的一样多，PyTorch 两者都接受。但 `.pth` 也是 Python 路径配置文件的扩展名：启动时，`site` 模块会把 `site-packages` 目录里的每个 `*.pth` 文件当作文本逐行读取（每行是一个要加入 `sys.path` 的目录，或者一行以 `import` 开头、会被执行的代码）。误存到那里的检查点（工作目录恰好是 `site-packages` 的脚本、把权重一起打包的软件包）也会被这样读取。下面在一个新建的虚拟环境里，`weights.pt` 相安无事，`weights.pth` 却让这个环境里的 Python 一个都启动不了：

# %%
import sysconfig
import venv

venv.create("env", with_pip=False, symlinks=os.name != "nt")
packages = sysconfig.get_path("purelib", vars={"base": "env", "platbase": "env"})
python = os.path.join("env", "Scripts" if os.name == "nt" else "bin", "python")
for name in ("weights.pt", "weights.pth"):
    torch.save(model.state_dict(), os.path.join(packages, name))
    started = subprocess.run([python, "-c", "print('started')"], capture_output=True, text=True)
    print(f"{name:12} exit status {started.returncode}:",
          started.stdout.strip() or started.stderr.strip().splitlines()[-1])
    os.remove(os.path.join(packages, name))

# %% [markdown]
# `.pt` 没有别的含义；本页通篇使用它。
#
# ### 用 `k[7:]` 或 `k.replace("module.", "")` 去前缀
#
# 这两种写法在抄来的代码里都很常见，也都会弄坏键名（这两种错误写法就是 `tutorials_pkg.save_load` 里的 `strip_prefix_by_slicing_every_key` 和 `strip_prefix_by_replacing_anywhere`）。`k[7:]` 从每个键上砍掉 7 个字符，所以没有前缀的检查点，每个名字都丢了开头。这里 `fc1.weight` 和 `fc2.weight` 都变成了 `ght`，一个悄悄覆盖了另一个：进去 4 个张量，出来 2 个。

# %%
from tutorials_pkg.save_load import (
    strip_prefix, strip_prefix_by_replacing_anywhere, strip_prefix_by_slicing_every_key,
    strip_prefix_with_a_misspelt_name,
)

print(list(model.state_dict()), "->", list(strip_prefix_by_slicing_every_key(model.state_dict())))
assert len(strip_prefix_by_slicing_every_key(model.state_dict())) == 2

# %% [markdown]
# `replace` 会删掉任何位置上的 `module.`。这里的模型在 encoder 里真的有一个叫 `module` 的层，并且是从 `DataParallel` 保存的：

# %%
from collections import OrderedDict

def encoder_net():
    encoder = nn.Sequential(OrderedDict(module=nn.Linear(64, 16), act=nn.ReLU()))
    return nn.Sequential(OrderedDict(encoder=encoder, head=nn.Linear(16, 10)))


saved = nn.DataParallel(encoder_net()).state_dict()
print(list(saved)[:2])
print(list(strip_prefix_by_replacing_anywhere(saved))[:2])

# %% [markdown]
# `load_state_dict` 会拒绝这些键，而常见的“修复”`strict=False`，把错误变成了一个 encoder 悄悄保留随机权重的模型：

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_by_replacing_anywhere(saved), strict=False)
print("missing:", result.missing_keys)
assert not torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# 有篇教程写成了拼错的 `replace("modeule.", "")`：它匹配不到任何键，所以什么也没去掉，也不吭一声；再加上 `strict=False`，每个键同时既是缺失的又是多余的，整个模型都保留随机权重：

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_with_a_misspelt_name(saved), strict=False)
print(list(strip_prefix_with_a_misspelt_name(saved))[:2])
print(len(result.missing_keys), "missing,", len(result.unexpected_keys), "unexpected")
assert len(result.missing_keys) == len(net.state_dict())

# %% [markdown]
# `strip_prefix`（即 torch 的 `consume_prefix_in_state_dict_if_present`，源码见上文 `load_checkpoint` 一节）只去掉键开头的前缀。前缀按完整的名字计，所以 `"module"` 和 `"module."` 是一样的：

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert list(strip_prefix(saved, "module")) == list(strip_prefix(saved))
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ### 用 `best = model.state_dict()` 保存最佳权重
#
# `state_dict()` 不做复制：它的张量**就是**模型的参数（指向同一块内存的 detach 视图）。把它当作“目前最好的”留着，它会随着训练继续变化：

# %%
from tutorials_pkg.digits import train_epoch

run = digits_run(seed=0)
best = run.model.state_dict()
best_at_that_time = best["fc1.weight"].clone()
train_epoch(run.model, run.optimizer, x, y, run.generator)
assert torch.equal(best["fc1.weight"], run.model.fc1.weight)  # follows the model
assert not torch.equal(best["fc1.weight"], best_at_that_time)  # no longer what was "best"
print("the saved 'best' weights moved with training")

# %% [markdown]
# 要复制一份：用 `copy.deepcopy(model.state_dict())`，或者逐个张量 clone：

# %%
from tutorials_pkg.save_load import copy_state_dict

show_source(copy_state_dict)

# %%
best = copy_state_dict(run.model)
best_at_that_time = best["fc1.weight"].clone()
train_epoch(run.model, run.optimizer, x, y, run.generator)
assert torch.equal(best["fc1.weight"], best_at_that_time)
assert not torch.equal(best["fc1.weight"], run.model.fc1.weight)
print("the copy kept the weights it was taken with")
