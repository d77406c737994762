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
# # 保存与读取：快速读取与选择 GPU
#
# 这是「模型保存与读取」一章的第五页。[上一页](../fine_tune_and_resume/)讲了微调和续训；本页以磁盘的速度读取大模型的检查点，并说明在脚本里怎样选择 GPU 才能真正生效。

# %% [markdown]
# 所有文件都写进一个新建的临时目录，并把它设为工作目录。最后打印本页运行所用的版本，下文的计时就是在这个环境里测得的。

# %%
import os
import subprocess
import sys
import tempfile

import torch
from torch import nn

from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint, save_checkpoint
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())

print(describe_runtime())

# %% [markdown]
# ## 快速读取大模型
#
# 常规的读取方式把活干了三遍：先用随机初始化的权重构建模型，`torch.load` 再把整个文件读进新的张量，`load_state_dict` 又把它们复制进模型。对大模型来说，下面三点能省掉其中大部分：
#
# - 在 **meta 设备**上构建模型：张量只有形状、没有数据，所以不分配内存，也不运行初始化；
# - `torch.load(..., mmap=True)` **映射**文件而不是读取它：张量的字节在第一次使用时才读入；
# - `load_state_dict(..., assign=True)` 让读入的张量直接成为模型的参数，而不是复制进（没有数据的）meta 参数（见[上一页](../fine_tune_and_resume/#assigntrue文件里的张量直接成为参数)）。
#
# `load_on_meta` 把这三步做完，加载用的是[读取检查点一页](../loading/#读取检查点load_checkpoint)的 `load_weights`，所以经由包装保存的检查点也能读取：

# %%
from tutorials_pkg.save_load import load_on_meta

show_source(load_on_meta)

# %% [markdown]
# `assign=True` 给 `state_dict` 里的每个名字各分配一个张量，所以原本共享同一个权重的两层（语言模型的词嵌入层和输出层）读回来会变成两份副本，训练时就各走各的了。`load_weights` 按模型代码里的绑定方式把它们重新绑在一起；下面是一个经由 `DataParallel` 保存的、权重绑定的模型：

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

save_checkpoint("tied.pt", nn.DataParallel(TiedEmbeddingNet()))
tied = load_on_meta("tied.pt", TiedEmbeddingNet)
print(tied.out.weight is tied.embed.weight, len(list(tied.parameters())))

# %% [markdown]
# 不过，映射的文件是靠一次次缺页中断读进来的：文件不在操作系统的页缓存里时（冷缓存），每一页第一次被访问都要等磁盘，逐页访问一个模型，比顺序读一遍文件要慢。所以先调用 `warm_page_cache`：它用 `os.sendfile` 把整个文件顺序读一遍、送进 `/dev/null`（相当于 `cat file > /dev/null`，字节不会复制进 Python），除非 `in_page_cache` 发现它已经在缓存里，这个检查只花几十微秒。之后再映射，就完全不用访问磁盘了。

# %%
from tutorials_pkg.save_load import in_page_cache, warm_page_cache

show_source(warm_page_cache, in_page_cache)

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
from tutorials_pkg.save_load import drop_from_page_cache, touch_every_page


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
    touch_every_page(load_on_meta("large.pt", large))


def mapped_after_warming():
    warm_page_cache("large.pt")
    touch_every_page(load_on_meta("large.pt", large))


loads = {"read the bytes (floor)": read_the_bytes, "build + torch.load + copy": usual_load,
         "load_on_meta (meta + mmap + assign)": mapped_without_warming,
         "warm_page_cache + load_on_meta": mapped_after_warming}
warm = [statistics.median(runs) for runs in seconds_each(list(loads.values()), repeats=5)]
drop_from_page_cache("large.pt")
print("dropped from the page cache:", not in_page_cache("large.pt"))
cold = [statistics.median(runs) for runs in seconds_each(
    list(loads.values()), repeats=5, before=lambda: drop_from_page_cache("large.pt"))]

print(f"{'':36} {'warm s':>8} {'x floor':>8} {'cold s':>8} {'x floor':>8}")
for name, w, c in zip(loads, warm, cold):
    print(f"{name:36} {w:8.3f} {w / warm[0]:8.2f} {c:8.3f} {c / cold[0]:8.2f}")

# %% [markdown]
# `benchmarks/checkpoint_load.py --cold` 在一个 269 MB 的文件上做同样的测量，并列出 safetensors 和 `MAP_SHARED` 的结果。另外两个容易想到的设置并不会预读文件：`torch.serialization.set_default_mmap_options` 只接受 `MAP_PRIVATE`（默认值）或 `MAP_SHARED`，所以没法要求一次读入整个映射（`MAP_POPULATE`）；而在 Linux 上，`os.posix_fadvise(..., POSIX_FADV_WILLNEED)` 每次调用最多只预读设备的预读窗口那么多，而不是整个文件。

# %%
import mmap

try:
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED | mmap.MAP_POPULATE)
except ValueError as error:
    print(error)

# %% [markdown]
# 预热缓存什么时候有用？在文件不在内存里的时候：重启后或新容器里的第一次读取，比页缓存能在两次运行之间留住的更大的文件（大模型、很多检查点、繁忙的机器），以及网络文件系统，在那里每次缺页中断都要经过一次网络往返，而一次顺序读取可以连续传输。什么时候没用？文件刚写过或刚读过的时候（表中的热缓存一列：`in_page_cache` 看到它在缓存里，什么都不会重复读），小文件，以及模型只会用到一部分权重的时候：这时只用 `load_on_meta`，只读被访问到的页。比空闲内存还大的文件，预读也是白读（它开头的页在模型用到之前就被挤出去了）：这时同样不要调用 `warm_page_cache`。`warm_page_cache` 需要 Linux（`os.RWF_NOWAIT`，以及能对普通文件使用的 `os.sendfile`）；在别的系统上它什么也不做。
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
# 再看这个变量写法上的一个细节。有的教程写成 `'0, 1'`，逗号后带空格；这会被读成两块 GPU 吗？CUDA 像 C 语言的 `strtoul` 那样读取逗号分隔的每一项：跳过开头的空格，遇到第一个非数字字符就停下，遇到读不懂的一项就不再往下读。torch 保留了一份同样的读法（用来在不启动 CUDA 的情况下数 GPU），所以在任何机器上都能演示：逗号后的空格无害，但用空格或分号代替逗号，就只剩一块 GPU，而且没有任何提示。`select_gpus` 会拒绝这两种写法：

# %%
def gpus_torch_reads(value):
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        return torch.cuda._parse_visible_devices()  # private: torch's copy of CUDA's reading
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]


saved_value = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
for value in ["0,1", "0, 1", "0 1", "0;1"]:
    print(f"CUDA_VISIBLE_DEVICES={value!r:7} -> GPUs {gpus_torch_reads(value)}")
if saved_value is not None:
    os.environ["CUDA_VISIBLE_DEVICES"] = saved_value
