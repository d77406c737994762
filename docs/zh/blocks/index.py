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
# # 用模型块搭建 U-Net 与 MobileNet
#
# 大型网络通常写成几个小模块（block）：每个模块是一个只含几层的 `nn.Module`，再由一个模型类把这些模块连起来。本页用这种方式搭建两个著名的网络：U-Net，它的模块之间由跳跃连接（skip connection）相连；MobileNet，它的几十层由一个遍历配置表的循环生成。两者的数字都有外部来源可以对照：一个广泛使用的 U-Net 实现给出的参数量、MobileNet 论文中的表格，以及 torchvision 自带的 MobileNet v2。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
import torch

from tutorials_pkg.runtime import default_device, describe_runtime

torch.manual_seed(0)  # the random weights and inputs below
print(describe_runtime())
device = default_device()

# %% [markdown]
# ## U-Net
#
# U-Net（Ronneberger 等，2015）为图像的每个像素给出类别。编码器（encoder）把高和宽减半四次，同时把通道数加倍；解码器（decoder）再把尺寸加倍四次，并在每个尺寸上拼接编码器同样尺寸的特征图（即**跳跃连接**），找回池化丢掉的细节。最后一个 1×1 卷积为每个像素给出每个类别的分数。下图标出 `UNet(bilinear=False)` 的通道数和每一级输出的高（宽按同样的规则变化）：
#
# ```mermaid
# block-beta
#     columns 4
#     inc["inc: DoubleConv 3→64, H"] space u4["up4: Up 128→64, H"] outc["outc: OutConv 64→n_classes, H"]
#     space:4
#     d1["down1: Down 64→128, H/2"] space u3["up3: Up 256→128, H/2"] space
#     space:4
#     d2["down2: Down 128→256, H/4"] space u2["up2: Up 512→256, H/4"] space
#     space:4
#     d3["down3: Down 256→512, H/8"] space u1["up1: Up 1024→512, H/8"] space
#     space:4
#     space d4["down4: Down 512→1024, H/16"] space:2
#     inc --> d1
#     d1 --> d2
#     d2 --> d3
#     d3 --> d4
#     d4 --> u1
#     u1 --> u2
#     u2 --> u3
#     u3 --> u4
#     u4 --> outc
#     inc -- "跳跃连接（拼接）" --> u4
#     d1 -- "跳跃连接" --> u3
#     d2 -- "跳跃连接" --> u2
#     d3 -- "跳跃连接" --> u1
# ```
#
# 结构和通道数与 [milesial/Pytorch-UNet](https://github.com/milesial/Pytorch-UNet) 相同，这是一个广泛使用的 PyTorch 实现，所以下面可以用它的数字核对我们的参数量。

# %% [markdown]
# ### 四个模块
#
# `DoubleConv` 是两个 3×3 卷积，每个后面跟着 batch norm 和 ReLU；padding 为 1，高和宽保持不变。`Down` 是一个 2×2 最大池化（奇数尺寸向下取整）加一个 `DoubleConv`。`OutConv` 是 1×1 的分类头，给每个像素的每个类别打分。`Up` 把尺寸加倍，可以用双线性插值（没有参数），也可以用可学习的 2×2 转置卷积；然后先把结果**填充**（pad）到跳跃连接的尺寸，再拼接：奇数尺寸在编码时被向下取整，加倍后回不到原来的大小，`F.pad` 补上缺的那一行或一列。
#
# ### 组装好的模型
#
# `UNet` 按通道数创建各个模块，并在 `forward` 里把它们连起来：编码器的输出 `x1` … `x4` 被保留下来，交给解码器的模块。用双线性上采样时，上采样这一步无法把通道数减半，所以最深的几个模块只建一半宽（`factor`）。`forward` 先检查输入：在任何一层运行之前，就抛出说明需要什么尺寸或通道数的 `ValueError`。下面的源代码包含四个模块和模型本身，以及它们需要的 import。（`n_channels` 或 `n_classes` 小于 1 时，`UNet` 在构建时就抛出 `ValueError`，而不是造出一个之后才出错、或者根本不输出任何类别的模型。）

# %%
from tutorials_pkg.blocks.unet import UNet
from tutorials_pkg.source import show_source

show_source(UNet)

# %% [markdown]
# ### 参数量：与 milesial/Pytorch-UNet 核对
#
# 输入 3 通道、输出 2 类时，milesial/Pytorch-UNet 的模型用转置卷积有 31,037,698 个参数，用双线性上采样有 17,263,042 个。我们的模型完全相同：

# %%
from tutorials_pkg.definition import count_parameters

unet = UNet(n_channels=3, n_classes=2, bilinear=False)
unet_bilinear = UNet(n_channels=3, n_classes=2, bilinear=True)
print(f"transposed convolution: {count_parameters(unet):,}")
print(f"bilinear upsampling:    {count_parameters(unet_bilinear):,}")
assert count_parameters(unet) == 31_037_698
assert count_parameters(unet_bilinear) == 17_263_042

# %% [markdown]
# ### 跳跃连接是拼接
#
# U-Net 的跳跃连接把编码器的特征图和解码器的特征图**拼接**起来，而不是相加。把模块的输入加到输出上，是 ResNet（He 等，2015）的**残差连接**；ResNet 的论文提出它，针对的是退化问题（更深的普通网络训练误差反而更高）。有教程说 U-Net 用残差连接解决了退化问题，是把两者混为一谈。通道数就能看出是拼接：`up4` 的第一个卷积接收 128 个通道，其中 64 个来自 `inc` 的跳跃连接，64 个来自上采样的结果；如果是相加，就仍然是 64 个。

# %%
first_conv = unet.up4.conv.double_conv[0]
print("up4 takes", first_conv.in_channels, "channels:",
      unet.inc.double_conv[3].out_channels, "(skip) +", unet.up4.up.out_channels, "(upsampled)")
assert first_conv.in_channels == unet.inc.double_conv[3].out_channels + unet.up4.up.out_channels

# %% [markdown]
# ### 每一级的输出形状
#
# torchinfo 的 `summary` 让一个输入流过模型，记录每个子模块的返回值（用前向钩子（forward hook）实现，用完即移除）；`depth=1` 只保留模型的直接子模块，也就是各级。一张 65×65 的图就能看出取整：编码器依次得到 65 → 32 → 16 → 8 → 4，解码器加倍回到 8、16、32、64，`up4` 再把 64 填充到跳跃连接的 65。torchinfo 统计的参数总数是第三个一致的数字。

# %%
from torchinfo import summary

unet = unet.eval().to(device)
stats = summary(unet, input_size=(1, 3, 65, 65), depth=1, device=device, mode="eval",
                col_names=("output_size", "num_params"), row_settings=("var_names",), verbose=0)
print(stats)
stages = [row for row in stats.summary_list if row.depth == 1]
assert [row.output_size[-1] for row in stages] == [65, 32, 16, 8, 4, 8, 16, 32, 65, 65]
assert stats.total_params == 31_037_698

# %% [markdown]
# ### 16 以上的任意尺寸，奇偶皆可
#
# 两种上采样方式的输出都与输入的高和宽相同：

# %%
unet_bilinear = unet_bilinear.eval().to(device)
with torch.no_grad():
    for size in [(16, 16), (17, 31), (33, 20)]:
        x = torch.randn(1, 3, *size, device=device)
        print(size, "->", unet(x).shape, unet_bilinear(x).shape)
        assert unet(x).shape[2:] == unet_bilinear(x).shape[2:] == size

# %% [markdown]
# 减半四次，每条边至少需要 16 个像素。更小的输入会得到一个说明所需尺寸的 `ValueError`，而不是在某个池化层深处出错（通道数不对的输入也一样）：

# %% tags=["raises-exception"] raises="ValueError"
unet(torch.randn(1, 3, 15, 40, device=device))

# %% [markdown]
# ## MobileNet
#
# MobileNet（Howard 等，2017，"MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications"）把除第一层以外的每个 3×3 卷积换成**深度可分离卷积**（depthwise separable convolution）：先是一个 3×3 的**逐通道**（depthwise）卷积，对每个通道单独滤波（`groups=in_channels`，每个通道一个 3×3 滤波器）；再是一个 1×1 的**逐点**（pointwise）卷积，把通道混合起来。两者都是一个 `BasicConv2d`：卷积、batch norm、激活。`BasicConv2d` 是 `nn.Sequential` 的子类，和 torchvision 的 `Conv2dNormActivation` 一样，所以它的层名为 `0`、`1`、`2`；`DepthwiseSeparableConv` 用 `OrderedDict` 给它的两半命名，所以某一层的权重名形如 `features.block2.depthwise.0.weight`。它们的源代码随下面的 MobileNet v1 一起给出。
#
# ### 手写的 MobileNet v1
#
# 论文的表 1 列出一个 32 通道、步长（stride）为 2 的 3×3 卷积，之后是 13 个深度可分离层。每层写一行（这里只用 `inspect.getsource` 显示这个类本身：它用来对比，而不是用来复制）：

# %%
import inspect

from tutorials_pkg.blocks.mobilenet import MobileNetV1Flat
from tutorials_pkg.source import SourceBlock

SourceBlock(inspect.getsource(MobileNetV1Flat))

# %% [markdown]
# ### 用配置表生成 MobileNet v1
#
# 这 13 行只有两个数不同：输出通道数和步长。把它们放进一张表，由循环生成各层，层名仍通过 `OrderedDict` 给出。有了循环，宽度乘子（论文中的 α）也只需改一行。应该复制的是这个版本：下面的源代码连同模块和 import 一起给出。论文表 1 在最后一个 depthwise 行印的是步长 2，而它自己的尺寸一栏仍是 7×7；配置表按尺寸取步长 1，[tensorflow/models#1997](https://github.com/tensorflow/models/issues/1997) 也指出了这一点，而且只有这样，下面数出的乘加次数才与论文一致。

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV1

show_source(MobileNetV1)

# %% [markdown]
# 训练模式下的 batch norm 要求每个通道不止一个值，而五个步长为 2 的层会把 32×32 及更小的图变成 1×1。所以只有一张这样的图的 batch，会停在第一个遇到 1×1 特征图的 batch norm 里，报的是 torch 自己的错误信息；`check_training_batch`（`MobileNetV2` 也调用它）在任何一层运行之前就拦下它，像 `UNet` 那样抛出说明该怎么改的 `ValueError`。`num_classes` 小于 1 时，模型在构建时就会被拒绝。

# %% tags=["raises-exception"] raises="ValueError"
MobileNetV1(num_classes=10).train()(torch.randn(1, 3, 32, 32))

# %% [markdown]
# ### 两个版本是同一个网络
#
# `assert_same_network` 检查三件事，遇到第一处不同就停下。层相同：按顺序比较每个子模块的名字、类型和设置（也就是 `print(model)` 显示的内容，步长也在其中）。权重的名字和形状相同：一个模型的 `state_dict` 能用 `strict=True` 加载进另一个。对同一个输入，每一层的输出都相同（用前向钩子记录）。之所以比较每一层而不只是最后一层：刚构建好的 MobileNet 处于评估模式时，batch norm 的统计量还是初始的均值 0、方差 1，而在 PyTorch 的默认初始化下，激活值一层比一层小，最终输出与分类器的偏置相差不过 1e-10，无论前面各层算了什么。

# %%
from tutorials_pkg.blocks.mobilenet import assert_same_network

show_source(assert_same_network)

# %%
loop, flat = MobileNetV1().eval(), MobileNetV1Flat().eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    out = loop(x)
print(f"output minus the classifier's bias: at most {(out[0] - loop.classifier.bias).abs().max().item():.1e}")
assert_same_network(loop, flat, x)
print(f"same network; parameters: loop {count_parameters(loop):,}, flat {count_parameters(flat):,}")
assert count_parameters(loop) == count_parameters(flat)

# %% [markdown]
# ### 与 MobileNet 论文核对
#
# `count_macs` 用 `torch.utils.flop_counter.FlopCounterMode` 统计一次前向传播的乘加次数（multiply-add，MAC）；它把每次乘加算作两次浮点运算（一次乘、一次加）：

# %%
from tutorials_pkg.blocks.mobilenet import count_macs

show_source(count_macs)

# %% [markdown]
# 论文给出 420 万（4.2 M）参数、在 224×224 下 5.69 亿（569 M）次乘加（表 1 的网络；宽度乘子和更小的输入见表 6 和表 7）：

# %%
paper = {  # (width_mult, input size): (million mult-adds, million parameters)
    (1.0, 224): (569, 4.2), (0.75, 224): (325, 2.6), (0.5, 224): (149, 1.3),
    (0.25, 224): (41, 0.5), (1.0, 192): (418, 4.2),
}
for (width_mult, size), figures in paper.items():
    model = MobileNetV1(width_mult=width_mult).eval()
    macs = count_macs(model, torch.randn(1, 3, size, size)) / 1e6
    params = count_parameters(model) / 1e6
    print(f"alpha {width_mult}, {size}x{size}: {macs:.1f} M mult-adds, {params:.2f} M parameters;"
          f" paper: {figures[0]} M, {figures[1]} M")
    assert (round(macs), round(params, 1)) == figures
assert count_parameters(loop) == 4_231_976

# %% [markdown]
# ### 与 torchvision 同名的 MobileNet v2
#
# MobileNet v2（Sandler 等，2018）用的是同样的 `BasicConv2d`，这里的激活是 ReLU6。它的模块叫**倒残差**（inverted residual）：先用 1×1 卷积扩大通道数，再做 3×3 depthwise 滤波，最后用一个不带激活的 1×1 卷积投影回去。只有当输入和输出形状相同（步长为 1 且通道数相同）时，它才把输入加到输出上。模块名与 `torchvision.models.mobilenet_v2` 一致：一个名为 `features` 的按位置命名的 `nn.Sequential`，每个模块的层放在 `conv` 里，`classifier` 由 dropout 和一个线性层组成。

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV2

show_source(MobileNetV2)

# %% [markdown]
# `state_dict` 的键就是 torchvision 的键，所以权重可以用 `strict=True` 双向加载；对同一个输入，两个模型算出的特征（分类器的输入）和输出都逐位相同。之所以连特征也比较，是因为正如上面所见，刚构建的模型的输出本身说明不了多少：

# %%
import torchvision

ours = MobileNetV2().eval().to(device)
theirs = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
print(list(ours.state_dict())[:5])
x = torch.randn(2, 3, 224, 224, device=device)
theirs.load_state_dict(ours.state_dict(), strict=True)  # ours -> torchvision
with torch.no_grad():
    assert torch.equal(ours.features(x), theirs.features(x)) and torch.equal(ours(x), theirs(x))
other = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
ours.load_state_dict(other.state_dict(), strict=True)  # torchvision -> ours
with torch.no_grad():
    assert torch.equal(ours.features(x), other.features(x)) and torch.equal(ours(x), other(x))
print("same features and output both ways")

# %% [markdown]
# 规模核对：torchvision 在权重的元数据（不需要下载）里记录这个模型有 3,504,872 个参数、0.301 G 次运算；MobileNet v2 论文给出 224×224 下 3 亿（300 M）次乘加。torchvision 的文档把这一栏标为 “GFLOPS”，但这 0.301 G 其实也是乘加次数：按浮点运算计，每次乘加是两次运算（一次乘、一次加），`FlopCounterMode` 报告的正是这个数（它给卷积的计算公式最后乘了 `* 2`），这里是 0.602 G；`count_macs` 把它除以 2。

# %%
from torch.utils.flop_counter import FlopCounterMode

meta = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta
x1 = torch.randn(1, 3, 224, 224, device=device)
macs = count_macs(ours, x1)
counter = FlopCounterMode(display=False)
with counter, torch.no_grad():
    ours(x1)
print(f"parameters: {count_parameters(ours):,} (torchvision: {meta['num_params']:,})")
print(f"mult-adds:  {macs / 1e6:.1f} M (torchvision: {meta['_ops']} G, paper: 300 M)")
print(f"FLOPs:      {counter.get_total_flops() / 1e9:.3f} G, two per mult-add")
assert count_parameters(ours) == count_parameters(theirs) == meta["num_params"] == 3_504_872
assert round(macs / 1e9, 3) == meta["_ops"] and abs(macs / 300e6 - 1) < 0.01
assert counter.get_total_flops() == 2 * macs

# %% [markdown]
# ## 实践中常见的错误
#
# ### 不对齐尺寸的 U-Net 遇到奇数尺寸就出错
#
# 一篇广为流传的 U-Net 教程算出了填充，却把结果赋给了一个新名字（`X1 = F.pad(x1, ...)`），拼接时用的仍是没填充的 `x1`：填充被白白扔掉，这个模块把上采样结果和跳跃连接原样拼接。只要编码路上每个尺寸都是偶数，这样也能运行，所以这个错误在 64×64 或 256×256 的图上测试时不会暴露。`UpWithoutAlignment` 就是带着这个错误的 `Up`，`UNetWithoutAlignment` 是用它搭建的 `UNet`：

# %%
from tutorials_pkg.blocks.unet import UNetWithoutAlignment, UpWithoutAlignment

SourceBlock(inspect.getsource(UpWithoutAlignment))

# %%
unaligned = UNetWithoutAlignment(bilinear=True).eval()
with torch.no_grad():
    print(unaligned(torch.randn(1, 3, 64, 64)).shape)

# %% [markdown]
# 遇到 65×65 的图，编码器把 65 向下取整为 32，解码器加倍得 64，`torch.cat` 拒绝把 64 行和 65 行拼在一起，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    unaligned(torch.randn(1, 3, 65, 65))

# %% [markdown]
# `Up` 把填充后的结果赋回 `x`，再拼接它：用同样权重的 `UNet` 能处理 65×65：

# %%
aligned = UNet(bilinear=True).eval()
aligned.load_state_dict(unaligned.state_dict())
with torch.no_grad():
    print(aligned(torch.randn(1, 3, 65, 65)).shape)

# %% [markdown]
# 同一篇教程用 `x1.size[2]` 读取尺寸。`size` 是方法，对方法做下标运算会抛出 `TypeError`：

# %% tags=["raises-exception"] raises="TypeError"
x1 = torch.randn(1, 64, 33, 33)
x1.size[2]

# %% [markdown]
# 要么调用它，`x1.size(2)`（`Up` 就是这样写的），要么对形状做下标，`x1.shape[2]`：

# %%
print(x1.size(2), x1.shape[2])

# %% [markdown]
# ### 忘了 `groups` 的 depthwise 卷积
#
# 漏掉 `groups=in_channels`，这一层照样能运行，输出形状也一样，所以什么都不会报错；但现在每个输出通道都要看所有输入通道，参数量（和乘加次数）变成原来的 `in_channels` 倍：

# %%
from torch import nn

depthwise = nn.Conv2d(512, 512, kernel_size=3, padding=1, groups=512, bias=False)
no_groups = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False)
x512 = torch.randn(1, 512, 14, 14)
assert depthwise(x512).shape == no_groups(x512).shape  # both run, same output shape
print(f"with groups=512: {count_parameters(depthwise):,}, without: {count_parameters(no_groups):,}")
assert count_parameters(no_groups) == 512 * count_parameters(depthwise)

# %% [markdown]
# 放到整个 MobileNet v1 上，这个错误让参数量变成约 7 倍、乘加次数变成约 8.5 倍，与论文中用普通卷积搭建的 MobileNet 相当（表 4：2930 万参数、48.66 亿次乘加），这个设计的意义也就没有了：

# %%
dense = MobileNetV1().eval()
for block in list(dense.features)[1:]:  # every DepthwiseSeparableConv
    c = block.depthwise[0]
    block.depthwise[0] = nn.Conv2d(c.in_channels, c.in_channels, 3, c.stride, 1, bias=False)
x = torch.randn(1, 3, 224, 224)
params, macs = count_parameters(dense), count_macs(dense, x)
print(f"{params:,} parameters ({params / count_parameters(loop):.1f} times), "
      f"{macs / 1e6:.0f} M mult-adds ({macs / count_macs(loop, x):.1f} times)")
assert params > 6 * count_parameters(loop) and macs > 8 * count_macs(loop, x)

# %% [markdown]
# ### 形状不同时仍然加上残差
#
# 残差连接把模块的输入加到输出上，所以两者形状必须相同。步长为 2 的倒残差模块会把高和宽减半（这里还把 16 个通道变成 24 个）：

# %%
v2 = MobileNetV2().eval()
block = v2.features[2]
x16 = torch.randn(1, 16, 56, 56)
print("use_res_connect:", block.use_res_connect)
print(tuple(x16.shape), "->", tuple(block.conv(x16).shape))

# %% [markdown]
# 硬要把输入加上去，会抛出 `RuntimeError`：56 列无法与 28 列相加。

# %% tags=["raises-exception"] raises="RuntimeError"
x16 + block.conv(x16)

# %% [markdown]
# 步长为 1 时尺寸不变，但第一个模块把 32 个通道变成 16 个，相加同样抛出 `RuntimeError`，这次是在通道维度上：

# %% tags=["raises-exception"] raises="RuntimeError"
x32 = torch.randn(1, 32, 56, 56)
x32 + v2.features[1].conv(x32)

# %% [markdown]
# 修正就是 `InvertedResidual` 的做法：在 `__init__` 里一次性判断形状是否相同（`use_res_connect`），只在相同时相加。在 MobileNet v2 的 17 个模块中，这样的模块有 10 个，与 torchvision 中的完全一致：

# %%
flags = [b.use_res_connect for b in v2.features[1:-1]]
print(sum(flags), "of", len(flags), "blocks add their input")
assert flags == [b.use_res_connect for b in theirs.features[1:-1]]
print(block(x16).shape)

# %% [markdown]
# ### 用 `+=` 搭建层的列表
#
# 用循环生成各层时，通常先把它们收集到一个列表里。对列表用 `+=`，是用右边对象里的**各个元素**扩展列表，所以单独一个层会引发 `TypeError`：`nn.Conv2d` 不是由元素组成的序列。

# %% tags=["raises-exception"] raises="TypeError"
from collections import OrderedDict

from tutorials_pkg.blocks.mobilenet import BasicConv2d, DepthwiseSeparableConv

layers = []
layers += nn.Conv2d(3, 32, 3, stride=2, padding=1)

# %% [markdown]
# 不过容器是可迭代的，所以同一行代码换成 `BasicConv2d`（一个 `nn.Sequential`）就不会报错：它把里面的三层拆开塞进列表，这三层也就不再属于原来的模块。

# %%
layers = []
layers += BasicConv2d(3, 32, 3, stride=2)
print([type(item).__name__ for item in layers])
assert len(layers) == 3

# %% [markdown]
# 右边若是一个 `(name, module)` 对，它是含两个元素的序列，于是 `+=` 悄悄把名字和模块当成两个独立的元素加进去；直到用这个列表构建 `OrderedDict` 时才出错，抛出 `ValueError`（字符串 `"stem"` 被当成一个键值对，而它有四个字符）：

# %% tags=["raises-exception"] raises="ValueError"
layers = []
layers += ("stem", BasicConv2d(3, 32, 3, stride=2))
print([type(item).__name__ for item in layers])
nn.Sequential(OrderedDict(layers))

# %% [markdown]
# 要把这一对作为一个元素加进去：用 `append`（`MobileNetV1` 就是这样做的），或者在 `+=` 右边套上一个列表：

# %%
layers = []
layers.append(("stem", BasicConv2d(3, 32, 3, stride=2)))
layers += [("block1", DepthwiseSeparableConv(32, 64, 1))]
print(list(nn.Sequential(OrderedDict(layers))._modules))

# %% [markdown]
# ### 把 MobileNet v1 “重构”成循环，得到的是另一个网络，而且两者都放不进 224×224
#
# 一篇广为流传的博客为 CIFAR 风格的训练搭了两遍 MobileNet v1：先逐层手写，再“重构”成遍历配置列表的循环，列表里单独一个数表示步长 1，元组则给出步长。两个版本的结尾都是为 32×32 图片写的代码常见的样子：固定的 `F.avg_pool2d(x, 2)`，再接 `nn.Linear(1024, num_classes)`，只适合作者设想的那一种特征图尺寸。下面是我们用本页的模块重现的这两个版本：

# %%
from tutorials_pkg.blocks.mobilenet import (
    MobileNetV1WithFixedPool,
    MobileNetV1WithFixedPoolAndLastStride1,
)

SourceBlock(inspect.getsource(MobileNetV1WithFixedPool) + "\n\n"
            + inspect.getsource(MobileNetV1WithFixedPoolAndLastStride1))

# %% [markdown]
# 手写版本和论文表 1 中印错的那一行一样，给最后一个模块步长 2；配置列表给的是步长 1。在 96×96 的图上两者都能运行，常用的几项快速检查也都通过：一个的权重能用 `strict=True` 加载进另一个（形状与步长无关），输出形状相同，输出的差别甚至不超过 1e-9，因为刚构建的模型的输出与分类器的偏置相差无几：

# %%
hand = MobileNetV1WithFixedPool().eval()
refactored = MobileNetV1WithFixedPoolAndLastStride1().eval()
refactored.load_state_dict(hand.state_dict(), strict=True)
x96 = torch.randn(2, 3, 96, 96)
with torch.no_grad():
    difference = (hand(x96) - refactored(x96)).abs().max().item()
    print(hand(x96).shape, refactored(x96).shape, f"largest difference: {difference:.1e}")
assert difference < 1e-9

# %% [markdown]
# `assert_same_network` 在差别所在的那一层找到了它：最后一个模块的 depthwise 卷积，一个步长为 2，一个为 1（抛出 `AssertionError`）：

# %% tags=["raises-exception"] raises="AssertionError"
assert_same_network(hand, refactored, x96)

# %% [markdown]
# 在 MobileNet 本来面向的 224×224 上，两者都在最后一层出错：分类器做矩阵乘法时抛出 `RuntimeError`。手写版本有六个步长为 2 的层，最后得到 4×4；池化成 2×2，就是 1024 × 2 × 2 = 4,096 个特征：

# %% tags=["raises-exception"] raises="RuntimeError"
x224 = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    hand(x224)

# %% [markdown]
# 循环版本只有五个，最后得到 7×7；用 2×2、步长 2 的窗口池化成 3×3，就是 1024 × 3 × 3 = 9,216 个特征（同样是 `RuntimeError`）：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    refactored(x224)

# %% [markdown]
# 特征数从哪里来，以及每个版本到底能接收哪些输入尺寸：`F.avg_pool2d(x, 2)` 把最后的特征图减半（向下取整），只有剩下 1×1 时分类器才得到它的 1,024 个特征，也就是最后的特征图必须是 2×2 或 3×3（1×1 的特征图根本无法池化）。手写版本能接收 65 到 192 像素，循环版本是 33 到 96：

# %%
import torch.nn.functional as F

sizes = (32, 33, 64, 65, 96, 97, 192, 193, 224)
with torch.no_grad():
    for model in (hand, refactored):
        pooled = F.avg_pool2d(model.features(x224), 2)
        last = {size: model.features(torch.zeros(1, 3, size, size)).shape[-1] for size in sizes}
        print(f"{type(model).__name__}: 224 -> {model.features(x224).shape[-1]} -> pooled "
              f"{pooled.shape[-1]}: {pooled.flatten(1).shape[1]:,} features")
        print(f"  last map side, by input size: {last}")
        print(f"  sizes that fit: {[size for size in sizes if last[size] in (2, 3)]}")
assert F.avg_pool2d(hand.features(x224), 2).flatten(1).shape[1] == 4 * 1024
assert F.avg_pool2d(refactored.features(x224), 2).flatten(1).shape[1] == 9 * 1024

# %% [markdown]
# 修正就是上面的 `MobileNetV1`：只有一张配置表，不存在需要保持一致的第二个版本（逐层写出的版本用 `assert_same_network` 与它核对过）；最后一个步长按论文的尺寸一栏取 1；再用 `nn.AdaptiveAvgPool2d(1)` 把任意大小的特征图池化成 1×1，于是无论输入多大，分类器都能得到它的 1,024 个特征：

# %%
fixed = MobileNetV1(num_classes=10).eval()
with torch.no_grad():
    print([tuple(fixed(torch.randn(1, 3, size, size)).shape) for size in (96, 224, 320)])
