"""The inspection tools on every torchvision model: does each one run, and how long it takes.

    python -m benchmarks.zoo                      # every model of torchvision.models.list_models()
    python -m benchmarks.zoo resnet18 r3d_18      # only these
    python -m benchmarks.zoo --family detection   # only one family

For each model (random weights, ``weights=None``; detection and segmentation
models also ``weights_backbone=None``, so nothing is downloaded) it runs
``summary``, ``grad_fn_modules`` and the four methods of the intermediate
page (``by_children``, ``by_layer_getter``, ``by_fx``, ``by_hooks``), and
prints one line: pass (``ok``) or the exception's name per tool, and the
seconds the model took (building it included). The last lines are the totals.

Inputs are small, so that the whole zoo runs on 2 cores in well under an
hour: 64x64 images (224x224 for ViT and MaxViT, which take no other size;
96x96 for Inception v3, whose smallest is 75x75), 4 frames of 32x32 for
video (16 of 224x224 for MViT and S3D, which need them), two 128x128 images
for optical flow (RAFT's smallest), and for detection one 3x128x128 image in
a list, the R-CNN, RetinaNet and FCOS transforms told to resize to 128
(``min_size``/``max_size``; SSD keeps its fixed 300 or 320).

The intermediate methods take ``(model, x, names)``: ``x`` is the model's one
argument (a list of images for detection; a tuple, two images, for optical
flow), ``names`` the first and the middle of the top-level children that
hold parameters and are called (``by_children`` and ``by_layer_getter``
reach only top-level children, so those are names all four accept).
"""

import argparse
import time

import torch
import torchvision
from torch import nn

from tutorials_pkg import intermediate
from tutorials_pkg.grad_fn import grad_fn_modules
from tutorials_pkg.summary import summary

FAMILIES = ("classification", "detection", "segmentation", "video", "optical_flow", "quantization")
# the smallest image each model takes, where 64x64 is too small (by name prefix)
IMAGE_SIZES = {"vit_": 224, "maxvit_": 224, "inception_v3": 96}
DETECTION_SIZE = 128
METHODS = ("by_children", "by_layer_getter", "by_fx", "by_hooks")
TOOLS = ("summary", "grad_fn_modules", *METHODS)


def family_of(name: str) -> str:
    for family in FAMILIES[1:]:
        if name in torchvision.models.list_models(module=getattr(torchvision.models, family)):
            return family
    return "classification"


def build(name: str) -> nn.Module:
    """Model ``name`` from torchvision's registry: random weights, nothing downloaded, eval mode."""
    family, kwargs = family_of(name), {"weights": None}
    if family in ("detection", "segmentation"):
        kwargs["weights_backbone"] = None
    if family == "detection" and not name.startswith("ssd"):
        kwargs.update(min_size=DETECTION_SIZE, max_size=DETECTION_SIZE)
    if name.endswith(("googlenet", "inception_v3")):
        kwargs["init_weights"] = True  # what None means, without its FutureWarning
    return torchvision.models.get_model(name, **kwargs).eval()


def example_args(name: str) -> tuple:
    """The positional arguments for one small forward pass of model ``name``."""
    family = family_of(name)
    if family == "detection":
        return ([torch.rand(3, DETECTION_SIZE, DETECTION_SIZE)],)
    if family == "video":  # MViT's position embeddings and S3D's last pooling need 16x224x224
        frames, size = (16, 224) if name.startswith(("mvit", "s3d")) else (4, 32)
        return (torch.randn(1, 3, frames, size, size),)
    if family == "optical_flow":
        return torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)  # RAFT: at least 128
    base = name.removeprefix("quantized_")
    size = next((size for prefix, size in IMAGE_SIZES.items() if base.startswith(prefix)), 64)
    return (torch.randn(1, 3, size, size),)


def child_names(model: nn.Module) -> list[str]:
    """The first and the middle of the top-level children that hold parameters and are called.

    A ``ModuleList`` or ``ModuleDict`` is never called itself (forward calls
    what it holds), so it has no output of its own to return.
    """
    children = [name for name, child in model.named_children()
                if any(True for _ in child.parameters())
                and not isinstance(child, (nn.ModuleList, nn.ModuleDict))]
    return list(dict.fromkeys([children[0], children[len(children) // 2]]))


def run_tools(model: nn.Module, args: tuple) -> dict[str, str]:
    """``ok`` or the exception's name, for each tool on ``model``."""
    x = args[0] if len(args) == 1 else args  # a tuple: the positional arguments
    names = child_names(model)
    calls = {
        "summary": lambda: summary(model, input_data=args),
        "grad_fn_modules": lambda: grad_fn_modules(model, x),
        **{method: (lambda method=method: getattr(intermediate, method)(model, x, names))
           for method in METHODS},
    }
    results = {}
    for tool, call in calls.items():
        try:
            call()
            results[tool] = "ok"
        except Exception as error:  # a table of what fails: record it and go on
            results[tool] = type(error).__name__
            lines = str(error).strip().splitlines() or [""]
            message = f"{type(error).__name__}: {lines[0]}"
            results[f"{tool}:error"] = message if len(message) < 300 else message[:297] + "..."
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: all)")
    parser.add_argument("--family", choices=FAMILIES)
    parser.add_argument("--errors", action="store_true", help="print each failure's message")
    options = parser.parse_args()
    names = options.models or torchvision.models.list_models()
    if options.family:
        names = [name for name in names if family_of(name) == options.family]
    torch.manual_seed(0)

    widths = [max(map(len, names)), 14, *(max(len(tool), 6) for tool in TOOLS)]
    header = ["model", "family", *TOOLS]
    print("  ".join(cell.ljust(width) for cell, width in zip(header, widths)) + "  seconds")
    passed = dict.fromkeys(TOOLS, 0)
    errors, total_seconds = [], 0.0
    for name in names:
        start = time.perf_counter()
        try:
            results = run_tools(build(name), example_args(name))
        except Exception as error:  # the model itself could not be built
            results = {tool: "build:" + type(error).__name__ for tool in TOOLS}
            errors.append(f"{name} build: {type(error).__name__}: {error}")
        seconds = time.perf_counter() - start
        total_seconds += seconds
        cells = [name, family_of(name), *(results[tool] for tool in TOOLS)]
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths))
              + f"  {seconds:7.1f}", flush=True)
        for tool in TOOLS:
            passed[tool] += results[tool] == "ok"
            if f"{tool}:error" in results:
                errors.append(f"{name} {tool}: {results[f'{tool}:error']}")
    print(f"\n{len(names)} models, {total_seconds:.0f} s")
    for tool in TOOLS:
        print(f"{tool:16} {passed[tool]:4} passed  {len(names) - passed[tool]:4} failed")
    if options.errors:
        print("\n" + "\n".join(errors))


if __name__ == "__main__":
    main()
