"""Extremal perturbations and smooth masks (Fong, Patrick, Vedaldi, ICCV 2019), batched.

    from extremal_core import extremal_perturbation, make_explainer
    result = extremal_perturbation(model, images, targets, areas=[0.05, 0.1], variant="preserve")
    result.masks  # [B, A, H, W]

    explainer = make_explainer("extremal", model, areas=[0.05, 0.1])  # prepared once per model
    explainer.explain(images, targets).maps  # [B, A, H, W]
"""

from .api import channel_perturbation, extremal_perturbation
from .channels import ChannelResult
from .methods import Explanation, available_methods, make_explainer, register_method
from .methods.extremal import ExtremalResult
from .rewards import available_rewards, register_reward
from .settings import ExtremalSettings

__all__ = [
    "ChannelResult",
    "Explanation",
    "ExtremalResult",
    "ExtremalSettings",
    "available_methods",
    "available_rewards",
    "channel_perturbation",
    "extremal_perturbation",
    "make_explainer",
    "register_method",
    "register_reward",
]
