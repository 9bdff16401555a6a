"""The channel job's work (``jobs.channels``, docs/channels.md): the registry's ``extremal_channels``
at a named layer, plus per image the feature inversions of the original activations and of the
activations perturbed by the optimal channel mask, written as PNG columns beside the channel masks
and the channel-saliency maps.

The optimal channel mask is the one of the smallest area whose reward reaches the clean score
(``rewards >= phi0``), else of the largest area (``optimal_area`` / ``optimal_area_reached``, as
a* of the spatial masks). Batched: one inversion optimisation per batch, 2B images (original and
perturbed of each image from the same seeded start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import torch

from extremal_core.inversion import InversionSettings, channel_inversions
from extremal_core.methods import Explainer, Explanation
from pipeline.config import JobConfig
from pipeline.tasks import AttributionTask

METHOD = "extremal_channels"


def inversion_settings(pairs: Sequence[str]) -> InversionSettings:
    """``["max_iter=50", "learning_rate=50"]`` -> InversionSettings (docs/channels.md defaults otherwise).
    Raises ValueError naming a bad key or value."""
    known = {f.name: f.type for f in fields(InversionSettings)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"bad inversion setting {pair!r}; valid keys: {', '.join(known)}")
        try:
            values[key] = int(text) if known[key] in (int, "int") else float(text)
        except ValueError:
            raise ValueError(f"inversion setting {key} must be a number, got {text!r}") from None
    return replace(InversionSettings(), **values)


def inversion_evaluation(settings: InversionSettings) -> dict[str, Any]:
    """What ``run_job(..., evaluation=)`` hashes with the config for a channel job."""
    return {"inversion": asdict(settings)}


class InvertingExplainer:
    """``extremal_channels``' explainer with the inversions added to its values:
    ``inversion_original`` / ``inversion_perturbed`` ``[B, 3, H, W]`` in [0, 1] (the model input
    de-normalised with ``mean`` / ``std``), ``optimal_area`` ``[B]``, ``optimal_area_reached``
    ``[B]``. Everything else (``settings``, ``model``...) is the wrapped explainer's."""

    def __init__(self, inner: Explainer, mean: Sequence[float], std: Sequence[float], settings: InversionSettings) -> None:
        self.inner = inner
        self.inversion = settings
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def explain(self, images: torch.Tensor, targets: Any) -> Explanation:
        e = self.inner.explain(images, targets)
        rewards, phi0, masks = e.values["rewards"], e.values["phi0"], e.values["channel_masks"]  # [B, A], [B], [B, A, K]
        reached = rewards >= phi0[:, None]
        first = torch.where(reached.any(1), reached.float().argmax(1), torch.full_like(phi0, rewards.shape[1] - 1).long())
        rows = torch.arange(masks.shape[0], device=masks.device)
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        bounds = (-mean / std, (1 - mean) / std)  # black and white pixels in the model's input space
        with torch.enable_grad():  # the worker may call under no_grad; the inversion needs the image's gradient
            original, perturbed = channel_inversions(self.inner.model, self.inner.module, images, masks[rows, first],
                                                     self.inversion, bounds)
        areas = torch.tensor(list(e.labels), dtype=torch.float32, device=images.device)
        values = {**e.values, "optimal_area": areas[first], "optimal_area_reached": reached.any(1),
                  "inversion_original": (original * std + mean).clamp(0, 1),
                  "inversion_perturbed": (perturbed * std + mean).clamp(0, 1)}
        return Explanation(maps=e.maps, labels=e.labels, values=values)


class ChannelTask(AttributionTask):
    """The attribution task with ``InvertingExplainer`` around the job's ``extremal_channels``.
    Workers build it as ``task_class(cfg, device)``: pass
    ``functools.partial(ChannelTask, inversion=settings)`` for other inversion settings."""

    def __init__(self, cfg: JobConfig, device: torch.device, inversion: InversionSettings | None = None) -> None:
        if cfg.method.name != METHOD:
            raise ValueError(f"the channel job runs method.name: {METHOD}, not {cfg.method.name!r}")
        inversion = inversion or InversionSettings()
        # The inversion settings change the rows: they are hashed with the config (run_job's evaluation).
        super().__init__(cfg, device, inversion_evaluation(inversion))
        pre = self.loaded.preprocess
        self.explainer = InvertingExplainer(self.explainer, pre.mean, pre.std, inversion)
