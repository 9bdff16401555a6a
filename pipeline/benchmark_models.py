"""TorchRay's pointing-game benchmark models: ``model.arch: torchray/vgg16 | torchray/resnet50``
with ``model.dataset: voc07 | coco14`` (20 / 80 classes).

They are the VGG16 and ResNet-50 of the EBP paper (Zhang et al.), fine-tuned on PASCAL VOC 2007
or COCO 2014 in Caffe and converted by TorchRay (``torchray/benchmark/models.py``), built here as
TorchRay's ``get_model(..., convert_to_fully_convolutional=True)`` builds them:

- Caffe's layout: max-pools round up (``ceil_mode``); ResNet-50's stem convolution has a bias,
  its max-pool no padding, and each stage's first block strides in its 1x1 convolution.
- Fully convolutional: the classifier runs as convolutions over the whole image, so the output is
  a spatial score map ``[B, C, h, w]`` (VGG16: fc6 a 7x7 convolution, fc7 / fc8 1x1, no pooling
  before them; ResNet-50: ``fc`` a 1x1 convolution after the average pool). ResNet-50's pool is
  global (``model.options.pool: global``, a ``[B, C, 1, 1]`` output) or, as TorchRay's benchmark
  uses it for the gradient family and Grad-CAM, a 7x7 stride-1 average (``pool: sliding``).
- Inputs as TorchRay's ``get_transform`` for these models: the shorter side to 224, no crop,
  bilinear on the [0, 1] image without antialiasing, Caffe's mean subtracted from the 0-255 values.

The weights are TorchRay's published checkpoint files (``vgg16_voc-b050e8c3.pth.tar`` and the
like, downloaded once by the user), given as ``model.checkpoint`` (local path or fsspec URL) and
read weights-only; nothing is downloaded at run time. ``fit_checkpoint`` converts their tensors
(BGR first convolution, Caffe's key names, linear weights as convolutions) to this module's
models; VGG16's fc6 / fc7 take the checkpoint's width (4096 in TorchRay's files).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.utils import skip_init
from torchvision.models.vgg import cfgs, make_layers

from pipeline.config import ModelConfig

PREFIX = "torchray/"
ARCHS = ("vgg16", "resnet50")
DATASETS = {"voc07": 20, "coco14": 80}
POOLS = ("global", "sliding")
# TorchRay's published checkpoint file per (arch, dataset), named in errors.
CHECKPOINT_FILES = {
    ("vgg16", "voc07"): "vgg16_voc-b050e8c3.pth.tar",
    ("vgg16", "coco14"): "vgg16_coco-d82c8150.pth.tar",
    ("resnet50", "voc07"): "resnet50_voc-9ca920d6.pth.tar",
    ("resnet50", "coco14"): "resnet50_coco-e99468c5.pth.tar",
}
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/torchray/"
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Preprocessing defaults for pipeline.models: Caffe's mean on 0-255 values, as mean / std on the
# [0, 1] image; ``antialias`` False resizes the float image as TorchRay's transform does.
PREPROCESS: dict[str, Any] = {
    "resize": 224,
    "crop": None,
    "mean": tuple(m / 255.0 for m in reversed(CAFFE_BGR_MEAN)),
    "std": (1.0 / 255.0,) * 3,
    "interpolation": "bilinear",
    "antialias": False,
}
_VGG_FC = (0, 3, 6)  # fc6, fc7, fc8 in the classifier (ReLU and dropout between them)


def is_benchmark_arch(arch: str | None) -> bool:
    return arch is not None and arch.startswith(PREFIX)


def _caffe_max_pools(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = True  # Caffe rounds pooled sizes up


class FullyConvolutionalVGG16(nn.Module):
    """VGG16's ``features`` then fc6 (7x7), fc7, fc8 (1x1) as convolutions:
    images ``[B, 3, H, W]`` -> scores ``[B, num_classes, H/32 - 6, W/32 - 6]`` (ceil rounding)."""

    def __init__(self, num_classes: int, hidden: int = 4096):
        super().__init__()
        self.features = make_layers(cfgs["D"])  # VGG16's, without building its 100 M-weight classifier
        _caffe_max_pools(self.features)
        self.num_classes = num_classes
        self.set_hidden(hidden)

    def set_hidden(self, hidden: int) -> None:
        """A classifier whose fc6 / fc7 have ``hidden`` channels, uninitialised: the weights always
        come from a checkpoint, and initialising fc6's 100 M weights would cost seconds."""
        self.classifier = nn.Sequential(
            skip_init(nn.Conv2d, 512, hidden, 7), nn.ReLU(inplace=True), nn.Dropout(),
            skip_init(nn.Conv2d, hidden, hidden, 1), nn.ReLU(inplace=True), nn.Dropout(),
            skip_init(nn.Conv2d, hidden, self.num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FullyConvolutionalResNet50(torchvision.models.ResNet):
    """ResNet-50 in Caffe's layout with ``fc`` a 1x1 convolution after the average pool:
    images ``[B, 3, H, W]`` -> scores ``[B, num_classes, h, w]`` (1 x 1 with ``pool="global"``;
    the 7x7 stride-1 average's positions with ``"sliding"``)."""

    def __init__(self, num_classes: int, pool: str = "global"):
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3])
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        for stage in (self.layer2, self.layer3, self.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
        if pool == "sliding":
            self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Conv2d(2048, num_classes, 1)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x))


def _arch(arch: str) -> str:
    name = arch[len(PREFIX):]
    if name not in ARCHS:
        raise ValueError(f"unknown torchray architecture {name!r}; valid: {', '.join(PREFIX + a for a in ARCHS)}")
    return name


def build_benchmark_model(model: ModelConfig) -> tuple[nn.Module, str, None]:
    """(model, name, None: the checkpoint's digest comes later) for ``torchray/<arch>``, its
    weights still to load from ``model.checkpoint`` (``fit_checkpoint``). ValueError (one line)
    for a bad combination or no checkpoint."""
    arch, dataset, num_classes, options = model.arch, model.dataset, model.num_classes, model.options
    name = _arch(arch)
    if dataset not in DATASETS:
        raise ValueError(f"model.arch {arch} needs model.dataset: one of {', '.join(DATASETS)}, got {dataset!r}")
    classes = DATASETS[dataset]
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"{arch} on {dataset} has {classes} classes, but num_classes={num_classes}")
    if model.checkpoint is None:
        file = CHECKPOINT_FILES[(name, dataset)]
        raise ValueError(
            f"{arch} on {dataset} needs model.checkpoint: TorchRay's {file} (download {CHECKPOINT_URL}{file} once)"
        )
    unknown = sorted(set(options) - {"pool"})
    pool = options.get("pool", "global")
    if unknown or pool not in POOLS or (pool != "global" and name != "resnet50"):
        raise ValueError(
            f"model.options for {arch}: only pool ({' | '.join(POOLS)}; sliding for resnet50 only), got {options}"
        )
    if name == "vgg16":
        return FullyConvolutionalVGG16(classes), f"{arch}-{dataset}", None
    return FullyConvolutionalResNet50(classes, pool), f"{arch}-{dataset}" + ("-sliding" if pool == "sliding" else ""), None


def caffe_vgg16_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchRay's VGG16 checkpoint keys (fc6-fc8 as ``classifier.0/2/4``) in our classifier's
    positions (``0/3/6``), the weights in convolution shape, the first convolution RGB."""
    out = {}
    for key, value in state.items():
        found = re.fullmatch(r"classifier\.([024])\.(weight|bias)", key)
        if found:
            key = f"classifier.{_VGG_FC[int(found.group(1)) // 2]}.{found.group(2)}"
            if found.group(2) == "weight" and value.dim() >= 2:  # else the shape check names the key
                n = value.shape[0]
                fits = found.group(1) != "0" or value.numel() == n * 512 * 49
                value = value.reshape(n, 512, 7, 7) if found.group(1) == "0" and fits else value.reshape(n, -1, 1, 1)
        elif key == "features.0.weight":
            value = value[:, [2, 1, 0]]  # Caffe's BGR input channels -> RGB
        out[key] = value
    return out


def caffe_resnet50_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchRay's ResNet-50 checkpoint keys (Caffe's ``bnK.0`` / ``bnK.1`` and
    ``downsample.K.0|1`` groupings collapsed), ``fc`` as a 1x1 convolution, ``conv1`` RGB."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"bn(\d)\.[01]\.", r"bn\1.", key)
        key = re.sub(r"downsample\.(\d)\.[01]\.", r"downsample.\1.", key)
        if key == "conv1.weight":
            value = value[:, [2, 1, 0]]
        elif key == "fc.weight" and value.dim() == 2:
            value = value[:, :, None, None]
        out[key] = value
    return out


def fit_checkpoint(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors in ``net``'s names and shapes: converted for the benchmark models
    (VGG16's fc6 / fc7 resized to the checkpoint's width first), unchanged for any other model."""
    if isinstance(net, FullyConvolutionalVGG16):
        state = caffe_vgg16_names(state)
        fc6 = state.get("classifier.0.weight")
        if fc6 is not None and fc6.dim() == 4 and fc6.shape[0] != net.classifier[0].out_channels:
            net.set_hidden(int(fc6.shape[0]))
        return state
    if isinstance(net, FullyConvolutionalResNet50):
        return caffe_resnet50_names(state)
    return state
