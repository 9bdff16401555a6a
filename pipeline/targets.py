"""Which class(es) each image is explained for: its label, every class present in it (``labels``:
the pointing game's protocol, one row per ground-truth class), or the model's top-1 / top-k classes.

One output row per (image, target): the rows of an image share its ``key`` and differ by
``target``. A target that cannot be used (no label, a label outside the model's classes) is not
an exception: it becomes an error row, so one bad sample never fails a shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TARGET_MODES = ("label", "labels", "top1", "topk")


@dataclass(frozen=True)
class Target:
    """One row to compute: ``target`` (class index) and where it came from (``label``, ``labels``,
    ``top1``, ``topk``); or ``error`` set (then ``target`` is what was asked for, if anything)."""

    target: int | None
    source: str
    error: str | None = None


def _present(classes: Sequence[int] | None, label: int | None, num_classes: int) -> list[Target]:
    """``labels`` mode: one target per class present (the sample's label list, else its label)."""
    if classes is None:
        classes = None if label is None else [label]
    if classes is None:
        return [Target(None, "labels", "sample has no labels (no json 'labels', .cls member or json 'label')")]
    if not classes:
        return [Target(None, "labels", "sample has no class present (empty json 'labels')")]
    out = []
    for c in dict.fromkeys(int(c) for c in classes):  # once per class: (key, target) stays unique
        error = None if 0 <= c < num_classes else f"label {c} is out of range for a model with {num_classes} classes"
        out.append(Target(c, "labels", error))
    return out


def pick_targets(
    scores: torch.Tensor,
    labels: Sequence[int | None],
    mode: str = "label",
    k: int = 1,
    label_lists: Sequence[Sequence[int] | None] | None = None,
) -> list[list[Target]]:
    """The targets of each image.

    ``scores``: class scores ``[B, C]`` of the clean images (for the prediction modes, and for
    ``C`` to range-check labels). ``labels``: the samples' labels, None where a sample has none.
    ``label_lists``: every class present per sample (json ``labels``), None where unknown.
    ``mode``: ``label`` (one target, the label), ``labels`` (one target per class present, in the
    list's order; the label alone when a sample has no list), ``top1`` (one target), ``topk``
    (``min(k, C)`` targets, best first). Returns B lists of ``Target``.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown targets mode {mode!r}; valid: {', '.join(TARGET_MODES)}")
    if scores.dim() != 2 or scores.shape[0] != len(labels):
        raise ValueError(f"scores must be [B, C] with B = {len(labels)} labels, got {list(scores.shape)}")
    num_classes = scores.shape[1]
    if mode == "labels":
        lists = label_lists if label_lists is not None else [None] * len(labels)
        return [_present(classes, label, num_classes) for classes, label in zip(lists, labels)]
    if mode == "label":
        out = []
        for label in labels:
            if label is None:
                out.append([Target(None, "label", "sample has no label (no .cls member or json 'label')")])
            elif not 0 <= label < num_classes:
                # A label that does not fit the int32 `target` column is reported, not stored.
                stored = int(label) if -(2**31) <= label < 2**31 else None
                out.append([Target(stored, "label",
                                   f"label {label} is out of range for a model with {num_classes} classes")])
            else:
                out.append([Target(int(label), "label")])
        return out
    n = 1 if mode == "top1" else min(k, num_classes)
    top = scores.detach().float().topk(n, dim=1).indices.cpu().tolist()
    return [[Target(int(c), mode) for c in row] for row in top]
