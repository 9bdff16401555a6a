"""Attribution methods by name, each prepared once per model, then `explain(images, targets)`.

    from extremal_core import make_explainer
    explainer = make_explainer("extremal", model, areas=[0.05, 0.1], max_iter=300)
    explanation = explainer.explain(images, targets)   # maps [B, 2, H, W], labels (0.05, 0.1)

Importing this package registers the built-in methods (`available_methods()`); each declares its
card (`MethodCard`: value columns, map kind...) beside its class.
"""

from . import backprop, center, extremal, extremal_channels, meaningful_perturbation, rise  # noqa: F401  (registration on import)
from .card import Column, MethodCard, Smoothing, card_of, method_defaults
from .explanation import Explanation
from .registry import Explainer, available_methods, get_method, make_explainer, register_method

__all__ = [
    "Column", "Explainer", "Explanation", "MethodCard", "Smoothing", "available_methods", "card_of", "get_method",
    "make_explainer", "method_defaults", "register_method",
]
