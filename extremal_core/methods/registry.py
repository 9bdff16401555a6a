"""Attribution methods by name, in the idiom of the reward registry (and timm's `register_model`).

A method is a class `cls(model, **params)` whose constructor prepares everything that depends
only on the model and the parameters (a private copy of the model, its rewrites, batch bounds),
once, and whose `explain(images [B, C, H, W], targets [B]) -> Explanation` runs per batch:

    explainer = make_explainer("extremal", model, areas=[0.05, 0.1], max_iter=300)
    for images, targets in batches:
        explanation = explainer.explain(images, targets)   # maps [B, A, H, W]

A class may list the keywords it accepts in a classmethod `parameter_names()` (when its
constructor takes `**kwargs`); otherwise they are read from its constructor's signature. What the
rest of the house needs to know about a method (its value columns, map kind...) is its card
(`card.MethodCard`), given at registration. A method need not be registered: `get_method` also
takes `package.module:Class`, so a user's method runs without editing this package.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from .card import MethodCard
from .explanation import Explanation


class Explainer(Protocol):
    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation: ...


_METHODS: dict[str, type] = {}


def register_method(name: str, cls: type | None = None, *, card: MethodCard | None = None):
    """Add a method by name; usable as `register_method("mine", cls)` or as a class decorator.
    `card`: what the method is (set as the class's `card` attribute)."""

    def add(c: type) -> type:
        if card is not None:
            c.card = card
        _METHODS[name] = c
        return c

    return add if cls is None else add(cls)


def get_method(name: str) -> type:
    """The class of a registered method, or of `package.module:Class` (imported here)."""
    if ":" in name:
        return _import_method(name)
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; valid methods: {', '.join(available_methods())} or package.module:Class"
        ) from None


def _import_method(name: str) -> type:
    module, _, attr = name.partition(":")
    if not module or not attr.isidentifier():
        raise ValueError(f"a method outside the registry must look like 'package.module:Class', got {name!r}")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import method {name!r}: {exc}") from None
    if not isinstance(cls, type) or not callable(getattr(cls, "explain", None)):
        raise ValueError(f"method {name!r} is not a class with an explain(images, targets) method")
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def make_explainer(name: str | type, model: torch.nn.Module | None, **params: Any) -> Explainer:
    """The explainer of method `name` (or of a method class already resolved) for `model`, prepared
    once; unknown parameters are refused with the valid ones named (before any preparation work)."""
    cls = get_method(name) if isinstance(name, str) else name
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
