"""Small timm and Hugging Face classifiers with random weights, at 224² (the families' native
size), for the zoo tests: timm models built with reduced depth and width through
``model.options``, an HF ViT folder written with ``save_pretrained`` from a config built here."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ModelConfig

NUM_CLASSES = 5

# timm architectures with options that keep them small (the structure, e.g. the class token and
# the stages, is the real one).
TIMM_CONVNEXT = {"arch": "timm/convnext_tiny", "options": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}}
TIMM_VIT = {"arch": "timm/vit_tiny_patch16_224", "options": {"depth": 2, "embed_dim": 32, "num_heads": 2}}


def hf_vit_folder(folder: str | Path) -> Path:
    """An HF ViT image classifier (random weights) and its image processor, saved to ``folder``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = Path(folder)
    if not (folder / "config.json").exists():
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=224, patch_size=16, num_labels=NUM_CLASSES)
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def timm_checkpoint(spec: dict, folder: str | Path) -> Path:
    """The random weights of a timm spec saved once as a state_dict: every worker of a job must
    load the same model (a job refuses workers whose weights differ from the driver's)."""
    import torch

    from pipeline.zoo import build_zoo_model

    path = Path(folder) / f"{spec['arch'].replace('/', '_')}.pt"
    if not path.exists():
        torch.manual_seed(0)
        net, _, _ = build_zoo_model(spec["arch"], spec["options"], NUM_CLASSES, None, False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    return path


def model_configs(tmp: str | Path) -> dict[str, ModelConfig]:
    """The three families' model sections, by family name."""
    return {
        "timm_convnext": ModelConfig(**TIMM_CONVNEXT, num_classes=NUM_CLASSES,
                                     checkpoint=str(timm_checkpoint(TIMM_CONVNEXT, tmp))),
        "timm_vit": ModelConfig(**TIMM_VIT, num_classes=NUM_CLASSES, checkpoint=str(timm_checkpoint(TIMM_VIT, tmp))),
        "hf_vit": ModelConfig(arch=f"hf/{hf_vit_folder(Path(tmp) / 'hf_vit')}"),
    }
