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
# # Feature maps of a digits CNN
#
# Intermediate outputs are also something to look at. This page, after [Layer
# inputs, gradients and cost](../inputs_and_gradients/), takes the feature
# maps of a small CNN with `by_hooks` from the chapter's [first
# page](../#4-forward-hooks-by_hooks) and draws them.

# %%
import torch
from tutorials_pkg.intermediate import by_hooks
from tutorials_pkg.source import show_source

# %% [markdown]
# ## The model: a small CNN
#
# The model is a tiny CNN, trained for a few seconds on scikit-learn's
# bundled 8×8 handwritten digits (real data: 1,797 images, a quarter kept for
# testing):

# %%
from tutorials_pkg.digits import DigitsCNN, accuracy

show_source(DigitsCNN)

# %% [markdown]
# ## Training it on the digits
#
# Fifteen epochs from a fixed seed, with the batches in a fixed order, then the
# accuracy on the test quarter:

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
# ## The feature maps of `relu1` and `relu2`
#
# `relu1` (8 channels at 8×8) and `relu2` (16 channels at 4×4) for one test
# image, taken with hooks and drawn by `plot_feature_maps`: the first layer
# responds to strokes and edges, the second combines them at a lower
# resolution (some of its channels stay at zero for this digit).
# `svg_figure` puts the figure in the page as SVG, sharp at any zoom, and
# names it by the caption under it.

# %%
from tutorials_pkg.intermediate import plot_feature_maps, svg_figure

maps = by_hooks(cnn, x_test[:1], ["relu1", "relu2"])
print("label", y_test[0].item(), "predicted", cnn(x_test[:1]).argmax().item())
figure = plot_feature_maps(x_test[0], {name: m[0] for name, m in maps.items()})
svg_figure(figure, labelled_by="feature-maps-caption")

# %% [markdown]
# <p id="feature-maps-caption">Figure: one test digit, x (top left), then the 8
# feature maps of relu1 (8×8 each) and the 16 feature maps of relu2 (4×4
# each) that the trained CNN computes for it; each map has its own colour
# scale, brighter meaning a larger activation.</p>
