"""Side by side with the reference implementation (TorchRay 1.0.0.2) on the same model and image."""

import pytest
import torch
from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep

from extremal_core import extremal_perturbation
from extremal_core.optimize import model_scores, variant_inputs, variant_reward
from extremal_core.perturbation import build_pyramid
from extremal_core.rewards import simple_reward
from extremal_core.settings import ExtremalSettings

AREAS = [0.05, 0.2]
SETTINGS = dict(max_iter=100, step=4, sigma=10.0)


def reward_of(model, image, target, masks, variant, perturbation):
    """The variant's reward of given masks `[A, H, W]`, evaluated the way our engine does."""
    settings = ExtremalSettings(areas=tuple(AREAS), variant=variant, perturbation=perturbation)
    pyramid = build_pyramid(image, settings.num_levels, settings.max_blur, perturbation)
    with torch.no_grad():
        x = variant_inputs(pyramid, masks.unsqueeze(0), variant)
        t = torch.full((len(AREAS),), target)
        return variant_reward(model_scores(model, x, settings), t, simple_reward, variant)


@pytest.mark.parametrize("variant", ["preserve", "delete", "dual"])
@pytest.mark.parametrize("perturbation", ["blur", "fade"])
def test_masks_and_rewards_match_torchray(demo_images, variant, perturbation):
    model, images, labels, _ = demo_images
    image, target = images[:1], int(labels[0])
    ref_masks, _ = torchray_ep(model, image, target, areas=AREAS, perturbation=perturbation, variant=variant, **SETTINGS)
    for p in model.parameters():  # TorchRay leaves the weights frozen; we restore what we find
        p.requires_grad_(True)
    ours = extremal_perturbation(model, image, target, areas=AREAS, perturbation=perturbation, variant=variant, **SETTINGS)
    ref_masks = ref_masks[:, 0]
    ref_reward = reward_of(model, image, target, ref_masks, variant, perturbation)
    for a in range(len(AREAS)):
        corr = torch.corrcoef(torch.stack([ref_masks[a].flatten(), ours.masks[0, a].flatten()]))[0, 1]
        assert corr >= 0.95, f"area {AREAS[a]}: mask correlation {corr:.3f}"
        assert ours.rewards[0, a] == pytest.approx(ref_reward[a].item(), rel=0.02, abs=1e-3)
