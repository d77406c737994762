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
# # 模型结构概览（summary）
#
# `print(model)` 展示模型是怎样**搭建**的；summary 展示模型**运行**时发生了什么：每一层看到的形状、它的参数，以及总数。做法是在每个模块上挂一个钩子（hook），再跑一次前向传播。道理不难，细节却容易出错：流行的 `torchsummary` 包遇到一类常见的模型，会把某些层打印两遍。本章复现这个问题，改好问题背后的模型，再实现一个 summary：每个模块只列一次，每个参数只数一次，运行之后模型和原来完全一样。
#
# 本章分三页：
#
# - 本页：torchsummary 的重复计数及其原因，要改的模型，每个模块只数一次的 summary 的核心，以及 `summary` 接收什么；
# - [真实模型上的 summary](real_models/)：用 torchinfo 核对 ResNet-18，检测模型，共享的权重，并非无用权重的 `not called`，内存估计，以及 summary 不改变模型；
# - [模型结构概览：常见错误](in_the_wild/)：`Sequential` 的切片、训练模式下的 summary、只有 `model.eval()` 没有切换回去、太小的输入、torchsummary 遇到元组和类别 token 等。
#
# 本页的每一段输出，都是构建网站时实际运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## torchsummary 的重复计数
#
# 一个流传很广的 `torchsummary` 问答里，模型是这样写的：先建一个 resnet18，存成 `self.base_model`，再把它的前三层（`conv1`、`bn1`、`relu`）放进一个叫 `layer0` 的 `Sequential`。`forward` 只用 `layer0`。

# %%
from tutorials_pkg.demo_models import ResNet18StemKeepingBaseModel
from tutorials_pkg.source import show_source

show_source(ResNet18StemKeepingBaseModel)

# %% [markdown]
# `torchsummary` 1.5.1（PyPI 上的最后一个版本）把这三层各打印两次，总参数量也把它们加了两遍：`forward` 实际用到 9,536 个参数，它报 19,072 个。

# %%
import contextlib
import io
import re

import torch
from torch import nn
from torchsummary import summary as torchsummary_summary

torch.manual_seed(0)
kept = ResNet18StemKeepingBaseModel()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(kept, (3, 32, 32), device="cpu")
print(printed.getvalue())

total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
used = sum(p.numel() for p in kept.layer0.parameters())
assert reported == 2 * used == 19_072  # conv1, bn1 and relu hooked once per parent

# %% [markdown]
# ### 原因：`model.apply` 对每个父模块各访问一次
#
# `torchsummary` 用 `model.apply(register_hook)` 注册钩子。`Module.apply` 递归地对每个子模块调用这个函数，而 `children()` 只在**同一个父模块之内**跳过重复的模块。`conv1`、`bn1` 和 `relu` 有两个父模块（`base_model` 和 `layer0`），所以 `apply` 会各走到它们两次。每访问一次就多注册一个前向钩子；前向传播时每个钩子都会触发，每次都添加一行，并把这一层的 `weight` 和 `bias` 加进总数。相比之下，`model.modules()` 和 `model.named_modules()` 会记住已经见过的模块，每个模块只给一次：

# %%
visits = []
kept.apply(lambda module: visits.append(type(module).__name__))
print("apply visits Conv2d:   ", visits.count("Conv2d"), "times")
print("modules() gives Conv2d:", sum(isinstance(m, nn.Conv2d) for m in kept.modules()), "times")
assert visits.count("Conv2d") == 20 + 1  # resnet18 has 20 convolutions; conv1 a second time

# %% [markdown]
# 有一个回答改的是工具：它贴出一份改过的 torchsummary `summary`，跳过已经挂过钩子的模块。照原样抄下来，那段代码连语法检查都过不了（`SyntaxError`），所以下面用几行自己的代码演示同一个思路。`apply` 仍然会两次走到 `conv1`、`bn1` 和 `relu`，但第二次什么也不注册，每一层只出一行：

# %%
def hooked_layers(model, x, skip_hooked):
    """The layer names a torchsummary-style loop records in one forward pass."""
    hooked, rows, handles = set(), [], []

    def register(module):
        if skip_hooked and module in hooked:
            return  # apply reached it through a second parent: hooked already
        hooked.add(module)
        if not list(module.children()):  # leaves only, as torchsummary's rows
            handles.append(module.register_forward_hook(
                lambda m, args, output: rows.append(type(m).__name__)))

    model.apply(register)
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return rows


x = torch.randn(1, 3, 32, 32)
print("a hook at every visit:", hooked_layers(kept.eval(), x, skip_hooked=False))
print("skip what is hooked:  ", hooked_layers(kept, x, skip_hooked=True))
assert hooked_layers(kept, x, skip_hooked=True) == ["Conv2d", "BatchNorm2d", "ReLU"]

# %% [markdown]
# ## 要改的是模型，而不只是工具
#
# 这样改好的是报告。模型本身的问题更大：`self.base_model = ...` 把整个 resnet18 都**注册**进了模型。它的 11,689,512 个参数都在 `parameters()` 里，优化器会拿到全部参数；它的 122 个 `state_dict` 条目每次保存检查点都会写进去，旁边还有 `layer0` 对同样三层的 6 个条目。我们自己的 summary（下一节）用一张表就能看出问题：`base_model` 占了几乎全部参数，却是 `not called`；除了 `layer0` 运行的 9,536 个参数，其余参数全都没有用到：前向传播中没有任何运算读过它们。（`layer0` 的三层计在最先注册它们的地方，也就是 `base_model` 里，所以 `layer0` 自己那一行显示 `--`。）

# %%
from tutorials_pkg.summary import summary

diagnosis = summary(kept, input_size=(1, 3, 32, 32))
print(diagnosis.table(max_depth=1))
rows = {row.name: row for row in diagnosis.rows}
assert rows["base_model"].calls == 0 and diagnosis.total_params == 11_689_512
assert diagnosis.unused_params == 11_689_512 - used
print("state_dict entries:", len(kept.state_dict()))
assert len(kept.state_dict()) == 128

# %% [markdown]
# 改法是把 `base_model` 放在局部变量里：`layer0` 持有的三层仍然注册在模型中，resnet18 的其余部分在 `__init__` 返回后就被回收了。

# %%
from tutorials_pkg.demo_models import ResNet18Stem

show_source(ResNet18Stem)

# %%
fixed_stem = ResNet18Stem()
print(summary(fixed_stem, input_size=(1, 3, 32, 32)).table(max_depth=1))
print(sorted(fixed_stem.state_dict()))
assert sum(p.numel() for p in fixed_stem.parameters()) == used == 9_536
assert len(fixed_stem.state_dict()) == 6

# %% [markdown]
# 在 `DistributedDataParallel` 下，用不到的参数就不只是浪费，而是错误：DDP 要等每个参数的梯度，第二个训练步会抛出 `RuntimeError`，提示传入 `find_unused_parameters=True`（这只会把问题掩盖起来，而且每一步都要多花时间）。一个进程就能看到这个错误：

# %% tags=["raises-exception"] raises="RuntimeError"
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18StemKeepingBaseModel())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()

# %% [markdown]
# 改好的模型不需要这个参数，在 DDP 下可以正常训练：

# %%
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18Stem())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()
print("two steps, no unused parameters")

# %% [markdown]
# ### torchsummary 的默认值：`device="cuda"`，输入不带批量维
#
# 调用 `torchsummary` 之前还要知道两件事。它的 `device` 默认是 `"cuda"`：有 CUDA 时，它在 GPU 上生成随机输入，模型如果还留在 CPU 上就会出错（没有 CUDA 时，它不声不响地改用 CPU）。它的 `input_size` **不带**批量维：它自己生成一个大小为 2 的批量（`torch.rand(2, *input_size)`），打印时把批量大小写成 `-1`。`torchinfo` 和下面的 summary 接收的都是**带** 批量维的形状。

# %%
import inspect

print(inspect.signature(torchsummary_summary))

# %% [markdown]
# 如果像 `torchinfo` 那样给出带批量维的形状，`torchsummary` 会再加一个批量维，第一个卷积就抛出 `RuntimeError`，说输入是 5 维的：

# %% tags=["raises-exception"] raises="RuntimeError"
torchsummary_summary(ResNet18Stem(), (1, 3, 32, 32), device="cpu")

# %% [markdown]
# ## 每个模块只数一次的 summary
#
# summary 要做两件事：跑一次前向传播，每个模块上挂一个钩子；再数参数，每个参数只算给一个模块。`hooked_forward` 就是这个核心，`summary` 调用的正是它：
#
# - `named_modules()` 给出每个模块一次，用的是它第一次注册时的名字，所以每个模块只挂一个钩子（`model.apply` 会按父模块的个数给 `conv1` 挂上几次）；
# - 钩子统计调用次数（在 `forward` 里被调用两次的模块会被标出），并记下第一次调用的形状，以关键字参数传入的输入（`attn(query=x, key=x, value=x)`）也不例外：参数中的每个张量换成它的形状，其他值原样保留；
# - 钩子在 `finally` 里移除，所以前向传播失败时也会移除；
# - 调用结束后，每个模块分到此前没有模块拥有的参数，所以各模块的参数加起来正好等于 `sum(p.numel() for p in model.parameters())`，共享（tied）的权重和模型自身的参数也不例外。在调用**之后**数参数，惰性模块（`nn.LazyLinear`）也能数对：它们在第一次调用时才创建参数。

# %%
from tutorials_pkg.summary import hooked_forward

show_source(hooked_forward)

# %% [markdown]
# 它可以单独运行。用在问答里的模型上：每个模块只出现一次，`conv1` 虽然有两个名字，也只被调用一次，每个参数只数一次：

# %%
records = hooked_forward(kept, torch.randn(1, 3, 32, 32))
for module, record in list(records.items())[:4]:
    print(f"{record['name'] or '(model)':18} calls={record['calls']}  "
          f"params={sum(p.numel() for p in record['params'].values()):,}")
unique = sum(p.numel() for record in records.values() for p in record["params"].values())
assert unique == sum(p.numel() for p in kept.parameters()) == 11_689_512

# %% [markdown]
# `summary` 调用 `hooked_forward`；文件里其余的代码（代码块上方的文件名链接到 `tutorials_pkg/summary.py`）让它能处理读者带来的各种模型：生成输入；在评估模式、`torch.no_grad()` 下运行，结束后每个模块恢复各自原来的模式；拒绝 TorchScript；让编译过的子模块以 eager 方式运行；出错时注明错误来自哪一层；区分没有用到的权重和模块虽未被调用、权重却被用到的情况；最后打印表格和内存估计。
#
# ## `summary` 接收什么
#
# `summary(model, input_size=None, input_data=None, input_kwargs=None)`：
#
# - `model`：一个 `nn.Module`；被 `torch.compile`、`DataParallel` 或 DDP 包装过的模型，按里面的模块统计；惰性模块和编译过的子模块都可以。TorchScript（`torch.jit.script`、`torch.jit.trace`）不接受钩子：这时会抛出 `TypeError`，提示传入脚本化之前的模块。
# - `input_size`：**包含**批量维的形状（与 `torchinfo` 相同），或者一组形状，每个位置参数一个：在模型所在的设备上、按模型的 dtype 生成随机张量。
# - `input_data`：一个张量，或者一个元组，按 `forward` 接收的样子放入各个位置参数：图像列表、字典、字符串、`None` 都可以，其中的张量无论在哪一层都能找到。单独传一个列表或字典会被拒绝，因为它既可能是全部参数，也可能是一个参数：请写成 `(images,)`。
# - `input_kwargs`：传给 `forward` 的关键字参数，可以和上面任意一种输入一起用，也可以单独用。
#
# 同时传入 `input_size` 和 `input_data` 会抛出 `ValueError`（否则其中一个会被悄悄忽略）。下面的模型接收一个批量字典，里面有一个字符串，还有一个只能按关键字传入的 mask：

# %%
class MaskedClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, batch, *, mask):
        return self.fc(batch["features"] * mask)


batch = {"features": torch.randn(2, 8), "label": "cat"}
masked = summary(MaskedClassifier(), input_data=(batch,), input_kwargs={"mask": torch.ones(8)})
print(masked)
assert masked.input_shape == [{"features": [2, 8], "label": "cat"}, {"mask": [8]}]

# %% [markdown]
# ### 钩子与 `torch.compile`
#
# 在编译后的模型第一次调用**之前**注册的钩子会触发，前提是同一个类的模型此前没有在没有钩子的情况下编译过（编译出的代码只在模块编译时已经有钩子的地方检查钩子，[获取中间层输出一章](../intermediate/)演示了这种漏掉的情况）。在第一次调用**之后**才加的钩子不会触发：之后的调用复用的编译代码是在没有它的时候生成的。

# %%
fired = []
early = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
early[0].register_forward_hook(lambda *args: fired.append("registered before"))
torch.compile(early, backend="eager")(torch.randn(2, 3))

late = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
compiled = torch.compile(late, backend="eager")
compiled(torch.randn(2, 3))
late[0].register_forward_hook(lambda *args: fired.append("registered after"))
compiled(torch.randn(2, 3))
print(fired)
assert fired == ["registered before"]

# %% [markdown]
# `summary` 的钩子是后加的，所以它通过编译后的模型所包装的模块（`_orig_mod`）来统计；编译过的子模块则用 `torch.compiler.set_stance("force_eager")` 运行，这样执行的是它们的 Python 代码，钩子也会触发。编译的那部分里每一层都被调用了：

# %%
with_compiled_part = nn.Sequential(compiled, nn.Linear(4, 2))
rows = summary(with_compiled_part, input_size=(2, 3)).rows
print([(row.name, row.calls) for row in rows])
assert all(row.calls == 1 for row in rows)

# %% [markdown]
# 各行也是数据：`name`、`type`、`input_shape`、`output_shape`、`params`、`trainable_params`、`unused_params`、`calls`（以及 `calls > 1` 时为真的 `reused`）、`aliases`、`note`。问答里那个模型的第一层注册在两个名字下：

# %%
conv_row = diagnosis.rows[2]
print(conv_row)
print("reused:", conv_row.reused)

# %% [markdown]
# `str(result)` 是完整的表；上面用到的 `result.table(max_depth=1)` 只显示到指定深度，这时显示出来的每一行都把它下面被隐藏的行的参数算在自己身上。
