"""What a page was executed with: versions and device."""

import platform

import torch
import torchvision


def default_device() -> torch.device:
    """CUDA when present, else CPU: every page and GPU test picks its device here."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def runtime_info() -> dict[str, str]:
    """Versions of Python, torch and torchvision, and the device in use."""
    device = default_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": f"{device.type} ({name})",
    }


def describe_runtime() -> str:
    """One line for the top of a page, e.g. ``Python 3.11.7 · torch 2.14.1 · ...``."""
    info = runtime_info()
    return (f"Python {info['python']} · torch {info['torch']} · "
            f"torchvision {info['torchvision']} · device {info['device']}")
