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
# # 多卡与分布式下的保存与读取
#
# 训练分布在多个进程上（每块 GPU 一个进程）时，每个进程（称为一个 *rank*）要么持有模型的完整副本（DDP），要么只持有模型的一片（FSDP）。保存与读取于是多出三个问题：谁来写文件，谁要等它写完，读回来的张量落在哪个设备上。本页用真正在多个进程里运行的代码回答这些问题。
#
# 本页从用 `torchrun` 启动的训练脚本讲起。脚本自己选择设备：在有 GPU 的机器上，每个 rank 使用自己的那块 GPU 和 `nccl` 后端；没有 GPU 时（构建本页的机器就是这样），每个 rank 在 CPU 上用 `gloo` 后端工作。本页其余部分在两个 CPU rank 上运行同样的函数，以便看清它们内部发生了什么；项目的 GPU 测试则在 CUDA 上用 `nccl` 运行它们。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## `torchrun` 启动的脚本
#
# `torchrun` 为每块 GPU 启动一个进程，并通过环境变量告诉每个进程它是谁：`RANK`（它在所有进程中的编号）、`LOCAL_RANK`（它在本机上的编号）、`WORLD_SIZE`，以及 `MASTER_ADDR` / `MASTER_PORT`（rank 0 在哪里等其他进程）：
#
# ```bash
# torchrun --nproc-per-node=2 train.py checkpoints      # 一台机器，2 块 GPU
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \
#          --master-addr=10.0.0.1 --master-port=29500 train.py checkpoints   # 两台机器中的第一台
# ```
#
# 下面就是整个脚本：`main` 以及它调用的一切。把它存为 `train.py`，末尾加上 `if __name__ == "__main__": main()`，就是上面的命令所运行的脚本。（`tutorials_pkg.distributed` 模块本身也以这一行结尾，所以 `torchrun --nproc-per-node=2 -m tutorials_pkg.distributed checkpoints` 也能运行它。）

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import main
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(main)

# %% [markdown]
# 各部分的作用：
#
# - `init_distributed` 读取 `LOCAL_RANK`，有 GPU 时*先*调用 `torch.cuda.set_device`，再调用 `init_process_group`：这样 NCCL 和这个进程之后的所有 CUDA 调用用的都是这块 GPU，而不是 GPU 0。`device_id=` 把进程组绑定到同一块 GPU（NCCL 会立即建立通信器，配置有误时在这里就报错，而不是等到第一次集合通信）。没有 GPU 时，进程组在 CPU 上使用 `gloo`。
# - `wrap_ddp` 对放在一块 GPU 上的模型传入 `device_ids=[index]`；对放在 CPU 上的模型，`device_ids` 必须保持为 `None`。DDP 构造时会把 rank 0 的权重复制给每个 rank，所以每个 rank 可以用各自的种子构造模型。
# - `DistributedSampler` 根据进程组的 rank 和 world size，给每个 rank 分一份属于它自己的数据。每个 epoch 开始时调用 `set_epoch(epoch)`，才会重新打乱，而且所有 rank 的打乱方式相同。
# - `save_training_state` 由*每一个* rank 调用：所有 rank 一起收集状态（对分片的模型来说这是一次集合通信），rank 0 写文件，`barrier` 让每个 rank 都等到文件写完才继续。
# - `load_training_state` 同样由每个 rank 调用，各自把 `map_location` 设为自己的设备。
# - `main` 在 `destroy_process_group()` 之前先调用 `gc.collect()`，让训练留在循环引用里的对象趁进程组还在时释放。如果等到进程退出时才释放，那时进程组已经不在了，有时会让某个 rank 异常终止（“terminate called without an active exception”）。
#
# 下面把上面这段代码加上那最后一行存为 `train.py`，在本页里启动它（`torchrun` 命令运行的就是 `python -m torch.distributed.run`；`--standalone` 在本机的一个空闲端口上安排各个 rank 会合）：

# %%
import subprocess
import sys
from pathlib import Path

from tutorials_pkg.source import source_with_imports

Path("train.py").write_text(source_with_imports(main) + '\n\nif __name__ == "__main__":\n    main()\n')
nproc = torch.cuda.device_count() or 2  # one process per GPU; two CPU processes without one
command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "train.py", "torchrun_job"]
job = subprocess.run(command, capture_output=True, text=True)
assert job.returncode == 0, job.stderr[-3000:]
print(job.stdout, end="")
print(sorted(os.listdir("torchrun_job")))

# %% [markdown]
# 每个 rank 都在自己那一份数据上训练，rank 0 在每个 epoch 之后写了一个检查点。

# %% [markdown]
# ## 每个 rank 最后的权重都相同
#
# `torchrun` 任务没法把 Python 对象交回这个 notebook。为了看清各个 rank 内部，本页用 `run_on_ranks`（来自 `tutorials_pkg.launcher`，代码在本页末尾）启动同一个函数 `train_ddp`：它为每个 rank 启动一个全新的进程，设置好 `torchrun` 会设置的那些变量，把它们组成一个 `gloo` 进程组，并返回每个 rank 的返回值。

# %%
from tutorials_pkg.distributed import train_ddp
from tutorials_pkg.launcher import run_on_ranks

os.makedirs("run")
results = run_on_ranks(train_ddp, "run")  # two CPU ranks

for rank, result in enumerate(results):
    print(f"rank {rank} on {result['device']}: samples of epoch 0 {result['orders'][0]}, "
          f"of epoch 1 {result['orders'][1]}")
same = all(torch.equal(results[0]["state_dict"][k], results[1]["state_dict"][k])
           for k in results[0]["state_dict"])
print("same weights on both ranks:", same)
assert same

# %% [markdown]
# 两个 rank 看到的样本不同，每个 epoch 的顺序也不同；权重却一位不差地相同。`backward` 时 DDP 对所有 rank 的梯度求平均，所以每一步都等于单个进程在两个 rank 的批次合在一起时走的那一步：

# %%
from tutorials_pkg.distributed import optimizer_and_scheduler, tiny_model, toy_dataset, train_step

reference = tiny_model(seed=0)  # rank 0's initial weights, which DDP gave every rank
optimizer, scheduler = optimizer_and_scheduler(reference)
dataset = toy_dataset()
for epoch in range(2):
    for start in (0, 4):  # two steps of 4 samples per rank
        batch = [i for result in results for i in result["orders"][epoch][start:start + 4]]
        train_step(reference, optimizer, *dataset[batch])
    scheduler.step()
close = all(torch.allclose(reference.state_dict()[k], results[0]["state_dict"][k], atol=1e-6)
            for k in results[0]["state_dict"])
print("same as one process on both ranks' batches:", close)
assert close

# %% [markdown]
# 不调用 `set_epoch`，`DistributedSampler` 每个 epoch 的打乱方式都一样（这里是 rank 0 的那一份，rank 和 world size 手动给出）：

# %%
from torch.utils.data.distributed import DistributedSampler

sampler = DistributedSampler(dataset, num_replicas=2, rank=0, seed=0)
print("epoch 0:           ", list(sampler))
print("epoch 1, forgotten:", list(sampler))
sampler.set_epoch(1)
print("epoch 1, set_epoch:", list(sampler))
assert list(sampler) == results[0]["orders"][1]

# %% [markdown]
# 检查点里有恢复训练所需的一切。其中的权重用的是模型自己的键名：`get_model_state_dict` 去掉了 DDP 包装器加在每个名字前面的 `module.`。随机数生成器的状态每个 rank 一份。

# %%
state = torch.load("run/epoch1.pt", weights_only=True)
print(list(state))
print("model:", list(state["model"]))
print("epoch:", state["epoch"], " learning rate:", state["optimizer"]["param_groups"][0]["lr"],
      " momentum buffers:", len(state["optimizer"]["state"]), " RNG states:", len(state["rng"]))

# %% [markdown]
# ## 恢复训练：每个 rank 都读取，各自读到自己的设备上
#
# 一个新任务从 `epoch1.pt` 恢复：每个 rank 在包装模型之前调用 `load_training_state`，把 `map_location` 设为自己的设备（在 GPU 机器上是 `cuda:<LOCAL_RANK>`），取回权重、优化器的动量、学习率调度器走到的步数，以及它自己的随机数生成器状态。于是第二个 epoch 和没有中断的那次运行完全一样：

# %%
os.makedirs("resumed")
resumed = run_on_ranks(train_ddp, "resumed", 2, "run/epoch1.pt")

for rank, result in enumerate(resumed):
    start = result["at_start"]
    rng_as_saved = torch.equal(start["rng"], state["rng"][rank]["cpu"])
    print(f"rank {rank}: lr {start['lr']}, momentum buffers {start['momentum_buffers']}, "
          f"RNG as saved: {rng_as_saved}")
same = all(torch.equal(resumed[r]["state_dict"][k], results[r]["state_dict"][k])
           for r in range(2) for k in results[r]["state_dict"])
print("same weights as the uninterrupted run:", same)
assert same

# %% [markdown]
# ### 只在 rank 0 上读取
#
# DDP 构造时会把 rank 0 的参数和缓冲区复制给每个 rank。所以单就*权重*而言，在包装之前只在 rank 0 上读取就够了。其余的东西都不会被复制：优化器的动量、调度器的步数和每个 rank 的随机数生成器，仍然是各个 rank 自己构造出来的样子。`resume_on_rank0_only` 就是这样做的：

# %%
from tutorials_pkg.distributed import resume_on_rank0_only

show_source(resume_on_rank0_only)

# %%
os.makedirs("rank0_only")
drifted = run_on_ranks(resume_on_rank0_only, "run/epoch1.pt", "rank0_only")

for rank, result in enumerate(drifted):
    start = result["at_start"]
    rng_as_saved = torch.equal(start["rng"], state["rng"][rank]["cpu"])
    print(f"rank {rank}: lr {start['lr']}, momentum buffers {start['momentum_buffers']}, "
          f"RNG as saved: {rng_as_saved}")
gap = max((drifted[0]["state_dict"][k] - drifted[1]["state_dict"][k]).abs().max().item()
          for k in results[0]["state_dict"])
print(f"largest difference between the ranks' weights after one epoch: {gap:.4f}")
assert gap > 1e-3

# %% [markdown]
# 没有任何报错。两个 rank 从相同的权重出发，平均的是相同的梯度，走的步子却不同（rank 1 的学习率是两倍，而且没有动量），所以第一步之后每个 rank 手里的模型就各不相同了，下一个检查点也只是 rank 0 的那一份。应当在每个 rank 上都读取。

# %% [markdown]
# ## 跨 rank 的 BatchNorm：`SyncBatchNorm`
#
# 在 DDP 下，每个 rank 的 BatchNorm 只用它自己的批次计算批统计量：每块 GPU 4 张图，就是 4 张图的统计量。`nn.SyncBatchNorm.convert_sync_batchnorm(model)` 把每个 BatchNorm 层换成 `SyncBatchNorm`，参数和缓冲区不变，统计量则在所有 rank 的批次上计算。要在用 DDP 包装之前转换：

# %%
from tutorials_pkg.distributed import sync_batchnorm_step

show_source(sync_batchnorm_step)

# %% [markdown]
# DDP 需要一个进程组；在 notebook 里建一个只有一个进程的组就足以试一试（内存里的 `HashStore` 代替了地址和端口）：

# %%
import torch.distributed as dist
from torch import nn

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)))
print(synced)

# %% [markdown]
# `SyncBatchNorm` 要求模型放在加速器上：模型在 CPU 上且含有它时，DDP 以 `ValueError` 拒绝。（GPU 测试会检查：在 CUDA 上，每个 rank 的滑动均值都是所有 rank 的整个批次的均值。）

# %% tags=["raises-exception"] raises="ValueError"
from torch.nn.parallel import DistributedDataParallel as DDP

DDP(synced)

# %% [markdown]
# ## forward 从不使用的参数：`find_unused_parameters`
#
# [summary 一章](../summary/)里有一个模型，把整个 `resnet18` 存为 `self.base_model`，却只用了它的前三层。这样注册之后，它的 11,689,512 个参数进入每一个 `state_dict`（128 个键，而模型只需要 6 个），DDP 也会等着每个参数都得到梯度。下面是同一个模型的缩小版，基于 `tiny_resnet`：

# %%
from tutorials_pkg.distributed import RegistersUnusedBaseModel, count_allreduced

show_source(RegistersUnusedBaseModel, count_allreduced)

# %% [markdown]
# `count_allreduced` 注册一个通信钩子（hook），记录每次 all-reduce 传送了多少个数值，然后照常做 DDP 在没有钩子时做的事。第一步能跑完；DDP 等着那些未使用的参数的梯度，而它们永远得不到梯度，所以包含它们的桶一直没有就绪，*什么都没有*被平均：

# %%
images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
labels = torch.tensor([0, 1, 2, 3])
unused = DDP(RegistersUnusedBaseModel())
counts = count_allreduced(unused)
unused_optimizer = torch.optim.SGD(unused.parameters(), lr=0.1)
train_step(unused, unused_optimizer, images, labels)
print("values all-reduced in step 1:", counts)

# %% [markdown]
# 下一步抛出 `RuntimeError`，按编号列出没有得到梯度的参数：

# %% tags=["raises-exception"] raises="RuntimeError"
train_step(unused, unused_optimizer, images, labels)

# %% [markdown]
# 有两种修正。第一种就是 summary 一章给出的：让基础模型只做一个局部变量，这样只有 forward 用到的层才会被注册。

# %%
from tutorials_pkg.distributed import StemAndHead

show_source(StemAndHead)

# %% [markdown]
# 第二种保留模型，传入 `find_unused_parameters=True`。这个开关是有代价的：每一步，DDP 都要从输出出发遍历一遍 autograd 图，找出没有得到梯度的参数，而且仍然会对它们做 all-reduce（传的是零），所以每一步都要传送整个基础模型：

# %%
for name, model in (("base model a local", DDP(StemAndHead())),
                    ("find_unused_parameters", DDP(RegistersUnusedBaseModel(),
                                                   find_unused_parameters=True))):
    counts = count_allreduced(model)
    model_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        train_step(model, model_optimizer, images, labels)
    print(f"{name:22}: {len(model.module.state_dict()):2} state_dict keys, "
          f"values all-reduced per step: {counts}")

# %% [markdown]
# 这里是 5,356 个数值而不是 322 个；换成教程里的 `resnet18`，就是它的 11,689,512 个参数，float32 下每一步 46.8 MB。forward 不用的东西就不要注册；这个开关留给 forward 确实会在某些步跳过部分参数的模型。

# %% [markdown]
# ## `DataParallel` 与 DDP：都会在每个键前面加上 `module.`
#
# 许多教程仍然用 `nn.DataParallel(model)` 做多卡训练：只有一个进程，每次前向传播都把模型复制到本机的每块 GPU 上。PyTorch 自己的文档则建议改用 DDP，即使只有一台机器；`DataParallel` 的文档字符串就是这么写的：

# %%
doc = " ".join(nn.DataParallel.__doc__.split())
start = doc.index("It is recommended")
print(doc[start:doc.index(".", doc.index("single node", start)) + 1])

# %% [markdown]
# 两种包装器都把模型存为 `.module`，所以它们的 `state_dict()` 把每个张量命名为 `module.<name>`：

# %%
print("DataParallel:", list(nn.DataParallel(tiny_model()).state_dict()))
print("DDP:         ", list(DDP(tiny_model()).state_dict()))
wrapper_state = DDP(tiny_model()).state_dict()  # wrong: the wrapper's keys
dist.destroy_process_group()

# %% [markdown]
# 普通模型（做推理时构造的就是它）没有这些键，`load_state_dict` 抛出 `RuntimeError`，列出缺少的键和多出来的键：

# %% tags=["raises-exception"] raises="RuntimeError"
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# 像 `save_training_state` 那样保存 `get_model_state_dict(model)`（或 `model.module.state_dict()`）即可。对已经带着前缀保存的文件，用 torch 自带的 `consume_prefix_in_state_dict_if_present` 去掉前缀（原地修改，而且只处理以该前缀开头的键）：

# %%
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

consume_prefix_in_state_dict_if_present(wrapper_state, "module.")
print(list(wrapper_state))
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# ## 用 `torch.distributed.checkpoint` 保存分片检查点
#
# 一块设备装不下的模型要*分片*：用 FSDP2 的 `fully_shard`，每个参数沿第一维切开，每个 rank 只保留自己那一片。没有哪个 rank 持有整个模型，所以也没有哪个 rank 能把它写进一个文件（除非先把它收集起来，而那可能放不下）。分布式检查点包（DCP，`torch.distributed.checkpoint`）改为写一个目录：每个 rank 写自己持有的分片，rank 0 再加一个 `.metadata` 文件，记录哪个张量的哪一部分在哪里。
#
# ```mermaid
# flowchart LR
#     W["0.weight, 8×4"] -- "第 0–3 行" --> R0["rank 0"] --> F0["__0_0.distcp"]
#     W -- "第 4–7 行" --> R1["rank 1"] --> F1["__1_0.distcp"]
#     R0 --> M[".metadata"]
# ```
#
# state dict 来自 `get_model_state_dict` 和 `get_optimizer_state_dict`（在 `torch.distributed.checkpoint.state_dict` 里）：它们对普通模型、DDP 和 FSDP 用法相同，并且用普通模型的键名来命名每个张量。设备网格（device mesh）建在 rank 所用的设备类型上（nccl 下是 `cuda`，这里是 `cpu`）。
#
# 读取是保存的镜像，只有一点不同：`dcp.load` 不返回 state dict，而是原地填充传给它的那个。所以每个 rank 先构造模型和优化器（分片方式可以相同，也可以不同：DCP 读取时会重新分片），向它们要一个 state dict，让 `dcp.load` 填好，再用 `set_model_state_dict` / `set_optimizer_state_dict` 交还给它们。

# %%
from tutorials_pkg.distributed import load_sharded, save_sharded

show_source(save_sharded, load_sharded)

# %%
saved_shards = run_on_ranks(save_sharded, "sharded")
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir("sharded")):
    print(f"{name:14} {os.path.getsize(os.path.join('sharded', name)):5} bytes")

# %% [markdown]
# 一个新的任务读取它，每个 rank 都读进一个用别的权重构造的模型。无论用什么包装器，键名都是普通模型的：rank 0 从 DDP 模型写出的文件，和这个 FSDP 模型的检查点，用的都是 `tiny_model()` 自己的名字，最后一行检查了这一点。

# %%
loaded_shards = run_on_ranks(load_sharded, "sharded")
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same
assert list(state["model"]) == list(full) == list(tiny_model().state_dict())  # the plain model's keys

# %% [markdown]
# ## 分片检查点转成单个文件，再转回来
#
# 要把模型交给没有集群的人，可以用 `dcp_to_torch_save`（在 `torch.distributed.checkpoint.format_utils` 里）把目录转成一个 `torch.save` 文件；它会把所有内容读进一个进程，所以只在一个 rank 上或离线运行它。这个模块也能在命令行里转换：`python -m torch.distributed.checkpoint.format_utils dcp_to_torch <folder> <file>`。

# %%
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

dcp_to_torch_save("sharded", "one_file.pt")
checkpoint = torch.load("one_file.pt", weights_only=True)
print(list(checkpoint), list(checkpoint["model"]))

model = tiny_model(seed=3)
print(model.load_state_dict(checkpoint["model"]))
assert all(torch.equal(model.state_dict()[name], full[name]) for name in full)

# %% [markdown]
# `torch_save_to_dcp` 则反过来转换，例如要从一个单文件检查点开始一次分片训练：

# %%
torch_save_to_dcp("one_file.pt", "sharded_again")
print(sorted(os.listdir("sharded_again")))

# %% [markdown]
# 不做任何转换，`dcp.load` 也能在一个进程里、不用进程组，把分片检查点直接读进一个普通模型：

# %%
from tutorials_pkg.distributed import load_sharded_into_plain_model

show_source(load_sharded_into_plain_model)

# %%
for folder in ("sharded", "sharded_again"):
    model = load_sharded_into_plain_model(folder, tiny_model(seed=4))
    same = all(torch.equal(model.state_dict()[name], full[name]) for name in full)
    print(f"{folder}: weights as saved: {same}")
    assert same

# %% [markdown]
# ## 本页的启动器：`run_on_ranks`
#
# `run_on_ranks(fn, *args)` 为每个 rank 启动一个全新的 Python 进程，设置好 `torchrun` 会设置的那些变量（端口取一个空闲端口），把各个 rank 组成一个 `gloo` 进程组（在 GPU 上用 `backend="nccl"`，或者传 `None`，让 `fn` 像 `torchrun` 脚本那样自己加入进程组），然后在每个进程里运行 `fn(rank, world_size, *args)`。它守住三个承诺，而自己写的启动器很容易在这些地方出错：
#
# - 每个 rank 先把自己的结果（或者错误和 traceback）写到一个临时文件名下，写完再改名，所以一个在写入途中被停掉的 rank 不会留下写了一半的文件：调用方拿到的是这个 rank 真正的错误，或者运行超过 `timeout_s` 时承诺的 `TimeoutError`，绝不会是一个 `EOFError`。
# - 每个 rank 运行在自己的会话（session）里，停掉一个 rank 时，它启动的所有进程（`subprocess.Popen` 启动的、fork 出来的子进程）也一并停掉，所以它们都不会比这次调用活得更久，也不会一直占着调用方的输出管道。
# - 无法传回的结果（numpy 数组、lambda）在 rank 里就被拒绝，抛出的 `TypeError` 指明是哪个 rank、结果里的哪一项，而不是在调用方抛出一个反序列化错误。
#
# ```mermaid
# sequenceDiagram
#     participant P as 本进程
#     participant R0 as rank 0
#     participant R1 as rank 1
#     P->>R0: 启动 run_rank(0, ...)
#     P->>R1: 启动 run_rank(1, ...)
#     R0-->R1: 在 MASTER_ADDR:MASTER_PORT 上 init_process_group("gloo")
#     R0->>R0: fn(0, 2, *args)
#     R1->>R1: fn(1, 2, *args)
#     R0-->>P: rank0.pt（结果或错误）
#     R1-->>P: rank1.pt（结果或错误）
#     P->>P: 停掉仍在运行的进程；返回结果或抛出异常
# ```
#
# 启动器的代码，连同它用到的所有辅助函数：

# %%
show_source(run_on_ranks)

# %% [markdown]
# spawn 出来的进程会启动一个新的解释器，并按模块和名字导入 `fn`，所以 `fn` 必须定义在某个模块的顶层。定义在 notebook 单元格里的函数，新进程找不到；与其让每个 rank 都崩溃，`run_on_ranks` 直接以 `TypeError` 拒绝它：

# %% tags=["raises-exception"] raises="TypeError"
def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# 同样的函数写在脚本里就可以用，前提是脚本把 `run_on_ranks` 的调用放在 `if __name__ == "__main__":` 之下（每个新进程都会导入这个脚本，否则它们又会各自启动一遍所有 rank）。

# %% [markdown]
# ## 实践中常见的错误
#
# ### rank 0 还没写完就去读
#
# 没有 barrier，其他 rank 不会等 rank 0，而是立刻去读。这里 rank 0 写文件前要花 30 秒（大检查点可能要写这么久），这个函数代表“在 rank 0 上保存、然后在每个 rank 上读取”的代码：

# %%
from tutorials_pkg.distributed import load_without_barrier

show_source(load_without_barrier)

# %% [markdown]
# rank 1 找不到文件，抛出 `FileNotFoundError`；启动器停掉 rank 0（不会等满那 30 秒），并抛出 `RankFailedError`，指明是哪个 rank、出了什么错：

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(load_without_barrier, "no_barrier.pt")

# %% [markdown]
# 如果同一路径上已有上一个 epoch 的检查点，同样的竞争就不会报错：rank 1 读到的是旧权重，或者一个写了一半的文件。反过来的错误是每个 rank 同时写同一个路径，得到的文件是最后写完的那一份，或者几份写入混在一起的损坏文件。修正方法就是前面的 `save_training_state`：只有 rank 0 写，`dist.barrier()` 让每个 rank 都等到文件写完，所以恢复训练时两个 rank 读到的状态相同。

# %% [markdown]
# ### 读取时不给 `map_location`
#
# 检查点为每个张量记录了它保存时所在的设备，不给 `map_location` 时，`torch.load` 会把每个张量重新创建在那个设备上。`storage_locations` 读出这些记录：

# %%
from tutorials_pkg.distributed import storage_locations

show_source(storage_locations)

# %%
print(storage_locations("run/epoch1.pt"))
unmapped = torch.load("run/epoch1.pt", weights_only=True)
assert {str(t.device) for t in unmapped["model"].values()} <= set(storage_locations("run/epoch1.pt"))

# %% [markdown]
# 我们的 rank 在 CPU 上训练，所以文件里记的是 `cpu`。从 GPU 任务保存的文件，对 rank 0 留在 GPU 上的那些张量记的是 `cuda:0`（这里是优化器的动量；权重已经收集到了 CPU 上）。在一台有 8 块 GPU 的机器上不给 `map_location` 读取，每个 rank 都会把这些张量创建在 GPU 0 上：一块 GPU 上放 8 份副本，可能显存不足，而另外七块一份都没有。在没有 GPU 的机器上，同样的读取会抛出 `RuntimeError`（“Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False”，由 `torch/serialization.py` 抛出）。像 `load_training_state` 那样给每个 rank 指定它自己的设备；用字典则只重映射字典里写到的位置，例如 `{"cuda:0": f"cuda:{local_rank}"}`。

# %% [markdown]
# ### 一个 rank 失败，其他 rank 一直等它
#
# 一个 rank 抛出异常后，其他 rank 会在下一次集合通信里等待一个永远不会来的伙伴：

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` 发现有 rank 失败，就停掉其余的 rank，并抛出 `RankFailedError`，按失败先后列出失败的 rank，以及被它停掉的 rank。rank 0 要么发现伙伴消失了（它自己的 `RuntimeError`，带着对方的地址和端口），要么在等待中被停掉；这个单元格只打印不受这一点影响的内容。（在会打印完整 traceback 的地方，比如终端里，每个 rank 自己的 traceback 也会作为这个错误的起因一并打印出来。）

# %%
import multiprocessing

from tutorials_pkg.launcher import RankFailedError

try:
    run_on_ranks(fail_on_rank)
except RankFailedError as error:
    first = next(iter(error.failures))
    print(f"first to fail: rank {first} with {error.failures[first]}")
    print("ranks that ended without a result:", sorted({*error.failures, *error.stopped}))
print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ### 只有 rank 0 走到的 barrier
#
# 集合通信必须由每个 rank 以相同的顺序调用。把 `barrier` 缩进到 `if rank == 0:` 里面就破坏了这一点：rank 0 在 barrier 里等，其他 rank 去做下一次集合通信，双方互相等待。

# %%
from tutorials_pkg.distributed import save_with_barrier_inside_if

show_source(save_with_barrier_inside_if)

# %% [markdown]
# 要等多久，取决于进程组的超时时间，默认是：

# %%
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

print("gloo:", default_pg_timeout, " nccl:", default_pg_nccl_timeout)

# %% [markdown]
# 整个集群可能白白空等半个小时。`run_on_ranks` 把 `collective_timeout_s` 传给 `init_process_group(timeout=...)`；设成 2 秒，各个 rank 很快就会放弃，运行以 `RankFailedError` 结束，错误信息说明有一个操作超时了（哪个 rank 先超时每次运行都不一样，另一个随后失去伙伴）：

# %%
try:
    run_on_ranks(save_with_barrier_inside_if, "inside_if.pt", collective_timeout_s=2)
except RankFailedError as error:
    print("a collective timed out:",
          any("Timed out waiting 2000ms" in message for message in error.failures.values()))
    print("ranks that ended without a result:", sorted({*error.failures, *error.stopped}))

# %% [markdown]
# 修正方法是把 barrier 放到 `if` 外面，让每个 rank 都走到它，就像 `save_training_state` 那样，本页里两个 rank 在每个 epoch 之后都顺利通过了它。集合通信之外的等待（一个 rank 从一直为空的队列里读、一把永远不释放的锁）不受这个超时保护；`run_on_ranks` 在 `timeout_s` 之后停止整个运行，并抛出 `TimeoutError`，指明仍在运行的 rank。
