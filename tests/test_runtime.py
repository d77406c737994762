import torch
import torchvision

from tutorials_pkg.runtime import default_device, describe_runtime, runtime_info


def test_runtime_names_the_versions_and_device_in_use():
    info = runtime_info()
    assert info["torch"] == torch.__version__
    assert info["torchvision"] == torchvision.__version__
    assert info["device"].startswith(default_device().type)
    line = describe_runtime()
    assert f"torch {torch.__version__}" in line and f"Python {info['python']}" in line


def test_default_device_is_cuda_exactly_when_cuda_is_there():
    assert (default_device().type == "cuda") == torch.cuda.is_available()
