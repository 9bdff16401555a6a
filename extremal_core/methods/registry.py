"""Attribution methods by name, in the idiom of the reward registry (and timm's `register_model`).

A method is a class `cls(model, **params)` whose constructor prepares everything that depends
only on the model and the parameters (a private copy of the model, its rewrites, batch bounds),
once, and whose `explain(images [B, C, H, W], targets [B]) -> Explanation` runs per batch:

    explainer = make_explainer("extremal", model, areas=[0.05, 0.1], max_iter=300)
    for images, targets in batches:
        explanation = explainer.explain(images, targets)   # maps [B, A, H, W]

A class may list the keywords it accepts in a classmethod `parameter_names()` (when its
constructor takes `**kwargs`); otherwise they are read from its constructor's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from .explanation import Explanation


class Explainer(Protocol):
    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation: ...


_METHODS: dict[str, type] = {}


def register_method(name: str, cls: type | None = None):
    """Add a method by name; usable as `register_method("mine", cls)` or as a class decorator."""

    def add(c: type) -> type:
        _METHODS[name] = c
        return c

    return add if cls is None else add(cls)


def get_method(name: str) -> type:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)


def make_explainer(name: str, model: torch.nn.Module | None, **params: Any) -> Explainer:
    """The explainer of method `name` for `model`, prepared once; unknown parameters are refused
    with the valid ones named (before any preparation work)."""
    cls = get_method(name)
    valid = parameter_names(cls)
    unknown = sorted(set(params) - set(valid)) if valid is not None else []
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {name!r}; valid parameters: {', '.join(valid)}")
    return cls(model, **params)


def parameter_names(cls: type) -> tuple[str, ...] | None:
    """The keywords `cls(model, ...)` accepts, or None when they cannot be known (a bare `**kwargs`)."""
    if hasattr(cls, "parameter_names"):
        return tuple(cls.parameter_names())
    params = list(inspect.signature(cls).parameters.values())[1:]  # the first one is the model
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL)
