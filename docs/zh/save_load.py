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
# 训练好的模型，好不好用取决于保存它的那个文件。本页按 PyTorch 推荐的方式保存和读取（保存 `state_dict`，用 `weights_only=True` 读回），让检查点在程序崩溃时也不会留下损坏的文件，无论检查点是从哪种包装下保存的都能读取，让恢复后的训练得到完全相同的数字，并快速读取大文件。最后是那些会悄悄留下随机权重的错误。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# 示例在 scikit-learn 自带的 8×8 手写数字上训练一个小分类器，所有文件都写到临时目录里。

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
workdir = tempfile.mkdtemp()

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
whole = os.path.join(workdir, "whole_model.pt")
torch.save(model, whole)
torch.load(whole)

# %% [markdown]
# 错误信息给出两条出路。一条是 `weights_only=False`，即完全信任这个文件。更窄的一条：先在不加载的情况下查看文件需要哪些全局对象，确认它们符合预期，再用 `torch.serialization.safe_globals` 上下文管理器只放行这些：

# %%
needed = torch.serialization.get_unsafe_globals_in_checkpoint(whole)
print(needed)

expected = [nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout]
assert sorted(needed) == sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in expected)
with torch.serialization.safe_globals(expected):
    loaded = torch.load(whole)
assert torch.equal(loaded(x[:4]), model(x[:4]))
print(type(loaded).__name__, "loaded from a file we trust")

# %% [markdown]
# `state_dict` 完全不需要这些：它是纯数据，用默认参数就能读取，并装进由你当前代码构建的模型：

# %%
weights = os.path.join(workdir, "weights.pt")
torch.save(model.state_dict(), weights)
fresh = digits_classifier()
fresh.load_state_dict(torch.load(weights))
assert torch.equal(fresh.eval()(x[:4]), model(x[:4]))

# %% [markdown]
# ### 不带代码地交付模型：`torch.export`
#
# 当代码不应随权重一起交出去时（一个服务、另一个团队、C++ 运行时），`torch.export` 把模型追踪成由 torch 算子组成、内含权重的计算图，保存为 `.pt2` 文件。读取它只需要 torch，别的都不需要。这里由一个从不导入本项目的独立 Python 进程读取并运行这个文件：

# %%
import subprocess
import sys

from torch.export import Dim

exported = torch.export.export(model.eval(), (x[:4],), dynamic_shapes=({0: Dim("batch")},))
torch.export.save(exported, os.path.join(workdir, "digits.pt2"))
torch.save(x[:5], os.path.join(workdir, "inputs.pt"))

script = """import torch
program = torch.export.load("digits.pt2").module()
torch.save(program(torch.load("inputs.pt")), "outputs.pt")"""
subprocess.run([sys.executable, "-c", script], cwd=workdir, check=True)
assert torch.allclose(torch.load(os.path.join(workdir, "outputs.pt")), model(x[:5]))
print("same outputs from a process that has no model code")

# %% [markdown]
# ## 写一个能扛住崩溃的检查点
#
# `torch.save(obj, path)` 先以写入方式打开 `path`（这会清空它），然后才开始写。如果进程中途死掉（磁盘满了、被调度系统杀掉、断电），上一个好的检查点已经没了，留下的是一个截断的文件。读取它会失败；像这里这样从中间截断时，抛出的是 zip 读取器的 `OSError`（截在别处，则是说 zip 文件没有中央目录的 `RuntimeError`）：

# %% tags=["raises-exception"] raises="OSError"
import io

buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
truncated = os.path.join(workdir, "truncated.pt")
with open(truncated, "wb") as file:
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # what a crash leaves
torch.load(truncated)

# %% [markdown]
# `save_checkpoint` 从不直接写 `path`。它在旁边写一个临时文件，调用 `flush` 和 `os.fsync`，让字节真正落到磁盘上而不只是在操作系统的缓存里，然后用 `os.replace` 一步把新文件换到位（同一文件系统内的重命名是原子的）。读取的一方看到的，要么是旧的检查点，要么是完整的新检查点。
#
# ```mermaid
# flowchart LR
#     s["torch.save to .ckpt.pt.1f3a….tmp"] --> f["flush + fsync"] --> r["os.replace(tmp, ckpt.pt)"]
#     s -. crash .-> old(["ckpt.pt: the previous checkpoint, intact"])
#     f -. crash .-> old
# ```

# %%
from tutorials_pkg.save_load import save_checkpoint

show_source(save_checkpoint)

# %% [markdown]
# 来验证一下：先保存一次，再让下一次保存中途失败。下面替代 `torch.save` 的函数只写一半字节，然后抛出磁盘已满时的 `OSError`。

# %% tags=["raises-exception"] raises="OSError"
import errno
from unittest import mock

checkpoint = os.path.join(workdir, "ckpt.pt")
save_checkpoint(checkpoint, model, optimizer, epoch=1)
real_save = torch.save


def disk_full_half_way(obj, file):
    data = io.BytesIO()
    real_save(obj, data)
    file.write(data.getvalue()[: len(data.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


with mock.patch("torch.save", disk_full_half_way):
    save_checkpoint(checkpoint, model, optimizer, epoch=2)

# %% [markdown]
# 之前的检查点还在，能正常读取，写了一半的临时文件也被删掉了：

# %%
assert torch.load(checkpoint)["epoch"] == 1
assert not [name for name in os.listdir(workdir) if name.endswith(".tmp")]

# %% [markdown]
# ## 读取检查点：`load_checkpoint`
#
# `load_checkpoint` 用 `weights_only=True` 读取，把权重装进模型、把状态装进优化器，并返回保存的其他所有内容（epoch、损失、设置）。在加载之前，它替你做两件事。
#
# 一是去掉包装带来的前缀。`nn.DataParallel` 和 `DistributedDataParallel` 把模型存为 `self.module`，所以它们 `state_dict` 的每个键都以 `module.` 开头；`torch.compile` 之后的模型则把它存为 `_orig_mod`。前缀用 torch 自己的 `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present` 去掉，它只看键的开头：模型里真的叫 `module` 的层（`encoder.module.weight`）会保留自己的名字。模型这一侧也以同样方式解包，所以无论检查点是怎样保存的，都能对得上。
#
# 二是先比较键和形状，这样不匹配的检查点只会得到一条错误，列出所有缺失的、多余的和形状不对的键。

# %%
from tutorials_pkg.save_load import load_checkpoint

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
        save_checkpoint(checkpoint, nn.DataParallel(model) if save_wrapped else model, epoch=4)
        target = nn.DataParallel(digits_classifier()) if load_wrapped else digits_classifier()
        meta = load_checkpoint(checkpoint, target)
        same = torch.equal(target.eval()(x[:8]), reference)
        print(f"DataParallel when saving: {save_wrapped!s:5}  when loading: {load_wrapped!s:5}  same outputs: {same}")
        assert same

# %% [markdown]
# 通常的建议仍然成立：从包装过的模型保存 `model.module.state_dict()`，这样文件里的名字对别人来说也是干净的。
#
# ### 在 GPU 与 CPU 之间搬动：`map_location`
#
# `torch.load` 会把每个张量放回保存时所在的设备。因此在 GPU 上保存的检查点，读取时也需要 GPU，除非用 `map_location` 另行指定：
#
# ```python
# load_checkpoint(path, model, map_location="cpu")              # saved on cuda, load on a CPU machine
# load_checkpoint(path, model.to("cuda"), map_location="cuda")  # saved on CPU, load straight to the GPU
# torch.load(path, map_location={"cuda:1": "cuda:0"})           # a GPU index this machine does not have
# ```
#
# `load_checkpoint` 默认用 `"cpu"`：`load_state_dict` 会把数值复制到模型自己的张量里，无论它们在哪个设备上，所以经由 CPU 读取对任何模型都适用，也不会在 GPU 显存里多占一份副本。下面是同一段代码在本页运行所在的设备上执行：

# %%
from tutorials_pkg.runtime import default_device

device = default_device()
on_device = digits_classifier().to(device)
load_checkpoint(checkpoint, on_device, map_location=device)
print(on_device.fc1.weight.device, torch.equal(on_device.eval()(x[:8].to(device)).cpu(), reference))

# %% [markdown]
# ### 对不上的检查点
#
# 按 8 个隐藏单元（而不是 32 个）构建的模型，会得到 `CheckpointMismatchError`（一种 `ValueError`），其中列出形状不同的键：

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
load_checkpoint(checkpoint, digits_classifier(hidden=8))

# %% [markdown]
# ## 精确地恢复训练
#
# 要让训练像从没停过一样继续，检查点里光有权重是不够的：还要有优化器的状态（Adam 的滑动平均）、学习率调度器的进度、epoch，以及决定数据顺序和 dropout 掩码的随机数状态。

# %%
from tutorials_pkg.digits import train_epoch
from tutorials_pkg.save_load import restore_rng_states, rng_states

show_source(train_epoch, rng_states, restore_rng_states)

# %% [markdown]
# 先不间断地跑 4 个 epoch：

# %%
def new_run(seed):
    torch.manual_seed(seed)
    model = digits_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return model, optimizer, scheduler, torch.Generator().manual_seed(seed)


def train(run, epochs, losses):
    model, optimizer, scheduler, generator = run
    for _ in range(epochs):
        losses.append(train_epoch(model, optimizer, x, y, generator))
        scheduler.step()
    return losses


straight = train(new_run(seed=0), 4, [])
print([round(loss, 4) for loss in straight])

# %% [markdown]
# 然后同一次训练在 2 个 epoch 后停下、保存，再由新建的对象继续。新对象用不同的随机种子创建，这样它们最后拥有的一切都只能来自检查点：

# %%
model, optimizer, scheduler, generator = run = new_run(seed=0)
losses = train(run, 2, [])
resume = os.path.join(workdir, "resume.pt")
save_checkpoint(resume, model, optimizer, epoch=2, losses=losses,
                scheduler=scheduler.state_dict(), **rng_states(generator))

model, optimizer, scheduler, generator = run = new_run(seed=123)
meta = load_checkpoint(resume, model, optimizer)
scheduler.load_state_dict(meta["scheduler"])
restore_rng_states(meta, generator)
resumed = train(run, 4 - meta["epoch"], list(meta["losses"]))
print([round(loss, 4) for loss in resumed])
assert resumed == straight  # exactly, not approximately

# %% [markdown]
# 如果不保存优化器状态（一种常见的偷懒做法：只存权重），恢复后的训练从第 3 个 epoch 起就成了另一次训练，因为 Adam 的滑动平均又从零开始；不保存随机数状态，数据的顺序就会不同。在 GPU 上，要做到逐位相同，还需要确定性的算子（`torch.use_deterministic_algorithms(True)`）和 CUDA 的随机数状态（`torch.cuda.get_rng_state_all()`）；带 worker 的 `DataLoader` 也要用同样的方式保存它自己的生成器。
#
# ## 拒绝会运行代码的文件
#
# pickle 可以让加载方调用任何能导入的函数，参数也随它定。这里的检查点在真实权重旁边带了一个对象，它 pickle 后的内容是“调用 `os.makedirs(...)`”；真正的攻击会调用更糟糕的东西。`load_checkpoint` 用 `weights_only=True` 读取，所以在调用任何东西之前就失败了，抛出 `UnpicklingError`：

# %% tags=["raises-exception"] raises="UnpicklingError"
marker = os.path.join(workdir, "payload-ran")


class Payload:
    def __reduce__(self):  # what pickle stores: call this function with these arguments
        return (os.makedirs, (marker,))


untrusted = os.path.join(workdir, "untrusted.pt")
torch.save({"model": model.state_dict(), "note": Payload()}, untrusted)
load_checkpoint(untrusted, digits_classifier())

# %% [markdown]
# 那个函数从未被调用，而且可以安全地检查这个文件：

# %%
assert not os.path.exists(marker)
print(torch.serialization.get_unsafe_globals_in_checkpoint(untrusted))

# %% [markdown]
# ## safetensors
#
# [safetensors](https://huggingface.co/docs/safetensors) 格式完全不用 pickle：一个记录名字、dtype 和形状的 JSON 头，后面是原始字节。文件里没有任何东西能运行，而且可以直接从磁盘映射。它只存张量（外加字符串元数据），所以适合存权重；带优化器状态的训练检查点仍然用 `torch.save`。

# %%
from safetensors.torch import load_file, save_file

tensors = os.path.join(workdir, "digits.safetensors")
save_file(model.state_dict(), tensors, metadata={"epoch": "4"})
fresh = digits_classifier()
fresh.load_state_dict(load_file(tensors))
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
save_file(tied.state_dict(), os.path.join(workdir, "tied.safetensors"))

# %% [markdown]
# `save_model` 只把共享的张量写一次，`load_model` 把它加载进一个由自身代码重新绑定了权重的模型。保存再读取之后，共享关系依然存在：

# %%
from safetensors.torch import load_model, save_model

save_model(tied, os.path.join(workdir, "tied.safetensors"))
copy_of_tied = TiedEmbeddingNet()
missing, unexpected = load_model(copy_of_tied, os.path.join(workdir, "tied.safetensors"))
print(sorted(load_file(os.path.join(workdir, "tied.safetensors"))), missing, unexpected)
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
# 在本机上用 ResNet-50（约 100 MB）计时；文件刚写完，还在操作系统的缓存里，两种方式读的都是内存。`benchmarks/checkpoint_load.py` 在一个 200 MB 以上的文件上比较各种做法，并与单纯读取文件字节的时间对比。

# %%
import time

big = os.path.join(workdir, "resnet50.pt")
save_checkpoint(big, resnet50())

start = time.perf_counter()
usual = resnet50()
load_checkpoint(big, usual)
usual_seconds = time.perf_counter() - start

start = time.perf_counter()
fast = load_on_meta(big, resnet50)
fast_seconds = time.perf_counter() - start

print(f"build + torch.load + copy: {usual_seconds:.3f} s")
print(f"meta + mmap + assign:      {fast_seconds:.3f} s")
sample = torch.randn(1, 3, 64, 64)
assert torch.equal(fast.eval()(sample), usual.eval()(sample))

# %% [markdown]
# ## 实践中常见的错误
#
# ### `model.state_dict = loaded`
#
# 这一行看起来像是在加载，也不会报错。它其实是用一个字典替换了模型的 `state_dict` **方法**；权重仍然是随机的：

# %%
trained = torch.load(weights)
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
method_file = os.path.join(workdir, "method.pt")
torch.save(model.state_dict, method_file)
torch.load(method_file)

# %% [markdown]
# 文件要求的全局对象说明了它装的是什么：`getattr`（用来重新查找这个方法）和模型的各个类。用 `weights_only=False` 读取（这是我们自己的文件，可以信任），得到的是模型副本的一个方法，而不是字典。改正的方法是加上括号调用它：

# %%
print(torch.serialization.get_unsafe_globals_in_checkpoint(method_file))
assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint(method_file)
method = torch.load(method_file, weights_only=False)
print(type(method).__name__, type(method.__self__).__name__)
assert callable(method) and not isinstance(method, dict)

torch.save(model.state_dict(), method_file)  # the fix: call it
assert isinstance(torch.load(method_file), dict)

# %% [markdown]
# ### 用 `k[7:]` 或 `k.replace("module.", "")` 去前缀
#
# 这两种写法在抄来的代码里都很常见，也都会弄坏键名（这两种错误写法就是 `tutorials_pkg.save_load` 里的 `strip_prefix_by_slicing_every_key` 和 `strip_prefix_by_replacing_anywhere`）。`k[7:]` 从每个键上砍掉 7 个字符，所以没有前缀的检查点，每个名字都丢了开头。这里 `fc1.weight` 和 `fc2.weight` 都变成了 `ght`，一个悄悄覆盖了另一个：进去 4 个张量，出来 2 个。

# %%
from tutorials_pkg.save_load import (
    strip_prefix, strip_prefix_by_replacing_anywhere, strip_prefix_by_slicing_every_key,
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
# `strip_prefix`（即 torch 的 `consume_prefix_in_state_dict_if_present`，源码见上文 `load_checkpoint` 一节）只去掉键开头的前缀：

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ### 用 `best = model.state_dict()` 保存最佳权重
#
# `state_dict()` 不做复制：它的张量**就是**模型的参数（指向同一块内存的 detach 视图）。把它当作“目前最好的”留着，它会随着训练继续变化：

# %%
model, optimizer, scheduler, generator = new_run(seed=0)
best = model.state_dict()
best_at_that_time = best["fc1.weight"].clone()
train_epoch(model, optimizer, x, y, generator)
assert torch.equal(best["fc1.weight"], model.fc1.weight)  # follows the model
assert not torch.equal(best["fc1.weight"], best_at_that_time)  # no longer what was "best"
print("the saved 'best' weights moved with training")

# %% [markdown]
# 要复制一份：用 `copy.deepcopy(model.state_dict())`，或者逐个张量 clone：

# %%
from tutorials_pkg.save_load import copy_state_dict

show_source(copy_state_dict)

# %%
best = copy_state_dict(model)
best_at_that_time = best["fc1.weight"].clone()
train_epoch(model, optimizer, x, y, generator)
assert torch.equal(best["fc1.weight"], best_at_that_time)
assert not torch.equal(best["fc1.weight"], model.fc1.weight)
print("the copy kept the weights it was taken with")
