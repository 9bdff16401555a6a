"""The published pointing-game numbers (TorchRay's table, shipped as
``published_pointing.csv`` beside this module), to print each cell of a run beside them."""

from __future__ import annotations

import csv
from importlib import resources

from pipeline.benchmark_models import ARCHS, DATASETS, PREFIX


def published_table() -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """``{(dataset, arch): {method: (all %, difficult %)}}``."""
    text = resources.files("pipeline.evaluation").joinpath("published_pointing.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    table: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for row in rows:
        table.setdefault((row["dataset"], row["arch"]), {})[row["method"]] = (float(row["all"]), float(row["difficult"]))
    return table


def parse_cell(text: str) -> tuple[str, str]:
    """``"voc07/vgg16"`` -> ``("voc07", "vgg16")``; ValueError naming the valid cells."""
    dataset, _, arch = text.partition("/")
    if dataset not in DATASETS or arch not in ARCHS:
        valid = ", ".join(f"{d}/{a}" for d in DATASETS for a in ARCHS)
        raise ValueError(f"--published must be one of {valid}, got {text!r}")
    return dataset, arch


def cell_of_model(arch: str | None, dataset: str | None) -> tuple[str, str] | None:
    """The table's cell of a ``torchray/<arch>`` model on ``dataset``; None for other models."""
    if arch is None or not arch.startswith(PREFIX) or dataset is None:
        return None
    return parse_cell(f"{dataset}/{arch[len(PREFIX):]}")
