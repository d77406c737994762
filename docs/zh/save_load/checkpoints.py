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
# # 保存与读取：检查点
#
# 这是“模型保存与读取”一章的第二页。[上一页](../)讲了为什么要保存 `state_dict` 而不是整个模型；本页把它写成一个扛得住崩溃的检查点，再用 `load_checkpoint` 读回来，无论它是在哪种包装下、哪种设备上保存的。

# %% [markdown]
# 示例沿用[第一页](../)的设置：一个在 scikit-learn 自带的 8×8 手写数字上、用同一个随机种子训练了一步的小分类器。所有文件都写进一个新建的临时目录，并把它设为工作目录。最后打印本页运行所用的版本。

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()
os.chdir(tempfile.mkdtemp())

print(describe_runtime())

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
# 读者需要的错误信息应当指出是哪个文件、它出了什么问题。本章的读取函数 `load_checkpoint` 遇到空文件或被截断的文件时，抛出 `TruncatedCheckpointError`（一种 `ValueError`）：

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
