"""SRG from the deletion and insertion curves: the insertion curve read backwards is the LeRF
removal curve computed by its own forward passes (same blur occluder, no ties)."""

from __future__ import annotations

import torch

from pipeline.metrics.deletion_insertion import auc, causal_curves
from pipeline.metrics.srg import lerf_curve, srg


def test_insertion_backwards_is_the_lerf_curve() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(24, 5),
    ).eval()
    x = torch.randn(3, 3, 12, 10)
    sal = torch.rand(3, 12, 10)  # continuous: no ties
    t = torch.tensor([0, 3, 4])
    for step in (10, 24):  # one row; and 24 pixels (both divide H * W = 120)
        d = causal_curves(model, x, sal, t, "deletion", substrate="blur", step=step)
        ins = causal_curves(model, x, sal, t, "insertion", step=step)
        # LeRF by its own passes: MoRF deletion of the negated saliency.
        lerf = causal_curves(model, x, -sal, t, "deletion", substrate="blur", step=step).curves
        torch.testing.assert_close(lerf_curve(ins.curves), lerf, rtol=0, atol=1e-6)
        torch.testing.assert_close(srg(d.curves, ins.curves), auc(lerf) - d.auc, rtol=0, atol=1e-6)
        torch.testing.assert_close(srg(d.curves, ins.curves), ins.auc - d.auc, rtol=0, atol=1e-6)
