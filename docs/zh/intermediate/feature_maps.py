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
# # 手写数字 CNN 的特征图
#
# 中间层输出也值得看一看。本页接在[中间层的输入、梯度与代价](../inputs_and_gradients/)之后，用本章[第一页](../#4-前向钩子by_hooks)讲的 `by_hooks` 取出一个小 CNN 的特征图，画出来。

# %%
import torch
from tutorials_pkg.intermediate import by_hooks
from tutorials_pkg.source import show_source

# %% [markdown]
# ## 模型：一个小 CNN
#
# 模型是一个很小的 CNN，用 scikit-learn 自带的 8×8 手写数字训练几秒（真实数据：1,797 张图，四分之一留作测试）：

# %%
from tutorials_pkg.digits import DigitsCNN, accuracy

show_source(DigitsCNN)

# %% [markdown]
# ## 在手写数字上训练
#
# 从固定的随机种子开始，按固定的批量顺序训练 15 轮，然后看它在留作测试的四分之一上的准确率：

# %%
from tutorials_pkg.digits import load_digits_tensors, split_train_test, train_epoch

x_train, y_train, x_test, y_test = split_train_test(*load_digits_tensors(), test_fraction=0.25)
torch.manual_seed(0)
cnn = DigitsCNN()
optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-2)
order = torch.Generator().manual_seed(0)  # the order of the batches
losses = [train_epoch(cnn, optimizer, x_train, y_train, order) for _ in range(15)]
cnn.eval()
test_accuracy = accuracy(cnn, x_test, y_test)
print(f"{len(x_train)} training, {len(x_test)} test images; loss {losses[0]:.3f} -> "
      f"{losses[-1]:.3f}; test accuracy {test_accuracy:.1%}")
assert test_accuracy > 0.9

# %% [markdown]
# ## `relu1` 与 `relu2` 的特征图
#
# 一张测试图在 `relu1`（8 个通道，8×8）和 `relu2`（16 个通道，4×4）的输出，用钩子取得，由 `plot_feature_maps` 画出：第一层对笔画和边缘有响应，第二层在更低分辨率上组合它们（对这个数字，有些通道一直是零）。`svg_figure` 把图以 SVG 放进页面，任意缩放都清晰，并用图下的说明文字为它命名。

# %%
from tutorials_pkg.intermediate import plot_feature_maps, svg_figure

maps = by_hooks(cnn, x_test[:1], ["relu1", "relu2"])
print("label", y_test[0].item(), "predicted", cnn(x_test[:1]).argmax().item())
figure = plot_feature_maps(x_test[0], {name: m[0] for name, m in maps.items()})
svg_figure(figure, labelled_by="feature-maps-caption")

# %% [markdown]
# <p id="feature-maps-caption">图：一张测试数字 x（左上），以及训练好的 CNN 为它算出的 relu1 的 8 张特征图（每张 8×8）和 relu2 的 16 张特征图（每张 4×4）；每张图各用自己的色标，越亮表示激活值越大。</p>
