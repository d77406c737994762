"""Time and peak memory of the four ways to get intermediate outputs.

For resnet50 (random weights, eval mode, ``torch.no_grad()``) at batch 8,
224×224, and for the requests ``layer2`` and ``layer4``, prints each method
beside a plain forward pass and beside the floor: a forward pass truncated
right after the requested layer (``nn.Sequential`` of the children up to it,
built before timing). Also ``by_fx (built once)``: the FX extractor built
before timing, so its rows leave out tracing; and ``chain_children``: the core
of ``by_children`` without its check (one pass of the model's own forward up to
the requested layer, which ``by_children`` and ``by_layer_getter`` pay for). Times are the median of
``--repeats`` runs after one warm-up; peak memory comes from
``tutorials_pkg.measure.peak_memory_bytes`` (the profiler's allocation
events on CPU, ``torch.cuda.max_memory_allocated`` on CUDA).

Target: the best method for each request within 1.1x of the floor in time.

    python -m benchmarks.features_extraction [--batch 8] [--size 224] [--repeats 5]
"""

import argparse

import torch
from torch import nn
from torchvision.models import resnet50

from tutorials_pkg.intermediate import (
    EXTRACTORS,
    build_fx_extractor,
    chain_children,
    extraction_costs,
    format_cost_table,
)
from tutorials_pkg.runtime import default_device, describe_runtime

REQUESTS = ("layer2", "layer4")
TARGET = 1.1


def truncate_after(model: nn.Module, name: str) -> nn.Sequential:
    """The model's top-level children up to and including ``name``, as a chain."""
    children = list(model.named_children())
    names = [child for child, _ in children]
    return nn.Sequential(*[module for _, module in children[:names.index(name) + 1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = default_device()
    torch.manual_seed(0)
    model = resnet50(weights=None).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)

    floors = {name: truncate_after(model, name) for name in REQUESTS}
    with torch.no_grad():
        built = {name: build_fx_extractor(model, [name]) for name in REQUESTS}
    methods = {
        **EXTRACTORS,
        "by_fx (built once)": lambda model, x, names: built[names[0]](x),
        "chain_children": chain_children,
        "floor": lambda model, x, names: floors[names[0]](x),
    }
    print(describe_runtime(), f"· {torch.get_num_threads()} CPU threads")
    print(f"resnet50, batch {args.batch}, {args.size}x{args.size}, torch.no_grad(), "
          f"median of {args.repeats} runs after a warm-up\n")
    rows = extraction_costs(model, x, requests=REQUESTS, methods=methods, repeats=args.repeats)
    print(format_cost_table(rows, baseline="floor"))
    print()
    print(format_cost_table(rows, baseline="forward"))
    print()

    for request in REQUESTS:
        floor = next(r for r in rows if r["method"] == "floor" and r["request"] == request)
        candidates = [r for r in rows if r["request"] == request and r["method"] in EXTRACTORS]
        best = min(candidates, key=lambda r: r["seconds"])
        ratio = best["seconds"] / floor["seconds"]
        verdict = "meets" if ratio <= TARGET else "misses"
        print(f"{request}: best {best['method']} at {ratio:.2f}x the floor in time, "
              f"{best['peak_bytes'] / floor['peak_bytes']:.2f}x in peak memory "
              f"({verdict} the {TARGET}x target)")


if __name__ == "__main__":
    main()
