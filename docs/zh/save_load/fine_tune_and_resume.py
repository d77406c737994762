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
# # 保存与读取：微调与续训
#
# 这是「模型保存与读取」一章的第四页。[上一页](../loading/)读取的检查点与模型完全对得上；本页先把预训练检查点装进换了分类头的模型，再从检查点精确地恢复一次训练。

# %% [markdown]
# 所有文件都写进一个新建的临时目录，并把它设为工作目录。恢复训练的例子和其他几页一样，用 scikit-learn 自带的 8×8 手写数字。最后打印本页运行所用的版本。

# %%
import os
import tempfile

import torch

from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint, save_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
os.chdir(tempfile.mkdtemp())

print(describe_runtime())

# %% [markdown]
# ## 加载预训练权重来微调
#
# 实践中最常见的读取，是把为一个任务训练的检查点装进另一个任务的模型：把 1000 类的 ImageNet ResNet-18 装进一个 10 类的模型。主干对得上，分类头对不上，所以 [`load_checkpoint`](../loading/#对不上的检查点) 以 `CheckpointMismatchError` 拒绝它，`strict=False` 时也一样（`strict=False` 只跳过缺失和多余的键，从不跳过形状不对的键）：

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
