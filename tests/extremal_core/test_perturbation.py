import pytest
import torch
from torchray.attribution.extremal_perturbation import Perturbation
from torchray.utils import imsmooth

from extremal_core.perturbation import build_pyramid, gaussian_blur, perturb


@pytest.mark.parametrize("sigma", [0.0, 0.7, 3.0, 20.0])
def test_blur_matches_reference(sigma):
    x = torch.randn(2, 3, 40, 50)
    assert torch.allclose(gaussian_blur(x, sigma), imsmooth(x, sigma), atol=1e-5)


@pytest.mark.parametrize("kind", ["blur", "fade"])
def test_pyramid_and_blend_match_reference(kind):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    ref = Perturbation(x, num_levels=8, type=kind)
    pyramid = build_pyramid(x, 8, 20.0, kind)
    assert torch.allclose(pyramid[0], ref.pyramid, atol=1e-5)
    masks = torch.rand(1, 4, 32, 32)
    masks[0, 0] = 1.0
    masks[0, 1] = 0.0
    ours = perturb(pyramid, masks)[0]
    assert torch.allclose(ours, ref.apply(masks[0].unsqueeze(1)), atol=1e-5)
    assert torch.allclose(ours[0], x[0], atol=1e-6)  # mask 1 keeps the image
    assert torch.allclose(ours[1], pyramid[0, 0], atol=1e-6)  # mask 0 perturbs fully


def test_blend_gradient_is_the_level_difference():
    x = torch.randn(1, 3, 16, 16)
    pyramid = build_pyramid(x, 8, 20.0, "fade")
    masks = torch.full((1, 1, 16, 16), 0.3, requires_grad=True)
    perturb(pyramid, masks).sum().backward()
    # fade is linear in the mask: d/dm (x·m) = x
    assert torch.allclose(masks.grad[0, 0], x[0].sum(0), atol=1e-5)


def test_unknown_perturbation():
    with pytest.raises(ValueError, match="valid perturbations: blur, fade"):
        build_pyramid(torch.zeros(1, 3, 8, 8), kind="noise")
