"""TorchRay's benchmark models built by TorchRay's own code, checkpoints in TorchRay's file
format (Caffe's names, BGR first convolution, linear classifier weights) with random weights, and
the benchmark script's method calls (``examples/attribution_benchmark.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torchray.attribution.extremal_perturbation as elp
import torchvision
from PIL import Image
from torch import nn
from torchray.attribution.common import get_pointing_gradient
from torchray.attribution.grad_cam import grad_cam
from torchray.attribution.gradient import gradient
from torchray.attribution.guided_backprop import guided_backprop
from torchray.attribution.rise import rise
from torchray.benchmark import models as torchray_models

from pipeline.benchmark_models import CHECKPOINT_FILES, FullyConvolutionalResNet50

TORCHRAY_DATASET = {"voc07": "voc_2007", "coco14": "coco"}
# The models see Caffe's 0-255 inputs: the first convolution's random weights are scaled down so
# that the scores stay where the trained models' are (TorchRay's pointing gradient, exp of the
# scores unnormalised, overflows beyond ~88).
INPUT_SCALE = 100.0


def _he(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
    return torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5


def vgg16_checkpoint(classes: int, hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """VGG16 in TorchRay's file layout, fc6 / fc7 ``hidden`` wide (4096 in the published files)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        features = torchvision.models.vgg16().features
    state = {f"features.{k}": _he(tuple(v.shape), g) if k.endswith("weight") else 0.01 * torch.randn(v.shape, generator=g)
             for k, v in features.state_dict().items()}
    for i, (n_out, n_in) in enumerate(((hidden, 512 * 49), (hidden, hidden), (classes, hidden))):
        state[f"classifier.{2 * i}.weight"] = _he((n_out, n_in), g)
        state[f"classifier.{2 * i}.bias"] = 0.01 * torch.randn(n_out, generator=g)
    state["features.0.weight"] /= INPUT_SCALE
    return state


def resnet50_checkpoint(classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """ResNet-50 in TorchRay's file layout: Caffe's BatchNorm (``bnK.0``: statistics) and Scale
    (``bnK.1``: weight, bias) layers apart, ``fc`` linear."""
    torch.manual_seed(seed)
    net = FullyConvolutionalResNet50(classes)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = value.clone()
        if key.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")) and value.dim() == 1:
            value = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith(("running_mean", "bias")):
            value = 0.05 * torch.randn(value.shape, generator=g)
        if key == "fc.weight":
            value = value.flatten(1)
        elif key == "conv1.weight":
            value = value / INPUT_SCALE
        if key == "fc.weight":
            value = value / 20  # BatchNorm's random statistics leave scores of hundreds otherwise
        found = re.fullmatch(r"(.*(?:bn\d|downsample\.1))\.(weight|bias|running_mean|running_var)", key)
        if found:
            key = f"{found.group(1)}.{0 if found.group(2).startswith('running') else 1}.{found.group(2)}"
        state[key] = value
    return state


def save_checkpoint(state: dict[str, torch.Tensor], folder: Path, arch: str, dataset: str) -> Path:
    """``state`` saved under TorchRay's file name for (arch, dataset), as torch.save writes it."""
    path = folder / CHECKPOINT_FILES[(arch, dataset)]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def torchray_vgg16(state: dict[str, torch.Tensor], classes: int) -> nn.Module:
    """TorchRay's fully convolutional VGG16 (its ``_load_caffe_vgg16`` then ``_caffe_vgg16_to_fc``,
    what ``get_model`` runs) on a torchvision VGG16 whose classifier has the checkpoint's width."""
    with torch.device("meta"):
        model = torchvision.models.vgg16()
    model.features.to_empty(device="cpu")  # every value comes from the checkpoint
    hidden = state["classifier.0.weight"].shape[0]
    model.classifier = nn.Sequential(
        nn.Linear(512 * 49, hidden), nn.ReLU(True), nn.Dropout(),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes),
    )
    torchray_models._load_caffe_vgg16(model, dict(state))
    return torchray_models._caffe_vgg16_to_fc(model).eval()


def torchray_get_model(arch: str, dataset: str, checkpoint_folder: Path, monkeypatch) -> nn.Module:
    """``torchray.benchmark.models.get_model(arch, dataset, convert_to_fully_convolutional=True)``
    itself, its checkpoint found in the torch hub cache (``TORCH_HOME``; no download)."""
    hub = checkpoint_folder.parent / "torch_home"
    (hub / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    name = CHECKPOINT_FILES[(arch, dataset)]
    (hub / "hub" / "checkpoints" / name).write_bytes((checkpoint_folder / name).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(hub))
    return torchray_models.get_model(arch, TORCHRAY_DATASET[dataset], convert_to_fully_convolutional=True)


def blob_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random colour blobs (a noise image would make every gradient map a near-tie)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(low, (height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def torchray_point(saliency: torch.Tensor) -> tuple[int, int]:
    """The benchmark script's ``_saliency_to_point``: the first argmax of ``[1, 1, H, W]``."""
    index = int(torch.argmax(saliency.reshape(-1)))
    return index % saliency.shape[-1], index // saliency.shape[-1]


def torchray_call(model: nn.Module, layer: str, areas: list[float], rise_masks: int = 8000, ep_iterations: int = 800):
    """The benchmark script's call per method, as ``(method, x, class_id, image_size (W, H)) ->
    saliency [1, 1, H, W]`` (RISE's masks and extremal perturbation's iterations settable)."""

    def call(method: str, x: torch.Tensor, class_id: int, size: tuple[int, int]) -> torch.Tensor:
        torch.manual_seed(0)  # the script seeds every image
        if method in ("gradient", "guided_backprop"):
            fn = gradient if method == "gradient" else guided_backprop
            return fn(model, x, class_id, resize=size, smooth=0.02, get_backward_gradient=get_pointing_gradient)
        if method == "grad_cam":
            return grad_cam(model, x, class_id, saliency_layer=layer, resize=size, get_backward_gradient=get_pointing_gradient)
        if method == "rise":
            return rise(model, x, resize=size, seed=0, num_masks=rise_masks)[:, class_id:class_id + 1]
        mask, _ = elp.extremal_perturbation(
            model, x, class_id, areas=areas, num_levels=8, step=7, sigma=7 * 3, max_iter=ep_iterations, jitter=True,
            smooth=0.09, resize=size, perturbation="blur", reward_func=elp.simple_reward, variant=elp.PRESERVE_VARIANT)
        return mask.sum(dim=0, keepdim=True)

    return call
