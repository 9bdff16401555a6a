"""Small models for the engine tests (the trained demo CNN comes from tests/fixtures_demo.py)."""

import shutil

import pytest
import torch

from extremal_core import cpu_kernels


@pytest.fixture
def compiled_kernel():
    """The compiled smooth max. The build machines have a C compiler: there a kernel that does
    not build is a failure, not a skip."""
    if cpu_kernels.disabled():
        pytest.skip(f"compiled loops turned off ({cpu_kernels.SWITCH_VARIABLE}=0)")
    if cpu_kernels.library() is None:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is present but the smooth max kernel did not build; see the log")
        pytest.skip("no C compiler on this machine")
    return cpu_kernels.library()

def make_tiny_cnn(num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, num_classes),
    ).eval()


@pytest.fixture
def tiny_cnn() -> torch.nn.Module:
    return make_tiny_cnn()


@pytest.fixture
def demo_images(demo_model_and_data):
    """(model, images [N, 3, 64, 64] normalised, labels [N], boxes [N, 4]) from the held-out set."""
    from demo import to_model_input

    b = demo_model_and_data
    return b.model, to_model_input(b.heldout_images), torch.as_tensor(b.heldout_labels), b.heldout_boxes


@pytest.fixture(params=["compiled", "pytorch"])
def native_kernels(request) -> bool:
    """Both code paths of the engine on a CPU: the compiled loops, and the PyTorch ops that GPUs
    run. The value is the `native_cpu_kernels` setting."""
    if request.param == "compiled":
        request.getfixturevalue("compiled_kernel")
    return request.param == "compiled"
