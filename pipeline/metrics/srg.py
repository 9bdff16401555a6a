"""The symmetric relevance gain (SRG) from the deletion / insertion curves, without another
forward pass.

Blücher, Vielhaben and Strodthoff ("Decoupling Pixel Flipping and Occlusion Strategy for
Consistent XAI Benchmarks", TMLR 2024) score a saliency map by the area between its
least-relevant-first (LeRF) and most-relevant-first (MoRF) removal curves, both removing pixels
with the same occluder:

    SRG = AUC(LeRF) - AUC(MoRF)

(higher is better: removing the least relevant pixels should keep the prediction, removing the
most relevant ones should destroy it). The deletion curve is the MoRF curve. The LeRF curve is
the insertion curve read backwards: removing the ``j * step`` least relevant pixels leaves the
``n * step - j * step`` most relevant ones, which is insertion's point ``n - j`` (exactly, when
``step`` divides ``H * W``: always at the default step, one row of ``W`` pixels; ties in the
saliency broken the same way by the stable rank). The two share the occluder only when the
deletion substrate is insertion's (``blur``): with another deletion substrate there is no SRG
(``srg`` returns NaN for those rows, see ``pipeline.evaluation.deletion_task``).
"""

from __future__ import annotations

import torch

from .deletion_insertion import auc


def lerf_curve(insertion_curves: torch.Tensor) -> torch.Tensor:
    """The LeRF removal curves ``[B, n + 1]`` (point j: ``j * step`` least relevant pixels
    replaced) of insertion curves ``[B, n + 1]`` with the same substrate and step."""
    return insertion_curves.flip(-1)


def srg(deletion_curves: torch.Tensor, insertion_curves: torch.Tensor) -> torch.Tensor:
    """``AUC(LeRF) - AUC(MoRF)`` per row, ``[B]``, from the deletion (MoRF) and insertion curves
    ``[B, n + 1]`` of one substrate and step (trapezoid rule on [0, 1], as their AUCs)."""
    if deletion_curves.shape != insertion_curves.shape:
        raise ValueError(f"curves differ in shape: {list(deletion_curves.shape)} vs {list(insertion_curves.shape)}")
    return auc(lerf_curve(insertion_curves)) - auc(deletion_curves)
