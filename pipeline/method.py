"""The job's attribution method: built once per (model, method) from the config, then called per
batch; its `Explanation` becomes the method's columns of a part (``pipeline.schema``).

The pipeline never re-implements a method: it calls ``extremal_core.make_explainer`` and
``explainer.explain(images, targets)``, and only names what the explanation's values are.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from extremal_core.methods import Explainer, Explanation, make_explainer
from extremal_core.settings import ExtremalSettings
from pipeline.config import JobConfig

# Explanation values written as columns of the same name (docs/parquet.md, "Columns per method"); the rest (e.g. the
# variant's own `rewards`, `achieved_areas`, `history`) stay in memory.
VALUE_COLUMNS = ("preserved", "scores", "phi0", "phi_min", "optimal_area", "optimal_area_reached", "channel_masks",
                 "inversion_original", "inversion_perturbed")


def build_explainer(cfg: JobConfig, model: torch.nn.Module) -> Explainer:
    """``cfg.method``'s explainer for ``model`` (prepared once: a private model copy, its rewrites,
    batch bounds). The methods that take engine settings get the ``extremal:`` section."""
    params = dict(cfg.method.params)
    if cfg.method.uses_engine_settings:
        params["settings"] = cfg.extremal
    try:
        return make_explainer(cfg.method.name, model, **params)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"method {cfg.method.name!r}: {exc}") from None


def method_columns(cfg: JobConfig, explainer: Explainer | None = None) -> dict[str, Any]:
    """What every row of this job's method has in common: ``method`` and, where the method has
    them, ``variant`` and ``areas`` (engine settings) and ``layer`` (as configured, or the one the
    explainer chose by default, e.g. Grad-CAM's)."""
    out: dict[str, Any] = {"method": cfg.method.name}
    if cfg.method.uses_engine_settings:
        out["variant"] = cfg.extremal.variant
        out["areas"] = list(cfg.extremal.areas)
    layer = cfg.method.params.get("layer", getattr(explainer, "layer", None))
    if layer is not None:
        out["layer"] = str(layer)
    return out


def maps_per_row(explainer: Explainer) -> int | None:
    """M, the maps each row holds, when the explainer tells it before running: one per area for
    the methods with engine settings; an explainer's own ``num_maps`` otherwise; else None."""
    settings = getattr(explainer, "settings", None)
    if isinstance(settings, ExtremalSettings):
        return len(settings.areas)
    num = getattr(explainer, "num_maps", None)
    return int(num) if isinstance(num, int) else None


def explain_rows(explainer: Explainer, images: torch.Tensor, targets: torch.Tensor) -> list[dict[str, Any]]:
    """``explain`` one batch (images ``[B, C, H, W]``, targets ``[B]``) -> B dicts with ``maps``
    (float32 ``[M, H, W]``), ``seconds`` and the method's value columns."""
    start = time.perf_counter()
    e: Explanation = explainer.explain(images, targets)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    elapsed = (time.perf_counter() - start) / max(1, images.shape[0])
    maps = e.maps.detach().float().cpu().numpy()  # [B, M, H, W]
    values = {k: v.detach().float().cpu().numpy() for k, v in e.values.items() if k in VALUE_COLUMNS}
    seconds = e.values.get("seconds")
    seconds = seconds.detach().float().cpu().numpy() if seconds is not None else np.full(e.batch_size, elapsed)
    rows = []
    for j in range(e.batch_size):
        row = {name: value[j] for name, value in values.items()}
        if "optimal_area_reached" in row:
            row["optimal_area_reached"] = bool(row["optimal_area_reached"])
        rows.append({**row, "maps": maps[j], "seconds": float(seconds[j])})
    return rows


def explain_in_chunks(
    explainer: Explainer, images: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> list[dict[str, Any]]:
    """``explain_rows`` over chunks of ``batch_size`` rows (images ``[N, C, H, W]``, targets
    ``[N]``) -> N dicts. A CUDA out-of-memory error halves the chunk size and retries the chunk
    (the rest of the call keeps the smaller size); only a chunk of one row that still does not fit
    raises, failing the shard (which the driver retries)."""
    rows: list[dict[str, Any]] = []
    lo, bs = 0, max(1, batch_size)
    while lo < images.shape[0]:
        try:
            rows.extend(explain_rows(explainer, images[lo : lo + bs], targets[lo : lo + bs]))
            lo += bs
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed attempt's blocks back before retrying
    return rows
