"""The demo's cached assets: WebDataset shards of synthetic images plus a trained checkpoint,
built once under a root folder behind a stamp JSON."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from demo.data import atomic_write, make_synthetic_images, write_shard
from demo.model import DEMO_MEAN, DEMO_STD, train_demo_model

DEMO_FACTORY = "demo.model:build_demo_model"
DEMO_CHECKPOINT = "demo_model.pt"

# Bump when the generator, the model or the training recipe changes: invalidates cached assets.
_ASSETS_VERSION = 1


@dataclass(frozen=True)
class DemoAssets:
    """What ``ensure_demo_assets`` built.

    ``boxes`` maps each sample's ``__key__`` to its object box (x0, y0, x1, y1), half-open pixels;
    ``labels`` maps it to the class.
    """

    root: str
    shards: list[str]
    checkpoint: str
    boxes: dict[str, tuple[int, int, int, int]]
    labels: dict[str, int]
    size: int
    num_classes: int
    mean: tuple[float, float, float] = DEMO_MEAN
    std: tuple[float, float, float] = DEMO_STD
    factory: str = DEMO_FACTORY
    train_seconds: float | None = field(default=None, compare=False)


def ensure_demo_assets(
    root: str | os.PathLike = "./outputs/demo_data",
    num_shards: int = 4,
    per_shard: int = 8,
    size: int = 64,
    seed: int = 0,
    num_classes: int = 4,
    train_images: int = 1200,
    epochs: int = 3,
    num_threads: int | None = None,
) -> DemoAssets:
    """Build (once) the demo shards and a trained checkpoint under ``root``; return where they are.

    Layout: ``root/shards/demo-000000.tar ...`` (keys ``demo_<shard>_<index>``, no dots),
    ``root/demo_model.pt`` (a ``state_dict`` for ``build_demo_model(num_classes)``, loadable with
    ``torch.load(path, weights_only=True)``), ``root/stamp.json`` (the parameters, the keys' labels
    and boxes). Every file is written atomically and the stamp last, so an interrupted build is
    rebuilt by the next call; a call whose parameters match the stamp and whose files exist
    returns without touching anything.

    The model is trained on a separate set of ``train_images`` images (seed ``seed + 1``), not on
    the images in the shards; ``num_threads`` is passed to ``train_demo_model``.
    """
    root_p = Path(root)
    shard_dir = root_p / "shards"
    shards = [shard_dir / f"demo-{i:06d}.tar" for i in range(num_shards)]
    checkpoint = root_p / "demo_model.pt"
    stamp_path = root_p / "stamp.json"
    params = {
        "version": _ASSETS_VERSION,
        "num_shards": num_shards,
        "per_shard": per_shard,
        "size": size,
        "seed": seed,
        "num_classes": num_classes,
        "train_images": train_images,
        "epochs": epochs,
    }

    def assets(stamp: dict, train_seconds: float | None = None) -> DemoAssets:
        return DemoAssets(
            root=str(root_p),
            shards=[str(p) for p in shards],
            checkpoint=str(checkpoint),
            boxes={k: tuple(v["box"]) for k, v in stamp["samples"].items()},
            labels={k: int(v["label"]) for k, v in stamp["samples"].items()},
            size=size,
            num_classes=num_classes,
            train_seconds=train_seconds,
        )

    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = None
    if stamp is not None and stamp.get("params") == params and all(p.exists() for p in [*shards, checkpoint]):
        return assets(stamp)

    images, labels, boxes = make_synthetic_images(num_shards * per_shard, size, num_classes, seed)
    samples: dict[str, dict] = {}
    for s, path in enumerate(shards):
        rows = []
        for j in range(per_shard):
            i = s * per_shard + j
            key = f"demo_{s:06d}_{j:06d}"
            box = [int(v) for v in boxes[i]]
            rows.append((key, images[i], int(labels[i]), box))
            samples[key] = {"label": int(labels[i]), "box": box}
        write_shard(path, rows)

    t0 = time.perf_counter()
    train_x, train_y, _ = make_synthetic_images(train_images, size, num_classes, seed + 1)
    model = train_demo_model(
        train_x, train_y, epochs=epochs, seed=seed, num_classes=num_classes, num_threads=num_threads
    )
    train_seconds = time.perf_counter() - t0
    atomic_write(checkpoint, lambda f: torch.save(model.state_dict(), f))

    stamp = {"params": params, "samples": samples, "train_seconds": round(train_seconds, 2)}
    atomic_write(stamp_path, lambda f: f.write(json.dumps(stamp, indent=1).encode()))
    return assets(stamp, train_seconds)


def demo_root(factory: str | None, checkpoint: str | None) -> str | None:
    """The assets folder when a job's model is the demo's (its factory with a local
    ``demo_model.pt`` checkpoint), else None: the demo jobs build the assets there first."""
    if factory != DEMO_FACTORY or not checkpoint or "://" in checkpoint or Path(checkpoint).name != DEMO_CHECKPOINT:
        return None
    return str(Path(checkpoint).parent)
