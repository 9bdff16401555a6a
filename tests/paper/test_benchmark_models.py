"""``model.arch: torchray/vgg16 | torchray/resnet50``: our config's model and preprocessing equal
TorchRay's own benchmark model code and ``get_transform`` on checkpoints in TorchRay's format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchray.benchmark.models import get_transform

from pipeline.config import ModelConfig
from pipeline.models import load_model
from tests.paper.torchray_reference import (
    resnet50_checkpoint,
    save_checkpoint,
    torchray_get_model,
    torchray_vgg16,
    vgg16_checkpoint,
)


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vgg16_voc(tmp_path_factory):
    state = vgg16_checkpoint(classes=20, hidden=32)
    return state, save_checkpoint(state, tmp_path_factory.mktemp("ckpt"), "vgg16", "voc07")


def test_vgg16_score_maps_equal_torchrays(vgg16_voc):
    state, path = vgg16_voc
    ours = load_model(ModelConfig(arch="torchray/vgg16", dataset="voc07", checkpoint=str(path)))
    theirs = torchray_vgg16(state, 20)
    img = _image(260, 210, 0)
    x, geom = ours.preprocess(img)
    assert (geom.resized_width, geom.resized_height) == (277, 224)  # shorter side 224, no crop
    assert torch.allclose(x, get_transform("voc_2007", 224)(img), rtol=0, atol=1e-3)  # 0-255 scale
    with torch.no_grad():
        a, b = ours.model(x[None]), theirs(x[None])
    assert a.shape == b.shape == (1, 20, 1, 3)  # a spatial score map: fc6 runs as a 7x7 convolution
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_resnet50_score_maps_equal_torchrays_get_model(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    path = save_checkpoint(resnet50_checkpoint(classes=80), folder, "resnet50", "coco14")
    theirs = torchray_get_model("resnet50", "coco14", folder, monkeypatch)
    x = torch.randn(1, 3, 200, 232)
    for pool in ("global", "sliding"):
        ours = load_model(ModelConfig(arch="torchray/resnet50", dataset="coco14", checkpoint=str(path), options={"pool": pool}))
        if pool == "sliding":  # what TorchRay's benchmark script does for the gradient family
            theirs.avgpool = torch.nn.AvgPool2d((7, 7), stride=1)
        with torch.no_grad():
            a, b = ours.model(x), theirs(x)
        assert a.shape == b.shape == ((1, 80, 1, 1) if pool == "global" else (1, 80, 1, 2))
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_benchmark_model_config_errors(vgg16_voc):
    _, path = vgg16_voc
    with pytest.raises(ValueError, match=r"needs model.checkpoint: TorchRay's vgg16_coco-d82c8150.pth.tar"):
        load_model(ModelConfig(arch="torchray/vgg16", dataset="coco14"))
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_model(ModelConfig(arch="torchray/vgg16", dataset="voc07", checkpoint=str(path) + ".missing"))
    with pytest.raises(ValueError, match="20 classes"):
        load_model(ModelConfig(arch="torchray/vgg16", dataset="voc07", checkpoint=str(path), num_classes=80))
    with pytest.raises(ValueError, match="shape mismatch|does not match"):  # a VOC file given for COCO
        load_model(ModelConfig(arch="torchray/vgg16", dataset="coco14", checkpoint=str(path)))
    with pytest.raises(ValueError, match="sliding for resnet50 only"):
        load_model(ModelConfig(arch="torchray/vgg16", dataset="voc07", checkpoint=str(path), options={"pool": "sliding"}))
    with pytest.raises(ValueError, match="unknown torchray architecture"):
        load_model(ModelConfig(arch="torchray/alexnet", dataset="voc07", checkpoint=str(path)))


def test_a_checkpoint_of_another_shape_is_one_line(tmp_path):
    bad = vgg16_checkpoint(classes=20, hidden=8)
    bad["classifier.0.weight"] = bad["classifier.0.weight"][:, :100]
    path = save_checkpoint(bad, tmp_path, "vgg16", "voc07")
    with pytest.raises(ValueError, match=r"does not match torchray/vgg16-voc07: .*classifier.0.weight"):
        load_model(ModelConfig(arch="torchray/vgg16", dataset="voc07", checkpoint=str(path)))
