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
# 这是「模型保存与读取」一章的第二页。[上一页](../)讲了为什么要保存 `state_dict` 而不是整个模型；本页把它写成一个扛得住崩溃的检查点，[下一页](../loading/)再用 `load_checkpoint` 把它读回来，无论它是在哪种包装下、哪种设备上保存的。

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
#     c["检查：weights_only 能读吗？"] --> s["torch.save 写入 .ckpt.pt.tmp"] --> f["flush + fsync"] --> r["os.replace(临时文件, ckpt.pt)"]
#     c -. 拒绝 .-> old(["ckpt.pt：上一个检查点，完好无损"])
#     s -. 崩溃 .-> old
#     f -. 崩溃 .-> old
# ```
#
# 写任何东西之前，`check_loads_with_weights_only` 先把检查点不带张量字节地保存一遍（`torch.serialization.skip_data`），再用 `weights_only=True` 读回到 meta 设备上：凡是 `load_checkpoint` 会拒绝的内容，此刻就被拒绝，报的是 torch 自己的错误信息；这一步检查在 CPU 和 GPU 上都不分配内存。临时文件的名字是固定的 `.ckpt.pt.tmp`，被杀掉的保存留下的文件，下一次保存直接覆盖。经由符号链接保存时，它替换的是链接指向的文件并保留该文件的权限，和 `torch.save` 一样；它的错误信息给出你的路径，而不是临时文件的路径；临时文件名最多截取 200 字节（在字符之间截断），所以很长但合法的文件名也能保存。`torch.save` 还会在文件里为每个张量的字节存一个 CRC-32，`load_checkpoint` 读取时会核对（见[下一页](../loading/#损坏的文件)）。

# %%
from tutorials_pkg.save_load import save_checkpoint

show_source(save_checkpoint)

# %% [markdown]
# 这个简短的写法有意没有处理两件事：两个进程同时保存同一路径时会共用临时文件，字节可能混在一起（只让一个进程写，例如 rank 0）；它也不对所在目录调用 `fsync`，所以断电之后，你找到的可能是上一个检查点。
#
# ### 保存中途失败时
#
# 来验证一下：先保存一次，再让下一次保存中途失败。下面替代 `torch.save` 的函数只写检查点的一半字节，然后抛出磁盘已满时的 `OSError`。

# %% tags=["raises-exception"] raises="OSError"
import errno
from unittest import mock

save_checkpoint("ckpt.pt", model, optimizer, epoch=1)
real_save = torch.save


def disk_full_half_way(obj, file):
    if not str(file.name).endswith(".tmp"):  # the check's pickle, before the write: let it pass
        return real_save(obj, file)
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
# ### 被杀掉的保存、符号链接与权限
#
# 被 `SIGKILL`（或内存不足时的 OOM killer）杀掉的进程，来不及删除它的临时文件。因为名字固定，每个检查点最多只有一个这样的文件，下一次保存会覆盖它，再把它改名换到位。下面经由链接 `latest.pt` 保存检查点，把它指向的文件的权限设为 `0600`，再在旁边放一个模拟的残留文件；下一次保存之后，链接仍是链接，文件仍是 `0600`，残留文件已经不在了：

# %%
os.makedirs("run-1")
os.symlink("run-1/ckpt.pt", "latest.pt")
save_checkpoint("latest.pt", model, epoch=1)
os.chmod("run-1/ckpt.pt", 0o600)
with open("run-1/.ckpt.pt.tmp", "wb") as file:  # what a killed save leaves
    file.write(b"half a checkpoint")

save_checkpoint("latest.pt", model, epoch=2)
print(os.path.islink("latest.pt"), oct(os.stat("run-1/ckpt.pt").st_mode & 0o777), sorted(os.listdir("run-1")))
assert torch.load("run-1/ckpt.pt")["epoch"] == 2

# %% [markdown]
# ### 读取时会被拒绝的元数据
#
# `save_checkpoint` 把其余的关键字参数都当作元数据，而无论它们装着什么，都必须能经由 `weights_only=True` 读回来。有三种常见的值做不到：numpy 数值（用 numpy 算出的指标，`np.float64(0.9)`）、`pathlib.Path`，以及保存本次运行设置的 `argparse.Namespace`。普通的 `torch.save` 会一声不响地写进去，等到恢复训练时才发现读不回来。`save_checkpoint` 当场拒绝它们，抛出 torch 自己的 `UnpicklingError`，其中指出第一个它不肯加载的全局对象（这里是 numpy 的标量类型），旧文件保持原样：

# %% tags=["raises-exception"] raises="UnpicklingError"
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
