"""The demo job's data and model: synthetic known-answer images in WebDataset shards
(``demo.data``), a small CNN and its training (``demo.model``), and both built once and cached
(``demo.assets``). Used by ``configs/demo.yaml`` (factory ``demo.model:build_demo_model``), the
tests and the benchmarks; no part of the pipeline depends on it."""

from demo.assets import DemoAssets, demo_root, ensure_demo_assets
from demo.data import CLASSES, make_synthetic_images
from demo.model import DEMO_MEAN, DEMO_STD, DemoNet, build_demo_model, predict, to_model_input, train_demo_model

__all__ = [
    "CLASSES",
    "DEMO_MEAN",
    "DEMO_STD",
    "DemoAssets",
    "DemoNet",
    "build_demo_model",
    "demo_root",
    "ensure_demo_assets",
    "make_synthetic_images",
    "predict",
    "to_model_input",
    "train_demo_model",
]
