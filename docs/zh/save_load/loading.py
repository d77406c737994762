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
# # 保存与读取：读取检查点
#
# 这是「模型保存与读取」一章的第三页。[上一页](../checkpoints/)用 `save_checkpoint` 写出了扛得住崩溃的检查点；本页用 `load_checkpoint` 把它读回来，无论它是在哪种包装下、哪种设备上保存的，并看看检查点与模型对不上时会发生什么。

# %% [markdown]
# 示例沿用[第一页](../)的设置：一个在 scikit-learn 自带的 8×8 手写数字上、用同一个随机种子训练了一步的小分类器，并像上一页那样用 `save_checkpoint` 把它和优化器存为 `ckpt.pt`。所有文件都写进一个新建的临时目录，并把它设为工作目录。最后打印本页运行所用的版本。

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint, save_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()
os.chdir(tempfile.mkdtemp())
save_checkpoint("ckpt.pt", model, optimizer, epoch=1)

print(describe_runtime())

# %% [markdown]
# ## 读取检查点：`load_checkpoint`
#
# `load_checkpoint` 用 `weights_only=True` 读取，把权重装进模型、把状态装进优化器，并返回保存的其他所有内容（epoch、损失、设置）。改动任何东西之前，它先检查下面几项，不合格就报错，错误信息里给出文件名：
#
# - 文件：必须是 `torch.save` 写的（不是文本、JSON 或 NumPy 文件），完整，且每条记录都与 `torch.save` 为它存下的 CRC-32 相符；
# - 权重在哪里：名为 `model`（`save_checkpoint` 这样写）、`state_dict`（Lightning）或 `model_state_dict` 的项，或者整个文件就是一个 `state_dict`；都不是时，它指出哪一项装着张量；
# - 权重的名字和形状（`strict=False` 时只查形状，并有一条警告列出没有加载的键）；
# - 优化器状态：参数组个数、每组参数个数都相同，由同一种优化器保存（看它的设置项的名字），并且每个参数的状态（Adam 的滑动平均）与该参数形状相同，参数传入的顺序变了也能查出来。
#
# 这样它就成了一个约 170 行的工具，在 `tutorials_pkg/save_load.py` 里（下面代码上方标出并链接了这个文件）；值得复制的是它的核心 `load_weights`，检查通过后由它来加载。它会去掉包装带来的前缀。`nn.DataParallel` 和 `DistributedDataParallel` 把模型存为 `self.module`，所以它们 `state_dict` 的每个键都以 `module.` 开头；`torch.compile` 之后的模型把它存为 `_orig_mod`，而某个子模块被编译过的模型，键的中间也有 `_orig_mod`（`0._orig_mod.weight`）。前缀用 torch 自己的 `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present` 去掉，而且只在没有任何键对得上模型时才去掉，所以真的叫 `module` 的层会保留自己的名字。在 meta 设备上构建的模型没有内存可供复制；这时 `load_weights` 让文件里的张量直接成为模型的张量（`assign=True`），并重新绑定共享的权重（见[快速加载](../fast_loading/)）。

# %%
from tutorials_pkg.save_load import load_weights

show_source(load_weights)

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
# 子模块被编译过的模型，以及有一个真叫 `module` 的子模块、又经由 `DataParallel` 保存的模型（键以 `module.module.` 开头），同样能读取：

# %%
from collections import OrderedDict

compiled_child = nn.Sequential(OrderedDict(fc1=torch.compile(nn.Linear(64, 32)), relu=nn.ReLU()))
print(list(compiled_child.state_dict())[:1])
save_checkpoint("compiled_child.pt", compiled_child)
load_checkpoint("compiled_child.pt", nn.Sequential(OrderedDict(fc1=nn.Linear(64, 32), relu=nn.ReLU())))

holder = nn.Sequential(OrderedDict(module=nn.Linear(64, 10)))
save_checkpoint("holder.pt", nn.DataParallel(holder))
print(list(torch.load("holder.pt")["model"])[:1])
fresh_holder = nn.Sequential(OrderedDict(module=nn.Linear(64, 10)))
load_checkpoint("holder.pt", fresh_holder)
assert torch.equal(fresh_holder.module.weight, holder.module.weight)

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
# 把检查点读进按 8 个隐藏单元（而不是 32 个）构建的模型时，`load_checkpoint` 抛出 `CheckpointMismatchError`（一种 `ValueError`），列出形状不同的键：

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
load_checkpoint("ckpt.pt", digits_classifier(hidden=8))

# %% [markdown]
# 优化器的种类与保存时不同时，`load_checkpoint` 在加载任何东西之前就抛出 `ValueError`，所以模型保留原来的权重。这里把 Adam 的状态交给一个 SGD 优化器；torch 自己的 `load_state_dict` 会照单全收，把 SGD 的学习率换成 Adam 的，直到第一步才失败（`KeyError: 'momentum'`）：

# %% tags=["raises-exception"] raises="ValueError"
save_checkpoint("ckpt.pt", model, optimizer, epoch=4)
target = digits_classifier()
before = target.fc1.weight.detach().clone()
load_checkpoint("ckpt.pt", target, torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9))

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
# ### 来自别处的文件
#
# Lightning 的检查点把权重放在 `state_dict` 下，旁边是 epoch 和步数；它同样能读取，其余内容原样返回：

# %%
torch.save({"state_dict": model.state_dict(), "epoch": 7, "global_step": 700}, "lightning.ckpt")
print(load_checkpoint("lightning.ckpt", digits_classifier()))

# %% [markdown]
# 对于不是 `torch.save` 写的文件（文本、JSON、NumPy 的 `.npy`、普通的 pickle），`load_checkpoint` 抛出 `NotACheckpointError`（一种 `ValueError`），直接说明这一点。`torch.load` 本身对文本文件报 `KeyError`，对 JSON 文件则报 `UnpicklingError`，还建议改用 `weights_only=False`，而那样会执行 pickle 里的任何代码：

# %% tags=["raises-exception"] raises="NotACheckpointError"
import json

with open("weights.json", "w") as file:
    json.dump({"fc1.bias": [0.0] * 32}, file)
load_checkpoint("weights.json", digits_classifier())

# %% [markdown]
# ### 损坏的文件
#
# `torch.save` 为文件里的每条记录（每个张量的字节，以及 pickle 本身）存了一个 CRC-32，但 `torch.load` 并不核对：磁盘上或复制时改变了的字节，照样一声不响地读进来。这里把文件中间的 200 个字节清零；`torch.load` 照常读取，而 `load_checkpoint` 先核对 CRC-32，抛出 `CorruptCheckpointError`（一种 `ValueError`），指出是哪个文件、哪条记录。没有存 CRC-32 的文件（全为 0）仍然能读取。核对要把文件多读一遍；`benchmarks/checkpoint_load.py --crc-only` 测得，文件已在内存中时，它大约是 `torch.load` 本身耗时的一半。

# %% tags=["raises-exception"] raises="CorruptCheckpointError"
save_checkpoint("ckpt.pt", model, epoch=4)
data = bytearray(open("ckpt.pt", "rb").read())
data[len(data) // 2: len(data) // 2 + 200] = bytes(200)
with open("ckpt.pt", "wb") as file:
    file.write(data)
print("torch.load reads it:", sorted(torch.load("ckpt.pt")))
load_checkpoint("ckpt.pt", digits_classifier())
