"""Extremal perturbations and smooth masks (Fong, Patrick, Vedaldi, ICCV 2019), batched.

    from extremal_core import extremal_perturbation
    result = extremal_perturbation(model, images, targets, areas=[0.05, 0.1], variant="preserve")
    result.masks  # [B, A, H, W]
"""

from .api import ExtremalResult, extremal_perturbation
from .channels import ChannelResult, channel_perturbation
from .rewards import available_rewards, register_reward
from .settings import ExtremalSettings

__all__ = [
    "ChannelResult",
    "ExtremalResult",
    "ExtremalSettings",
    "available_rewards",
    "channel_perturbation",
    "extremal_perturbation",
    "register_reward",
]
