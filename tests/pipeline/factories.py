"""Model factories for the tests' jobs: the demo CNN with the same weights in every process (a
factory's weights are part of the config hash, and every worker must build the driver's model)."""

from __future__ import annotations

import torch
from torch import nn

from demo import build_demo_model


def seeded_demo_model(num_classes: int = 4) -> nn.Module:
    """The demo CNN, initialised from a fixed seed (the caller's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_demo_model(num_classes)
