"""A method's card: what the rest of the house needs to know about a method, declared once,
beside its class (``@register_method("name", card=MethodCard(...))`` or a class attribute
``card``). The pipeline reads nothing else about a method:

- ``columns``: the per-row values of its ``Explanation`` that are written to the output, each with
  its type as a plain string (the pipeline maps it to Arrow; this package never imports pyarrow)
  and its shape per row. Values not named here stay in memory.
- ``maps``: what its maps are: ``mask`` (values in [0, 1], comparable across rows: the report
  draws them on a fixed [0, 1] colour scale and frames the optimal area), ``signed`` or
  ``positive`` (arbitrary scale: drawn by each map's own min..max).
- ``smooth``: the Gaussian (a ``Smoothing``) the pointing game blurs the maps with, at the
  original size, before taking the argmax, as TorchRay's pointing-game benchmark
  (``examples/attribution_benchmark.py``) does for that method: extremal perturbation
  ``0.09 x`` the shorter side, zero padding; gradient, deconvnet and guided backprop ``0.02 x`` the
  longer side, replicate padding (``torchray.attribution.common.saliency(smooth=0.02)``);
  Grad-CAM, excitation backprop and RISE none.
- ``engine_settings``: whether the method takes ``settings=`` (an ``ExtremalSettings``: the job
  config's ``extremal:`` section); its rows then carry the ``variant`` and ``areas`` columns.
A class without a card gets ``MethodCard()``: signed maps, no smoothing, no value columns.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ..settings import ExtremalSettings

# Column types a card may name; ``rgb_png`` is a float image [3, H, W] in [0, 1] stored as PNG bytes.
COLUMN_TYPES = ("float32", "int32", "bool", "string", "list<float32>", "list<list<float32>>", "rgb_png")
MAP_KINDS = ("mask", "signed", "positive")


@dataclass(frozen=True)
class Smoothing:
    """A Gaussian blur of a map ``[H, W]``: ``sigma = fraction x`` the map's ``side``
    (``"shorter"``: min(H, W), ``"longer"``: max(H, W)), ``padding`` ``"zeros"`` or
    ``"replicate"`` (TorchRay's ``imsmooth`` padding modes). ``fraction = 0``: none."""

    fraction: float = 0.0
    side: str = "shorter"
    padding: str = "zeros"

    def __post_init__(self) -> None:
        if not self.fraction >= 0 or self.side not in ("shorter", "longer") or self.padding not in ("zeros", "replicate"):
            raise ValueError(f"smoothing needs fraction >= 0, side shorter|longer, padding zeros|replicate: got {self}")

    def sigma(self, height: int, width: int) -> float:
        """The standard deviation in pixels on an ``height x width`` map."""
        return self.fraction * (min(height, width) if self.side == "shorter" else max(height, width))


@dataclass(frozen=True)
class Column:
    """One per-row value: ``name`` (the ``Explanation.values`` key and the column's name),
    ``type`` (one of ``COLUMN_TYPES``), ``shape`` per row (``[]``, ``[A]``, ``[A, K]``...: what the
    reader gets back) and a one-line ``doc``."""

    name: str
    type: str
    shape: str = "[]"
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.name!r}: type must be one of {', '.join(COLUMN_TYPES)}, got {self.type!r}")


@dataclass(frozen=True)
class MethodCard:
    """What a method is (see the module docstring)."""

    columns: tuple[Column, ...] = ()
    maps: str = "signed"
    smooth: Smoothing = Smoothing()
    engine_settings: bool = False

    def __post_init__(self) -> None:
        if self.maps not in MAP_KINDS:
            raise ValueError(f"maps must be one of {', '.join(MAP_KINDS)}, got {self.maps!r}")
        if not isinstance(self.smooth, Smoothing):
            raise ValueError(f"smooth must be a Smoothing, got {self.smooth!r}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"a column is declared twice: {names}")

    @property
    def bounded(self) -> bool:
        """Whether the maps are masks in [0, 1] (drawn on a fixed scale, never rescaled)."""
        return self.maps == "mask"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def card_of(cls: type) -> MethodCard:
    """The card a method class declares, or the default one."""
    card = getattr(cls, "card", None)
    return card if isinstance(card, MethodCard) else MethodCard()


def method_defaults(cls: type) -> dict[str, Any]:
    """The method's parameters with their defaults (from its constructor; for a method with engine
    settings, the ``ExtremalSettings`` defaults too): what a config leaves unsaid."""
    out: dict[str, Any] = {}
    params = list(inspect.signature(cls).parameters.values())[1:]  # the first one is the model
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "settings":
            continue
        if p.default is not inspect.Parameter.empty:
            out[p.name] = p.default
    if card_of(cls).engine_settings:
        out.update(ExtremalSettings().flat())
    return out
