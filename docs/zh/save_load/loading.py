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
# 这是“模型保存与读取”一章的第三页。[上一页](../checkpoints/)用 `save_checkpoint` 写出了扛得住崩溃的检查点；本页用 `load_checkpoint` 把它读回来，无论它是在哪种包装下、哪种设备上保存的，并看看检查点与模型对不上时会发生什么。

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
