"""summary and grad_fn_modules on a slice of torchvision's zoo: one or two models per family.

The same models, inputs and builders as ``python -m benchmarks.zoo``, which runs every model.
"""

import pytest
import torch
from torch import nn

from benchmarks.zoo import build, example_args, family_of
from handbook_tools import assert_state_unchanged, model_state, no_hooks_left
from tutorials_pkg.definition import count_parameters
from tutorials_pkg.grad_fn import grad_fn_modules
from tutorials_pkg.summary import summary

SLICE = {
    "resnet18": "classification",
    "mobilenet_v3_small": "classification",
    "lraspp_mobilenet_v3_large": "segmentation",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "detection",
    "ssdlite320_mobilenet_v3_large": "detection",
    "r3d_18": "video",
}
# 3-D layers too, for the video model: the default types are the 2-D ones pruning can cut
TYPES = [nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Linear]


@pytest.mark.parametrize("name", SLICE)
def test_summary_and_grad_fn_modules_agree_on_a_zoo_model(name):
    assert family_of(name) == SLICE[name]
    torch.manual_seed(0)
    model, args = build(name), example_args(name)
    before = model_state(model)

    result = summary(model, input_data=args)
    assert result.total_params == count_parameters(model)
    called = {row.name for row in result.rows if row.calls}

    x = args[0]  # every model of the slice takes one argument (detection: a list of images)
    nodes = grad_fn_modules(model, x, types=TYPES)
    names = {module: module_name for module_name, module in model.named_modules()}
    traced = {names[module] for module in nodes.values()}
    # every layer of those types that ran, as summary's hooks saw it, and no other
    expected = {n for n, m in model.named_modules() if isinstance(m, tuple(TYPES)) and n in called}
    assert traced == expected and len(expected) > 10

    assert no_hooks_left(model)
    assert_state_unchanged(model, before)


def test_a_detection_models_backbone_and_heads_are_rows():
    torch.manual_seed(0)
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    rows = {row.name: row for row in summary(model, input_data=(images,)).rows}
    assert rows[""].input_shape == [[3, 128, 128], [3, 96, 128]]
    assert rows["backbone.body"].calls == 1  # once, on the batch the transform made of the list
    assert rows["backbone.body"].input_shape == [2, 3, 128, 128]  # padded to one size
    assert set(rows["backbone"].output_shape) == {"0", "1", "pool"}  # the FPN's feature maps
    assert rows["roi_heads.box_predictor"].output_shape[0][1] == 91  # COCO's classes
