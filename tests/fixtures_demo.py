"""Session fixture: the demo assets (WebDataset shards + trained checkpoint) built once, the
trained model, and a held-out synthetic set.

Registered for every test in ``tests/conftest.py``. The assets live at a fixed folder under the
session's base temp dir, so ``ensure_demo_assets`` builds them once per session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from demo import DemoAssets, build_demo_model, ensure_demo_assets, make_synthetic_images

HELDOUT_SEED = 12345  # distinct from the shard (seed) and training (seed + 1) sets


@dataclass(frozen=True)
class DemoBundle:
    """``model``: the trained demo CNN (eval, CPU) loaded from ``assets.checkpoint``.
    ``heldout_images`` uint8 [N, 64, 64, 3], ``heldout_labels`` [N], ``heldout_boxes`` [N, 4]."""

    assets: DemoAssets
    model: nn.Module
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    heldout_boxes: np.ndarray


@pytest.fixture(scope="session")
def demo_model_and_data(tmp_path_factory: pytest.TempPathFactory) -> DemoBundle:
    """Demo shards (4 x 8 samples, 64x64, 4 classes) + trained model + 400 held-out images."""
    # One thread: the suite shares 2 cores with other processes, where 2 threads can be 5x slower.
    assets = ensure_demo_assets(tmp_path_factory.getbasetemp() / "demo_assets", num_threads=1)
    model = build_demo_model(assets.num_classes)
    model.load_state_dict(torch.load(assets.checkpoint, map_location="cpu", weights_only=True))
    images, labels, boxes = make_synthetic_images(400, assets.size, assets.num_classes, HELDOUT_SEED)
    return DemoBundle(assets, model.eval(), images, labels, boxes)
