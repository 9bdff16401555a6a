import torch
import torch.nn.functional as F

from extremal_core import channel_perturbation

READ = (10, 70)  # the channels class 0 reads


def designed_model(channels: int = 128) -> torch.nn.Module:
    """Class 0 reads only channels 10 and 70 of layer "1" (after the ReLU); the answer is known.

    The weights are large so the reward gradient can outgrow the area penalty (as real logits do).
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, 3),
    )
    with torch.no_grad():
        model[0].bias.fill_(1.0)  # every channel active
        model[4].weight.zero_()
        model[4].weight[0, READ[0]] = 50.0
        model[4].weight[0, READ[1]] = 30.0
    return model.eval()


def test_channel_mask_keeps_the_channels_the_class_reads():
    model = designed_model()
    images = torch.rand(2, 3, 16, 16)
    result = channel_perturbation(model, images, targets=[0, 0], areas=[0.1], layer="1", max_iter=300)
    assert result.channel_masks.shape == (2, 1, 128)
    for b in range(2):
        kept = (result.channel_masks[b, 0] > 0.5).nonzero().flatten().tolist()
        assert set(READ) <= set(kept) and len(kept) <= 0.15 * 128
    # preserving a tenth of the channels, the right ones, keeps the clean score
    assert (result.rewards[:, 0] >= 0.9 * result.phi0).all()


def test_channel_saliency_is_the_removed_activation():
    model = designed_model()
    images = torch.rand(1, 3, 16, 16)
    result = channel_perturbation(model, images, targets=0, areas=[0.5], layer="0", max_iter=20)
    activations = model[0](images).abs()  # [1, 128, 16, 16]
    expected = ((1 - result.channel_masks[0, 0])[:, None, None] * activations[0]).sum(0)
    assert result.saliency.shape == (1, 1, 16, 16)
    assert torch.allclose(result.saliency[0, 0], expected, atol=1e-4)


def test_channel_saliency_is_upsampled_to_the_image():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    ).eval()
    images = torch.rand(2, 3, 20, 20)
    result = channel_perturbation(
        model, images, targets=[0, 1], areas=[0.25, 0.5], layer="1", max_iter=5, keep_history=True
    )
    assert result.saliency.shape == (2, 2, 20, 20)
    assert result.history.shape == (2, 2, 2, 5)
    assert F.relu(-result.saliency).sum() == 0
