"""One unwrapper of wrapped models, one walker over nested tensors."""

import torch
from torch import nn

from tutorials_pkg.unwrap import map_tensors, tensors_in, unwrap_model


def test_unwrap_model_reaches_the_model_inside_every_wrapper():
    model = nn.Linear(2, 2)
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    assert unwrap_model(torch.compile(nn.DataParallel(model))) is model


def test_tensors_in_finds_tensors_in_nested_values_and_skips_the_rest():
    a, b, c = torch.ones(1), torch.zeros(2), torch.full((3,), 2.0)
    value = {"image": a, "label": "cat", "mask": None, "parts": (b, [c, 3])}
    assert [t.shape for t in tensors_in(value)] == [(1,), (2,), (3,)]
    assert tensors_in("text") == [] and tensors_in(a)[0] is a


def test_map_tensors_keeps_containers_and_other_leaves():
    value = {"x": torch.ones(2), "flags": (True, "s", [torch.zeros(1)])}
    doubled = map_tensors(lambda t: t + 1, value)
    assert doubled["flags"][:2] == (True, "s")
    assert torch.equal(doubled["x"], torch.full((2,), 2.0))
    assert torch.equal(doubled["flags"][2][0], torch.ones(1))
