"""Channel attribution (supplement section 4) as a prepared explainer: channel masks at a named
layer, and the channel-saliency map Σ_k (1 - m_k)·|Φ_1(x)_k| as the explanation's maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..channels import ChannelResult, find_layer, optimize_channels
from ..inputs import checked_call, resolve_settings
from ..network import engine_model
from ..rewards import Reward
from ..settings import ExtremalSettings
from .card import Column, MethodCard
from .explanation import Explanation
from .extremal import PHI0
from .registry import register_method

# Channel masks are cheap (no smooth masks, no pyramid): the bound is on the network's memory.
_MASKS_PER_BATCH = 64


def as_explanation(result: ChannelResult) -> Explanation:
    """maps = the channel-saliency maps `[B, A, H, W]`, labels = the areas, values: channel_masks
    `[B, A, K]`, rewards `[B, A]`, phi0 `[B]` (and history `[B, A, 2, T]` when kept)."""
    if result.saliency is None:
        raise ValueError(
            f"layer {result.layer!r} has no spatial extent, so there is no saliency map; "
            "use run() for its channel masks"
        )
    values = {"channel_masks": result.channel_masks, "rewards": result.rewards, "phi0": result.phi0}
    if result.history is not None:
        values["history"] = result.history
    return Explanation(maps=result.saliency, labels=result.areas, values=values)


# Per row: A = len(areas), K = the layer's channels. The optimal area and the inversions are written
# by the channel job (feature inversion of the layer's activations), not by `explain`.
CARD = MethodCard(
    columns=(
        PHI0,
        Column("channel_masks", "list<list<float32>>", "[A, K]", "the channel mask of each area"),
        Column("optimal_area", "float32", "[]", "the smallest area whose reward reaches phi0 (else the largest)"),
        Column("optimal_area_reached", "bool", "[]", "whether some area's reward reached phi0"),
        Column("inversion_original", "rgb_png", "[3, H, W]", "feature inversion of the original activations"),
        Column("inversion_perturbed", "rgb_png", "[3, H, W]",
               "feature inversion of the activations perturbed by the optimal channel mask"),
    ),
    maps="positive",
    engine_settings=True,
)


@register_method("extremal_channels", card=CARD)
class ChannelExplainer:
    """Channel masks at `layer` (a name from `model.named_modules()`) with one model and one set
    of settings (as `ExtremalExplainer`), over many batches.

    Prepared once: a private copy of the model without graph rewrites (the hook needs the named
    module; folding BatchNorm would remove or rename layers), its layer, the micro-batch bound.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layer: str,
        settings: ExtremalSettings | None = None,
        reward: str | Reward | None = None,
        **overrides,
    ):
        find_layer(model, layer)  # a wrong name fails before the model is copied
        self.settings, self.reward = resolve_settings(settings, reward, overrides)
        self.layer = layer
        self.model = engine_model(model, self.settings, rewrites=False)
        self.module = find_layer(self.model, layer)
        copies = 2 if self.settings.optim.variant == "dual" else 1
        bound = self.settings.execution.max_masks_per_batch or _MASKS_PER_BATCH
        self.images_per_batch = max(1, bound // (len(self.settings.optim.areas) * copies))

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return ("layer", "settings", "reward", *ExtremalSettings.group_of())

    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation:
        """maps `[B, A, H, W]` (channel saliency), labels: the areas, values: see `as_explanation`."""
        return as_explanation(self.run(images, targets))

    def run(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> ChannelResult:
        """The channel masks of `images` `[B, C, H, W]` for `targets` (one class per image, or one int)."""
        t = checked_call(images, targets)
        parts = []
        for lo in range(0, images.shape[0], self.images_per_batch):
            chunk = slice(lo, lo + self.images_per_batch)
            parts.append(optimize_channels(self.model, self.module, images[chunk], t[chunk], self.reward, self.settings))
        out = {k: torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None for k in parts[0]}
        return ChannelResult(areas=self.settings.optim.areas, layer=self.layer, targets=t, **out)
