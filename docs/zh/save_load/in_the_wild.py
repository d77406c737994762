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
# # 保存与读取：常见错误
#
# 这是“模型保存与读取”一章的最后一页。前几页（从[第一页](../)到[上一页](../fast_loading/)）讲的是正确的做法；本页是实践中常见的错误：每一个都先运行错误的写法，看它失败（或用断言证明它悄悄做错了），再给出改正的写法。

# %% [markdown]
# 示例沿用[第一页](../)的设置：一个在 scikit-learn 自带的 8×8 手写数字上、用同一个随机种子训练了一步的小分类器，它的 `state_dict` 存为 `weights.pt`。所有文件都写进一个新建的临时目录，并把它设为工作目录。最后打印本页运行所用的版本。

# %%
import os
import subprocess
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import digits_run
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()
os.chdir(tempfile.mkdtemp())
torch.save(model.state_dict(), "weights.pt")

print(describe_runtime())

# %% [markdown]
# ## `model.state_dict = loaded`
#
# 这一行看起来像是在加载，也不会报错。它其实是用一个字典替换了模型的 `state_dict` **方法**；权重仍然是随机的：

# %%
trained = torch.load("weights.pt")
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
# ## `torch.save(model.state_dict, path)`
#
# 少了括号，`torch.save` 拿到的是绑定方法。pickle 一个绑定方法，会把它绑定的对象一起 pickle，所以这样保存的终究还是整个模型，`torch.load` 会拒绝它，抛出 `UnpicklingError`：

# %% tags=["raises-exception"] raises="UnpicklingError"
torch.save(model.state_dict, "method.pt")
torch.load("method.pt")

# %% [markdown]
# 文件要求的全局对象说明了它装的是什么：`getattr`（用来重新查找这个方法）和模型的各个类。用 `weights_only=False` 读取（这是我们自己的文件，可以信任），得到的是模型副本的一个方法，而不是字典。改正的方法是加上括号调用它：

# %%
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("method.pt")))
assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint("method.pt")
method = torch.load("method.pt", weights_only=False)
print(type(method).__name__, type(method.__self__).__name__)
assert callable(method) and not isinstance(method, dict)

torch.save(model.state_dict(), "method.pt")  # the fix: call it
assert isinstance(torch.load("method.pt"), dict)

# %% [markdown]
# ## `.pth`：也是 Python 路径配置文件的扩展名
#
# 教程里保存成 `.pth` 和 `.pt` 的一样多，PyTorch 两者都接受。但 `.pth` 也是 Python 路径配置文件的扩展名：启动时，`site` 模块会把 `site-packages` 目录里的每个 `*.pth` 文件当作文本逐行读取（每行是一个要加入 `sys.path` 的目录，或者一行以 `import` 开头、会被执行的代码）。误存到那里的检查点（工作目录恰好是 `site-packages` 的脚本、把权重一起打包的软件包）也会被这样读取。下面在一个新建的虚拟环境里，`weights.pt` 相安无事，`weights.pth` 却让这个环境里的 Python 一个都启动不了：

# %%
import sysconfig
import venv

venv.create("env", with_pip=False, symlinks=os.name != "nt")
packages = sysconfig.get_path("purelib", vars={"base": "env", "platbase": "env"})
python = os.path.join("env", "Scripts" if os.name == "nt" else "bin", "python")
for name in ("weights.pt", "weights.pth"):
    torch.save(model.state_dict(), os.path.join(packages, name))
    started = subprocess.run([python, "-c", "print('started')"], capture_output=True, text=True)
    print(f"{name:12} exit status {started.returncode}:",
          started.stdout.strip() or started.stderr.strip().splitlines()[-1])
    os.remove(os.path.join(packages, name))

# %% [markdown]
# `.pt` 没有别的含义；本章通篇使用它。
#
# ## 用 `k[7:]` 或 `k.replace("module.", "")` 去前缀
#
# 这两种写法在抄来的代码里都很常见，也都会弄坏键名（这两种错误写法就是 `tutorials_pkg.save_load` 里的 `strip_prefix_by_slicing_every_key` 和 `strip_prefix_by_replacing_anywhere`）。`k[7:]` 从每个键上砍掉 7 个字符，所以没有前缀的检查点，每个名字都丢了开头。这里 `fc1.weight` 和 `fc2.weight` 都变成了 `ght`，一个悄悄覆盖了另一个：进去 4 个张量，出来 2 个。

# %%
from tutorials_pkg.save_load import (
    strip_prefix, strip_prefix_by_replacing_anywhere, strip_prefix_by_slicing_every_key,
    strip_prefix_with_a_misspelt_name,
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
# 有篇教程写成了拼错的 `replace("modeule.", "")`：它匹配不到任何键，所以什么也没去掉，也不吭一声；再加上 `strict=False`，每个键同时既是缺失的又是多余的，整个模型都保留随机权重：

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_with_a_misspelt_name(saved), strict=False)
print(list(strip_prefix_with_a_misspelt_name(saved))[:2])
print(len(result.missing_keys), "missing,", len(result.unexpected_keys), "unexpected")
assert len(result.missing_keys) == len(net.state_dict())

# %% [markdown]
# `strip_prefix`（即 torch 的 `consume_prefix_in_state_dict_if_present`，源码见[`load_checkpoint` 一节](../loading/#读取检查点load_checkpoint)）只去掉键开头的前缀。前缀按完整的名字计，所以 `"module"` 和 `"module."` 是一样的：

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert list(strip_prefix(saved, "module")) == list(strip_prefix(saved))
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ## 用 `best = model.state_dict()` 保存最佳权重
#
# `state_dict()` 不做复制：它的张量**就是**模型的参数（指向同一块内存的 detach 视图）。把它当作“目前最好的”留着，它会随着训练继续变化：

# %%
from tutorials_pkg.digits import train_epoch

run = digits_run(seed=0)
best = run.model.state_dict()
best_at_that_time = best["fc1.weight"].clone()
train_epoch(run.model, run.optimizer, x, y, run.generator)
assert torch.equal(best["fc1.weight"], run.model.fc1.weight)  # follows the model
assert not torch.equal(best["fc1.weight"], best_at_that_time)  # no longer what was "best"
print("the saved 'best' weights moved with training")

# %% [markdown]
# 要复制一份：用 `copy.deepcopy(model.state_dict())`，或者逐个张量 clone：

# %%
from tutorials_pkg.save_load import copy_state_dict

show_source(copy_state_dict)

# %%
best = copy_state_dict(run.model)
best_at_that_time = best["fc1.weight"].clone()
train_epoch(run.model, run.optimizer, x, y, run.generator)
assert torch.equal(best["fc1.weight"], best_at_that_time)
assert not torch.equal(best["fc1.weight"], run.model.fc1.weight)
print("the copy kept the weights it was taken with")
