"""Forward latency and peak memory of the blocks chapter's models on CPU.

    python -m benchmarks.blocks_latency            # about a minute on 2 cores
    python -m benchmarks.blocks_latency --repeats 3  # quicker, noisier

Prints, for batch 1 and 8, in one run: the median forward time (eval mode,
``torch.inference_mode``, after warm-up) and the peak memory of
``UNet(bilinear=False)`` at 128x128 and ``MobileNetV1`` at 224x224, beside
``torchvision.models.mobilenet_v2`` and our ``MobileNetV2`` at 224x224; then
the ratio of our MobileNetV2 to torchvision's (target: within 1.05x, they
compute the same thing), measured interleaved so that both see the same load.

Peak memory: the most bytes of tensors alive at once during one forward pass,
beyond what existed before it (weights, input), from the allocation and free
events that ``torch.profiler`` records with ``profile_memory=True``
(``tutorials_pkg.measure.peak_memory_bytes``, as on the intermediate page). It counts
PyTorch's tensors only (not the interpreter, the libraries or oneDNN scratch).

Sizes: U-Net at 128x128 (its paper used 572x572, which takes about 20 times
as long per batch) so that batch 8 runs in seconds on 2 cores; MobileNets at
their ImageNet size, 224x224.
"""

import argparse
import statistics

import torch
import torchvision

from tutorials_pkg.blocks.mobilenet import MobileNetV1, MobileNetV2
from tutorials_pkg.blocks.unet import UNet
from tutorials_pkg.measure import peak_memory_bytes, seconds_each

BATCHES = (1, 8)


def measure(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[list[float], int]:
    """The times of ``repeats`` forward passes after a warm-up, and one pass's peak memory."""
    [times] = seconds_each([lambda: model(x)], repeats)
    return times, peak_memory_bytes(lambda: model(x))


def row(name: str, size: int, batch: int, times: list[float], peak: int) -> str:
    median = statistics.median(times) * 1e3
    return (f"{name:<28}{size:>4}x{size:<4}{batch:>6}{median:>12.1f}"
            f"{min(times) * 1e3:>10.1f}{max(times) * 1e3:>10.1f}{peak / 2**20:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs per case (default: 20 for MobileNets, 10/5 for U-Net)")
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} CPU threads; eval mode, torch.inference_mode()")
    print("latency: median of repeated forward passes after one warm-up (min and max beside it)")
    print("peak: most tensor bytes alive at once during one forward, beyond weights and input "
          "(torch.profiler, profile_memory=True)\n")
    print(f"{'model':<28}{'input':>9}{'batch':>6}{'median ms':>12}{'min ms':>10}{'max ms':>10}"
          f"{'peak MiB':>12}")

    models = {
        "UNet (transposed conv)": (UNet(bilinear=False), 128),
        "MobileNetV1": (MobileNetV1(), 224),
        "torchvision mobilenet_v2": (torchvision.models.mobilenet_v2(weights=None), 224),
        "our MobileNetV2": (MobileNetV2(), 224),
    }
    with torch.inference_mode():
        for name, (model, size) in models.items():
            model.eval()
            for batch in BATCHES:
                repeats = args.repeats or (20 if "obile" in name else (10 if batch == 1 else 5))
                x = torch.randn(batch, 3, size, size)
                times, peak = measure(model, x, repeats)
                print(row(name, size, batch, times, peak), flush=True)

        print("\nour MobileNetV2 / torchvision mobilenet_v2, interleaved runs, same weights:")
        ours, theirs = models["our MobileNetV2"][0], models["torchvision mobilenet_v2"][0]
        ours.load_state_dict(theirs.state_dict())
        for batch in BATCHES:
            x = torch.randn(batch, 3, 224, 224)
            pairs = list(zip(*seconds_each([lambda: ours(x), lambda: theirs(x)],
                                           args.repeats or 30)))
            ratio = statistics.median(a for a, _ in pairs) / statistics.median(b for _, b in pairs)
            per_pair = statistics.median(a / b for a, b in pairs)
            print(f"  batch {batch}: ratio of medians {ratio:.3f}, median of per-pair ratios "
                  f"{per_pair:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
