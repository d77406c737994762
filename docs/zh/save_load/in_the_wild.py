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
# 这是「模型保存与读取」一章的最后一页。前几页（从[第一页](../)到[上一页](../fast_loading/)）讲的是正确的做法；本页是实践中常见的错误：每一个都先运行错误的写法，看它失败（或用断言证明它悄悄做错了），再给出改正的写法。

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
from tutorials_pkg.save_load import NotACheckpointError, digits_run, load_checkpoint
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
# 一篇流传很广的教程就用这种方式把 ResNet-152 的权重「加载」进 ResNet-50。两个网络的块数不同，赋值却什么错也不报，错误就这样藏了下来：

# %%
from torchvision.models import resnet50, resnet152

with torch.device("meta"):  # names and shapes only: nothing is allocated
    weights152, model50 = resnet152().state_dict(), resnet50()
model50.state_dict = weights152  # no error, though the networks differ
print(len(weights152), "entries 'loaded' into a model that has", len(resnet50().state_dict()))

# %% [markdown]
# 真正的加载会拒绝它：`load_checkpoint` 抛出 `CheckpointMismatchError`，列出 ResNet-152 多出来的块（`load_state_dict` 则抛出 `RuntimeError`）：

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
torch.save(weights152, "resnet152.pt")  # meta tensors: a file of names and shapes
with torch.device("meta"):
    model50 = resnet50()
load_checkpoint("resnet152.pt", model50)

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
# 文件名同样说明不了文件里装的是什么。有篇讲多卡的教程把「权重」存进一个形如 `...-dict` 的文件，代码存的却是整个 `DataParallel` 模型；不加载文件、只读出它要求的全局对象，就能看出里面是一个 pickle 的模型（用[第一页](../#把整个模型-pickle-下来的旧文件)的 `convert_to_state_dicts` 转换一次即可）：

# %%
torch.save(nn.DataParallel(model), "digits-dict.pt")  # a "weights" file that holds the model
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("digits-dict.pt")))

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
# 教程用的第三种扩展名 `.pkl` 承诺的又是另一回事：一个 `pickle.load` 能读的 pickle。`torch.save` 写的是 zip 文件，`pickle.load` 读不了（`UnpicklingError`）；而 `pickle.dump` 写的文件也不是检查点，`load_checkpoint` 会直说（`NotACheckpointError`），而不是去执行它的 pickle：

# %%
import pickle

torch.save(model.state_dict(), "weights.pkl")
try:
    with open("weights.pkl", "rb") as file:
        pickle.load(file)
except pickle.UnpicklingError as error:
    print("pickle.load:", type(error).__name__, str(error).splitlines()[0])

with open("pickled.pkl", "wb") as file:
    pickle.dump({"fc1.bias": [0.0] * 32}, file)
try:
    load_checkpoint("pickled.pkl", digits_classifier())
except NotACheckpointError as error:
    print("load_checkpoint:", type(error).__name__, str(error).split(":")[0])

# %% [markdown]
# `.pt` 没有别的含义；本章通篇使用它。
#
# ## 不带括号的 `model.cuda`
#
# 复制来的代码里有时会有一行 `model.cuda`：它只是取出这个方法然后丢掉，什么都没有移动，也没有任何提示；即使在没有 GPU、真调用就会失败的机器上也是如此：

# %%
from tutorials_pkg.runtime import default_device

net = digits_classifier()
net.cuda  # no parentheses: an attribute looked up and thrown away, on any machine
print("after net.cuda:", net.fc1.weight.device)
assert net.fc1.weight.device.type == "cpu"
net = net.to(default_device())  # the fix: a call (.cuda() needs a GPU; .to(device) runs anywhere)
print("after net.to(device):", net.fc1.weight.device)

# %% [markdown]
# ## 加载之后才包上 `DataParallel(model)`
#
# 为了读取从 `DataParallel` 保存的检查点（键为 `module.fc1.weight` 等），有篇教程先构建普通模型、加载，然后再包装。加载时面对的是普通模型的键（`fc1.weight`），于是抛出 `RuntimeError`：本可以让键对上的包装晚了一行：

# %% tags=["raises-exception"] raises="RuntimeError"
torch.save(nn.DataParallel(model).state_dict(), "dp.pt")  # keys: module.fc1.weight, ...
loaded = digits_classifier()
loaded.load_state_dict(torch.load("dp.pt"))  # the keys do not fit the plain model
loaded = nn.DataParallel(loaded)  # wrapped too late

# %% [markdown]
# 先包装（或者让 [`load_checkpoint`](../loading/) 去掉前缀）：

# %%
loaded = nn.DataParallel(digits_classifier())  # wrap first: then the keys fit
loaded.load_state_dict(torch.load("dp.pt"))
assert torch.equal(loaded.module.fc1.weight, model.fc1.weight)

# %% [markdown]
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
# `load_state_dict` 会拒绝这些键，而常见的「修复」`strict=False`，把错误变成了一个 encoder 悄悄保留随机权重的模型：

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_by_replacing_anywhere(saved), strict=False)
print("missing:", result.missing_keys)
assert not torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# 有篇教程写成了拼错的 `replace("modeule.", "")`：它匹配不到任何键，所以什么也没去掉。在默认的 `strict=True` 下，这会大声失败：`load_state_dict` 抛出 `RuntimeError`，把每个键都列为缺失和多余：

# %% tags=["raises-exception"] raises="RuntimeError"
net = encoder_net()
net.load_state_dict(strip_prefix_with_a_misspelt_name(saved))  # strict=True, the default

# %% [markdown]
# 只有加上 `strict=False` 才会悄无声息：每个键同时既是缺失的又是多余的，整个模型都保留随机权重：

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_with_a_misspelt_name(saved), strict=False)
print(list(strip_prefix_with_a_misspelt_name(saved))[:2])
print(len(result.missing_keys), "missing,", len(result.unexpected_keys), "unexpected")
assert len(result.missing_keys) == len(net.state_dict())

# %% [markdown]
# `strip_prefix`（即 torch 的 `consume_prefix_in_state_dict_if_present`，由[`load_checkpoint` 一节]中的代码调用(../loading/#读取检查点load_checkpoint)）只去掉键开头的前缀。前缀按完整的名字计，所以 `"module"` 和 `"module."` 是一样的：

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert list(strip_prefix(saved, "module")) == list(strip_prefix(saved))
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ## 用 `best = model.state_dict()` 保存最佳权重
#
# `state_dict()` 不做复制：它的张量**就是**模型的参数（指向同一块内存的 detach 视图）。把它当作「目前最好的」留着，它会随着训练继续变化：

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
