"""The job's attribution method: built once per (model, method) from the config, then called per
batch; its `Explanation` becomes the method's columns of a part (``pipeline.schema``).

The pipeline never re-implements a method: it calls ``extremal_core.make_explainer`` and
``explainer.explain(images, targets)``, and only names what the explanation's values are.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch

from extremal_core.methods import Explainer, Explanation, MethodCard, card_of, get_method, make_explainer
from extremal_core.settings import ExtremalSettings
from pipeline.config import JobConfig


@functools.cache
def card_for(method: str) -> MethodCard:
    """The card of the method a row names (its ``method`` column), for the readers of an output
    (the pointing game, the report); a method this process cannot resolve (e.g. a user's, not
    importable here) gets the default card: signed maps, no smoothing."""
    try:
        return card_of(get_method(method))
    except ValueError:
        return MethodCard()


def build_explainer(cfg: JobConfig, model: torch.nn.Module) -> Explainer:
    """``cfg.method``'s explainer for ``model`` (prepared once: a private model copy, its rewrites,
    batch bounds). The methods that take engine settings get the ``extremal:`` section."""
    params = dict(cfg.method.params)
    if cfg.method.uses_engine_settings:
        params["settings"] = cfg.extremal
    try:
        return make_explainer(cfg.method.method_class, model, **params)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"method {cfg.method.name!r}: {exc}") from None


def method_columns(cfg: JobConfig, explainer: Explainer | None = None) -> dict[str, Any]:
    """What every row of this job's method has in common: ``method`` and, where the method has
    them, ``variant`` and ``areas`` (engine settings) and ``layer`` (as configured, or the one the
    explainer chose by default, e.g. Grad-CAM's)."""
    out: dict[str, Any] = {"method": cfg.method.name}
    if cfg.method.uses_engine_settings:
        out["variant"] = cfg.extremal.optim.variant
        out["areas"] = list(cfg.extremal.optim.areas)
    layer = cfg.method.params.get("layer", getattr(explainer, "layer", None))
    if layer is not None:
        out["layer"] = str(layer)
    return out


def maps_per_row(explainer: Explainer) -> int | None:
    """M, the maps each row holds, when the explainer tells it before running: one per area for
    the methods with engine settings; an explainer's own ``num_maps`` otherwise; else None."""
    settings = getattr(explainer, "settings", None)
    if isinstance(settings, ExtremalSettings):
        return len(settings.optim.areas)
    num = getattr(explainer, "num_maps", None)
    return int(num) if isinstance(num, int) else None


def explain_rows(
    explainer: Explainer, images: torch.Tensor, targets: torch.Tensor, card: MethodCard
) -> list[dict[str, Any]]:
    """``explain`` one batch (images ``[B, C, H, W]``, targets ``[B]``) -> B dicts with ``maps``
    (float32 ``[M, H, W]``), ``seconds`` and the value columns ``card`` declares (the explanation's
    other values stay here)."""
    start = time.perf_counter()
    e: Explanation = explainer.explain(images, targets)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    elapsed = (time.perf_counter() - start) / max(1, images.shape[0])
    maps = e.maps.detach().float().cpu().numpy()  # [B, M, H, W]
    kinds = {c.name: c.type for c in card.columns}
    values = {k: v.detach().cpu().numpy() for k, v in e.values.items() if k in kinds}
    values = {k: v.astype(bool) if kinds[k] == "bool" else v.astype(np.float32, copy=False) for k, v in values.items()}
    seconds = e.values.get("seconds")
    seconds = seconds.detach().float().cpu().numpy() if seconds is not None else np.full(e.batch_size, elapsed)
    return [
        {**{name: value[j] for name, value in values.items()}, "maps": maps[j], "seconds": float(seconds[j])}
        for j in range(e.batch_size)
    ]


def explain_in_chunks(
    explainer: Explainer, images: torch.Tensor, targets: torch.Tensor, batch_size: int, card: MethodCard
) -> list[dict[str, Any]]:
    """``explain_rows`` over chunks of ``batch_size`` rows (images ``[N, C, H, W]``, targets
    ``[N]``) -> N dicts. A CUDA out-of-memory error halves the chunk size and retries the chunk
    (the rest of the call keeps the smaller size); only a chunk of one row that still does not fit
    raises, failing the shard (which the driver retries)."""
    rows: list[dict[str, Any]] = []
    lo, bs = 0, max(1, batch_size)
    while lo < images.shape[0]:
        try:
            rows.extend(explain_rows(explainer, images[lo : lo + bs], targets[lo : lo + bs], card))
            lo += bs
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed attempt's blocks back before retrying
    return rows
