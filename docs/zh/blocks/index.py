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
# # 用块搭建 U-Net 与 MobileNet
#
# 大型网络通常写成几个小的块（block）：每个块是一个只含几层的 `nn.Module`，再由一个模型类把这些块连起来。本章用这种方式搭建两个著名的网络：U-Net，它的块之间由跳跃连接（skip connection）相连；MobileNet，它的几十层由一个遍历配置表的循环生成。两者的数字都有外部来源可以对照：一个广泛使用的 U-Net 实现给出的参数量、MobileNet 论文中的表格，以及 torchvision 自带的 MobileNet v2。本章分为三页：
#
# - U-Net，就在本页：四个块和把它们连起来的模型，输入尺寸只要不小于 16，奇偶皆可。
# - [MobileNet v1 与 v2](mobilenet/)：逐层手写和用配置表生成的 v1，与论文核对；与 torchvision 同名、可互换权重的 v2。
# - [用块搭建网络：实践中常见的错误](in_the_wild/)：广为流传的 U-Net 与 MobileNet 代码中的错误，先看它们出错，再看修正。
#
# 本章的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

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
# ### 四个块
#
# `DoubleConv` 是两个 3×3 卷积，每个后面跟着 BatchNorm 和 ReLU；padding 为 1，高和宽保持不变。`Down` 是一个 2×2 最大池化（奇数尺寸向下取整）加一个 `DoubleConv`。`OutConv` 是 1×1 的分类头，给每个像素的每个类别打分。`Up` 把尺寸加倍，可以用双线性插值（没有参数），也可以用可学习的 2×2 转置卷积；然后先把结果**填充**（pad）到跳跃连接的尺寸，再拼接：奇数尺寸在编码时被向下取整，加倍后回不到原来的大小，`F.pad` 补上缺的那一行或一列。
#
# ### 组装好的模型
#
# `UNet` 按通道数创建各个块，并在 `forward` 里把它们连起来：编码器的输出 `x1` … `x4` 被保留下来，交给解码器的块。用双线性上采样时，上采样这一步无法把通道数减半，所以最深的几个块只建一半宽（`factor`）。在任何一层运行之前，`forward` 先把输入交给 `check_unet_input`：输入合乎要求时原样返回；不合要求时抛出 `ValueError`，说明需要什么尺寸或通道数。这个检查写成一个用 `torch.fx.wrap` 装饰的函数，而不是 `forward` 里的 `if`：`torch.fx`（torchvision 的 `create_feature_extractor` 就建立在它之上）用不知道尺寸的占位值追踪 `forward`，对尺寸的 `if` 会让追踪中断；被 wrap 的函数则被记成一次调用，遇到真实输入时照常运行。下面的源代码包含四个块、这个检查和模型本身，以及它们需要的 import。（`n_channels` 或 `n_classes` 小于 1 时，`UNet` 在构建时就抛出 `ValueError`：如果是 0，torch 会照样把模型建出来，直到运行时才出错，报的是一个大小为 0 的权重。）

# %%
from tutorials_pkg.blocks.unet import UNet
from tutorials_pkg.source import show_source

show_source(UNet)

# %% [markdown]
# ### 参数量：与 milesial/Pytorch-UNet 核对
#
# 输入 3 通道、输出 2 类时，milesial/Pytorch-UNet 的模型用转置卷积有 31,037,698 个参数，用双线性上采样有 17,263,042 个。我们的模型参数量与之相同：

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
# U-Net 的跳跃连接把编码器的特征图和解码器的特征图**拼接**起来，而不是相加。把块的输入加到输出上，是 ResNet（He 等，2015）的**残差连接**；ResNet 的论文提出它，针对的是退化问题（更深的普通网络训练误差反而更高）。有教程说 U-Net 用残差连接解决了退化问题，是把两者混为一谈。通道数就能看出是拼接：`up4` 的第一个卷积接收 128 个通道，其中 64 个来自 `inc` 的跳跃连接，64 个来自上采样的结果；如果是相加，就仍然是 64 个。

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
# 减半四次，每条边至少需要 16 个像素。输入更小时，模型抛出 `ValueError` 并说明所需的尺寸，而不是在某个池化层深处出错（通道数不对的输入也一样）：

# %% tags=["raises-exception"] raises="ValueError"
unet(torch.randn(1, 3, 15, 40, device=device))

# %% [markdown]
# 训练模式下，BatchNorm 要求每个通道不止一个值。一个批量只有一张图、而且两条边都小于 32 时，U 的底部只剩 1×1 的特征图，torch 的 `BatchNorm2d` 会自己指出这一点，抛出 `ValueError`：

# %% tags=["raises-exception"] raises="ValueError"
unet_bilinear.train()(torch.randn(1, 3, 16, 16, device=device))

# %% [markdown]
# 两张图的批量在训练模式下可以运行，一张图在评估模式下也可以：

# %%
print(unet_bilinear(torch.randn(2, 3, 16, 16, device=device)).shape)
with torch.no_grad():
    print(unet_bilinear.eval()(torch.randn(1, 3, 16, 16, device=device)).shape)

# %% [markdown]
# ### 用 `create_feature_extractor` 取中间层输出
#
# 输入检查只是一次被记录的调用，所以 torch.fx 能追踪整个模型：`get_graph_node_names` 列出所有节点（检查是输入之后的第二个），`create_feature_extractor` 返回所要的各级输出，这里是 U 的底部和最后一层，后者与模型的输出相同。

# %%
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

train_nodes, eval_nodes = get_graph_node_names(unet_bilinear)
print(len(eval_nodes), "nodes:", eval_nodes[:3], "...", eval_nodes[-2:])
extractor = create_feature_extractor(unet_bilinear, {"down4": "bottom", "outc": "out"})
x = torch.randn(1, 3, 33, 20, device=device)
with torch.no_grad():
    features = extractor(x)
    print({name: tuple(t.shape) for name, t in features.items()})
    assert eval_nodes[1] == "check_unet_input"
    assert torch.equal(features["out"], unet_bilinear(x))

# %% [markdown]
# 只含前几层的图也保留着这个检查，因为这几层的输入就是它的返回值，所以输入太小时，这里同样抛出 `ValueError`：

# %% tags=["raises-exception"] raises="ValueError"
early = create_feature_extractor(unet_bilinear, ["down2"])
early(torch.randn(1, 3, 8, 8, device=device))
