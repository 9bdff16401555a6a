"""The small problem on which ``tests/evaluation/test_mprt.py`` checks eMPRT and sMPRT against
Quantus 0.6.0 (not installed in the test environment: its numbers are recorded there). Running
this module prints them:

    pip install --no-deps --target /tmp/qref quantus==0.6.0 scikit-learn joblib threadpoolctl \\
        scikit-image lazy-loader imageio tifffile opencv-python-headless cachetools cloudpickle narwhals
    PYTHONPATH=.:/tmp/qref python -m tests.evaluation.quantus_mprt_reference

The problem: a seeded conv net on 6 seeded 1x8x8 inputs, the explanation the absolute input
gradient of the target's logit (Captum's ``Saliency``, Quantus' ``explain(method="Saliency")``),
the fully randomised model Quantus' bottom-up one (``randomized_like_quantus``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

SEED = 42  # Quantus' default; it re-seeds with SEED + 1 before each layer's reset


def problem() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """(model, x ``[6, 1, 8, 8]`` float32, y ``[6]``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32)
    return model, x, np.arange(6) % 5


def randomized_like_quantus(model: nn.Module) -> nn.Module:
    """Every module with ``reset_parameters`` reset, input side first, each after
    ``torch.manual_seed(SEED + 1)`` (Quantus' ``get_random_layer_generator``, order bottom_up)."""
    out = copy.deepcopy(model)
    for _, m in out.named_modules():
        if hasattr(m, "reset_parameters"):
            torch.manual_seed(SEED + 1)
            m.reset_parameters()
    return out


def saliency(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|d logit_y / d x| ``[B, 1, H, W]`` float32."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32)).requires_grad_(True)
    model(xt).gather(1, torch.from_numpy(np.asarray(y))[:, None]).sum().backward()
    return xt.grad.abs().numpy()


def main() -> None:
    import quantus

    model, x, y = problem()

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, inputs, targets)

    e = quantus.EfficientMPRT(compute_extra_scores=True, disable_warnings=True)
    scores = e(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain, softmax=True, device="cpu")
    print("quantus", quantus.__version__)
    print("emprt", [round(float(v), 10) for v in scores])
    for k in ("scores_fraction_explanation", "scores_fraction_model", "scores_delta_explanation_vs_models"):
        print(k, [round(float(v), 10) for v in e.scores_extra[k]])
    print("check saliency == quantus.explain:",
          np.abs(saliency(model, x, y) - quantus.explain(model, x, y, method="Saliency")).max())
    np.random.seed(0)
    s = quantus.SmoothMPRT(nr_samples=3, skip_layers=True, return_last_correlation=True, disable_warnings=True)
    scores = s(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=quantus.explain,
               explain_func_kwargs={"method": "Saliency"}, device="cpu")
    print("smprt", [round(float(v), 10) for v in scores])


if __name__ == "__main__":
    main()
