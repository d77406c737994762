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
# 模型训练得再好，文件存坏了、读不回来，也是白费。本章按 PyTorch 推荐的方式保存和读取（保存 `state_dict`，用 `weights_only=True` 读回），让检查点不会因为程序崩溃而损坏，无论检查点是在哪种包装下保存的都能读取，把预训练检查点装进换了分类头的模型，让恢复后的训练得到完全相同的数字，并以磁盘的速度读取大文件。最后是那些会悄悄留下随机权重的错误。
#
# 本章分为六页：
#
# 1. 本页：`state_dict` 是什么，为什么保存它而不是整个模型，怎样拒绝会运行代码的文件，以及 safetensors 格式；
# 2. [检查点](checkpoints/)：写一个能扛住崩溃的检查点；
# 3. [读取检查点](loading/)：用 `load_checkpoint` 读回检查点，无论它是在哪种包装下、哪种设备上保存的；
# 4. [微调与续训](fine_tune_and_resume/)：加载预训练权重来微调，精确地恢复训练；
# 5. [快速读取与选择 GPU](fast_loading/)：快速读取大模型，用 `CUDA_VISIBLE_DEVICES` 选择 GPU；
# 6. [常见错误](in_the_wild/)：实践中那些会悄悄留下随机权重的错误。
#
# 本章的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

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
# ## 拒绝会运行代码的文件
#
# pickle 可以让加载方调用任何能导入的函数，参数也随它定。这里的检查点在真实权重旁边带了一个对象，它 pickle 后的内容是「调用 `os.makedirs(...)`」；真正的攻击会调用更糟糕的东西。`load_checkpoint`（本章的读取函数，见[第三页](loading/#读取检查点load_checkpoint)）用 `weights_only=True` 读取，所以在调用任何东西之前就失败了，抛出 `UnpicklingError`：

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
# [safetensors](https://huggingface.co/docs/safetensors) 格式完全不用 pickle：一个记录名字、dtype 和形状的 JSON 头，后面是原始字节。文件里没有任何东西能运行，而且可以直接从磁盘映射。它只存张量（外加字符串元数据），所以适合存权重；带优化器状态的训练检查点仍然用 `torch.save`（[下一页](checkpoints/)就写这样的检查点）。

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
