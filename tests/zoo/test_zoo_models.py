"""timm and Hugging Face classifiers as ``model.arch``: their own preprocessing, checkpoints,
offline hub names, and the engine's model rewrites leaving their logits unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from extremal_core.network import engine_model
from extremal_core.settings import ExtremalSettings
from pipeline.config import ModelConfig
from pipeline.models import load_model
from tests.zoo.models import NUM_CLASSES, TIMM_VIT, model_configs

timm = pytest.importorskip("timm")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, ModelConfig]:
    return model_configs(tmp_path_factory.mktemp("zoo"))


def _photo(width: int = 300, height: int = 260) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["convnext_tiny", "vit_small_patch16_224"])
def test_timm_preprocessing_is_timms_eval_transform(name):
    """Our preprocessing of a photo equals timm's own evaluation transform for the arch."""
    from timm.data import create_transform, resolve_data_config

    loaded_pp = load_model(ModelConfig(arch=f"timm/{name}", options={"depth": 1} if "vit" in name else
                                       {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)})).preprocess
    net = timm.create_model(name, pretrained=False, **({"depth": 1} if "vit" in name else {"depths": (1, 1, 1, 1)}))
    reference = create_transform(**resolve_data_config({}, model=net))
    ours, geometry = loaded_pp(_photo())
    assert ours.shape == (3, 224, 224) and geometry.out_width == 224
    torch.testing.assert_close(ours, reference(_photo()), atol=1e-5, rtol=0)


def test_hf_preprocessing_is_the_image_processor(configs):
    """On a square image (where squashing and crop-after-resize agree) our input equals the
    folder's image processor's pixel values."""
    from transformers import AutoImageProcessor

    loaded = load_model(configs["hf_vit"])
    folder = configs["hf_vit"].arch[3:]
    image = _photo(256, 256)
    reference = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"][0]
    ours, _ = loaded.preprocess(image)
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5) and loaded.preprocess.crop == 224
    # PIL and the processor's resize kernels differ in the last bits of a uint8 step.
    assert (ours - reference).abs().mean() < 0.02


def test_families_give_logits(configs):
    x = torch.randn(2, 3, 224, 224)
    for name, cfg in configs.items():
        loaded = load_model(cfg)
        with torch.no_grad():
            logits = loaded.model(x)
        assert logits.shape == (2, NUM_CLASSES), name
        assert not any(p.requires_grad for p in loaded.model.parameters())


def test_checkpoint_safetensors_and_state_dict(tmp_path, configs):
    from safetensors.torch import save_file

    first = load_model(ModelConfig(**TIMM_VIT, num_classes=NUM_CLASSES))
    save_file(first.model.state_dict(), tmp_path / "w.safetensors")
    torch.save(first.model.state_dict(), tmp_path / "w.pt")
    x = torch.randn(1, 3, 224, 224)
    for file in ("w.safetensors", "w.pt"):
        again = load_model(ModelConfig(**TIMM_VIT, num_classes=NUM_CLASSES, checkpoint=str(tmp_path / file)))
        torch.testing.assert_close(again.model(x), first.model(x))
        assert again.weights_digest.startswith("sha256:") and again.name.endswith(file)
    # An HF checkpoint holds the wrapped model's own key names.
    hf = load_model(configs["hf_vit"])
    save_file(hf.model.hf_model.state_dict(), tmp_path / "hf.safetensors")
    hf_again = load_model(ModelConfig(arch=configs["hf_vit"].arch, checkpoint=str(tmp_path / "hf.safetensors")))
    torch.testing.assert_close(hf_again.model(x), hf.model(x))


def test_hub_name_offline_and_unknown_names_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="not a local folder and model.download_weights is off") as err:
        load_model(ModelConfig(arch="hf/google/vit-base-patch16-224", download_weights=False))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="download_weights is off"):
        load_model(ModelConfig(arch="timm/resnet18", weights="pretrained", download_weights=False))
    with pytest.raises(ValueError, match="unknown timm architecture 'convnext_tinny'"):
        load_model(ModelConfig(arch="timm/convnext_tinny"))
    with pytest.raises(ValueError, match="hf model folder not found"):
        load_model(ModelConfig(arch=f"hf/{tmp_path / 'missing'}"))


def _randomise_batchnorm(net: torch.nn.Module) -> None:
    """Non-trivial running statistics, so folding BatchNorm is tested on real numbers."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("family", ["timm_convnext", "timm_vit", "hf_vit", "timm_efficientnet"])
def test_engine_rewrites_keep_logits(family, configs):
    """BatchNorm folding, the ReLU/max-pool swap and channels_last, where they apply, change no
    logit beyond float tolerance (EfficientNet: BatchNorm with an activation inside)."""
    if family == "timm_efficientnet":
        cfg = ModelConfig(arch="timm/efficientnet_b0", num_classes=NUM_CLASSES)
    else:
        cfg = configs[family]
    net = load_model(cfg).model
    with torch.no_grad():
        _randomise_batchnorm(net)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = net(x)
        after = engine_model(net, ExtremalSettings())(x)
    torch.testing.assert_close(after, before, atol=1e-4 * float(before.abs().max()) + 1e-6, rtol=0)

