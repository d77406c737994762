"""Pruning every channel group of every torchvision classification model: is the result right?

    python -m benchmarks.pruning                    # every classification model of torchvision
    python -m benchmarks.pruning resnet18 vit_b_16  # only these
    python -m benchmarks.pruning --package          # also the package's UNet (both) and tiny_yolo
    python -m benchmarks.pruning --reasons          # and the refusals, counted by kind

For each model (random weights, ``weights=None``, eval mode; the inputs of
``benchmarks.zoo``: 1x3x64x64, 224x224 for ViT and MaxViT, 96x96 for
Inception v3) it sets the BatchNorm statistics from one batch (as training
would; at initialisation a random network's activations shrink layer after
layer), traces one forward pass, finds the channel groups
(``coupled_channel_groups``) and checks each group that is not refused: the
model with a quarter of the group's channels pruned (at least one, chosen at
random) must give, in float64, the output the original gives with those
channels set to zero (``zero_channel_groups``), to 1e-8 of its size. All
groups are checked in one pruned copy; if that copy disagrees, the groups are
halved until each wrong one is found.
A group of one channel cannot lose "some but not all" and counts as refused.

One line per model: groups, pruned correctly, refused, wrong, seconds (build,
trace, groups and checks), then the totals.
"""

import argparse
import copy
import random
import time

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.zoo import build, example_args
from tutorials_pkg.grad_fn import (
    coupled_channel_groups,
    prune_channel_groups,
    trace_grad_fn,
    zero_channel_groups,
)
from tutorials_pkg.unwrap import tensors_in

TOLERANCE = 1e-8  # largest difference in float64, relative to the output's largest value


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Set each BatchNorm's statistics from one batch, as training would.

    At initialisation every BatchNorm has mean 0 and variance 1, so in eval mode a
    random network's activations shrink layer after layer, and a channel cut wrongly
    deep inside moves the output by 1e-9 of its size; normalised, by 10-40 %.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum, norm.training = None, True  # None: a plain average of the batches
    with torch.no_grad():
        model(torch.cat([x, torch.randn_like(x)]))
    for norm in norms:
        norm.momentum, norm.training = 0.1, False


def outputs(model: nn.Module, drops: list, x, change) -> list:
    """The output tensors of a float64 copy of ``model`` with ``change(copy, drops)`` applied."""
    changed = copy.deepcopy(model).double()
    change(changed, drops)
    with torch.no_grad():
        return tensors_in(changed(x.double()))


def difference(model: nn.Module, drops: list, x) -> float:
    """How far the pruned model is from the zeroed one (inf if pruning or running fails), in
    float64, whose rounding (1e-15) is far below any wrong cut's effect."""
    try:
        got = outputs(model, drops, x, prune_channel_groups)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return float("inf")
    expected = outputs(model, drops, x, zero_channel_groups)
    if [t.shape for t in got] != [t.shape for t in expected]:
        return float("inf")
    scale = max(t.abs().max().item() for t in expected) or 1.0
    return max((a - b).abs().max().item() for a, b in zip(got, expected)) / scale


def random_drops(groups: list, seed: int = 0) -> list:
    """A quarter of each group's channels (at least one), at random."""
    rng = random.Random(seed)
    return [(group, sorted(rng.sample(range(group.channels), max(1, group.channels // 4))))
            for group in groups]


def check_groups(model: nn.Module, x, groups: list, seed: int = 0) -> tuple[list, list]:
    """(groups pruned correctly, groups pruned wrongly), all checked in as few copies as can be."""
    correct, wrong = [], []

    def search(drops):
        if not drops:
            return
        if difference(model, drops, x) <= TOLERANCE:
            correct.extend(group for group, _ in drops)
        elif len(drops) == 1:
            wrong.extend(group for group, _ in drops)
        else:
            search(drops[: len(drops) // 2])
            search(drops[len(drops) // 2:])

    search(random_drops(groups, seed))
    return correct, wrong


def prunable(groups: list) -> tuple[list, list]:
    """(groups to check, groups refused: by the tool, or of a single channel)."""
    refused = [g for g in groups if g.refused or g.channels < 2]
    return [g for g in groups if g not in refused], refused


def check_model(model: nn.Module, x, seed: int = 0) -> dict:
    """Trace ``model`` on ``x``, find its groups and check every one."""
    model.eval()
    calibrate_batchnorm(model, x)
    groups = coupled_channel_groups(trace_grad_fn(model, x))
    to_check, refused = prunable(groups)
    correct, wrong = check_groups(model, x, to_check, seed)
    return {"groups": groups, "correct": correct, "refused": refused, "wrong": wrong}


KINDS = (  # the reasons for a refusal, by kind: (words the reason starts with or holds, kind)
    ("its channels are the model's output", "output (classes, boxes)"),
    ("its channels are the model's input", "the model's input"),
    ("attention", "attention"),
    ("LayerNorm", "a LayerNorm normalizes over them"),
    ("a single channel", "one channel left: ties (shuffle, chunk) allow no cut"),
)


def kind_of(group) -> str:
    """What kind of refusal ``group``'s is (a group of one channel included)."""
    reason = group.refused or "a single channel"
    return next((kind for start, kind in KINDS if reason.startswith(start)), reason[:70])


def package_models() -> dict:
    from tutorials_pkg.blocks.unet import UNet
    from tutorials_pkg.grad_fn.yolo import tiny_yolo
    return {"UNet": lambda: UNet(), "UNet(bilinear=True)": lambda: UNet(bilinear=True),
            "tiny_yolo": lambda: tiny_yolo()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: all classification)")
    parser.add_argument("--package", action="store_true", help="also UNet (both) and tiny_yolo")
    parser.add_argument("--reasons", action="store_true", help="why each refused group was")
    options = parser.parse_args()
    names = options.models or torchvision.models.list_models(module=torchvision.models)
    extra = package_models() if options.package else {}
    width = max(map(len, [*names, *extra, "model"]))
    print(f"{'model':<{width}}  groups  correct  refused  wrong  seconds")
    totals = [0, 0, 0, 0, 0.0]
    reasons = {}
    for name in [*extra, *names]:
        torch.manual_seed(0)
        start = time.perf_counter()
        if name in extra:
            model, x = extra[name](), torch.randn(1, 3, 64, 64)
        else:
            model, x = build(name), example_args(name)[0]
        result = check_model(model, x)
        seconds = time.perf_counter() - start
        row = [len(result["groups"]), len(result["correct"]), len(result["refused"]),
               len(result["wrong"]), seconds]
        totals = [a + b for a, b in zip(totals, row)]
        print(f"{name:<{width}}  {row[0]:6}  {row[1]:7}  {row[2]:7}  {row[3]:5}  {seconds:7.1f}",
              flush=True)
        for group in result["refused"]:
            counts = reasons.setdefault(kind_of(group), [0, set()])
            counts[0] += 1
            counts[1].add(name)
        for group in result["wrong"]:
            print(f"    WRONG: {group.layers[:4]} ({group.channels} channels)")
        del model, result
    count = len(names) + len(extra)
    print(f"{'total':<{width}}  {totals[0]:6}  {totals[1]:7}  {totals[2]:7}  {totals[3]:5}  "
          f"{totals[4]:7.1f}   ({count} models)")
    if options.reasons:
        print("\nrefused, by reason: groups, models")
        for reason, (groups, models) in sorted(reasons.items(), key=lambda item: -item[1][0]):
            print(f"  {groups:5} groups in {len(models):3} models: {reason}")


if __name__ == "__main__":
    main()
