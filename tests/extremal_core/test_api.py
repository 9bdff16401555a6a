import pytest
import torch

from extremal_core import ExtremalSettings, channel_perturbation, extremal_perturbation

FAST = dict(max_iter=3, step=4, sigma=10.0)


def ep(model, targets, **settings):
    """The engine on two small images with few iterations."""
    return extremal_perturbation(model, images(), targets, **{**FAST, **settings})


def images(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda m: ep(m, [0, 5]), ValueError, "target 5 is out of range for a model with 5 classes"),
        (lambda m: ep(m, [0, -1]), ValueError, "out of range"),
        (lambda m: ep(m, [0]), ValueError, "one target per image"),
        (lambda m: ep(m, [0.5, 1.0]), TypeError, "integer class indices"),
        (lambda m: ep(m, 0, areas=[0.1, 1.0]), ValueError, r"strictly between 0 and 1.*1\.0"),
        (lambda m: ep(m, 0, areas=[0.0]), ValueError, "strictly between 0 and 1"),
        (lambda m: extremal_perturbation(m, images()[0], 0, **FAST), ValueError, r"4-D tensor \[B, C, H, W\]"),
        (lambda m: extremal_perturbation(m, images().to(torch.uint8), 0, **FAST), TypeError, "floating point"),
        (lambda m: ep(m, 0, variant="hybrid"), ValueError, "valid variants: preserve, delete, dual"),
        (lambda m: ep(m, 0, reward="best"), ValueError, "valid rewards: contrastive, simple"),
        (lambda m: ep(m, 0, perturbation="noise"), ValueError, "valid perturbations: blur, fade"),
        (lambda m: extremal_perturbation(m, images(), 0, max_iters=3), TypeError, "unknown setting.*valid settings"),
        (
            lambda m: channel_perturbation(m, images(), 0, layer="conv9", **FAST),
            ValueError,
            "layer 'conv9' is not in the model; valid layers: 0, 1, 2",
        ),
    ],
)
def test_bad_calls_have_clear_errors(tiny_cnn, call, error, message):
    with pytest.raises(error, match=message):
        call(tiny_cnn)


def test_model_is_left_as_found(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    extremal_perturbation(tiny_cnn, images(), [1, 2], areas=[0.1], **FAST)
    channel_perturbation(tiny_cnn, images(), [1, 2], areas=[0.5], layer="3", max_iter=2)
    assert tiny_cnn.training
    assert [p.requires_grad for p in tiny_cnn.parameters()] == [False] + [True] * 5
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())


def test_result_shapes_and_settings_object(tiny_cnn):
    settings = ExtremalSettings.from_flat(areas=(0.05, 0.2, 0.1), keep_history=True, **FAST)
    r = extremal_perturbation(tiny_cnn, images(3), torch.tensor([0, 1, 2]), settings=settings)
    assert r.masks.shape == (3, 3, 32, 32)
    assert r.rewards.shape == r.scores.shape == r.preserved.shape == (3, 3)
    assert r.phi0.shape == r.phi_min.shape == r.optimal_area.shape == (3,)
    assert r.history.shape == (3, 3, 2, 3)
    assert (r.scores <= 1.25).all() and r.masks.min() >= 0 and r.masks.max() <= 1
    assert r.seconds.shape == (3,) and (r.seconds > 0).all()


def test_batch_invariance(tiny_cnn, native_kernels):
    """An image's masks in a batch of 8 x 3 areas equal its masks optimized alone."""
    x = images(8, 48)
    targets = torch.arange(8) % 5
    kw = dict(areas=[0.05, 0.1, 0.2], max_iter=40, step=4, sigma=10.0, native_cpu_kernels=native_kernels)
    batch = extremal_perturbation(tiny_cnn, x, targets, **kw)
    for i in (0, 3, 7):
        alone = extremal_perturbation(tiny_cnn, x[i : i + 1], targets[i : i + 1], **kw)
        assert (batch.masks[i] - alone.masks[0]).abs().max() <= 1e-4
        assert torch.allclose(batch.rewards[i], alone.rewards[0], atol=1e-4)


def test_micro_batches_give_the_same_answer(tiny_cnn):
    x = images(4, 32)
    kw = dict(areas=[0.1, 0.2], max_iter=15, step=4, sigma=10.0)
    whole = extremal_perturbation(tiny_cnn, x, [0, 1, 2, 3], **kw)
    split = extremal_perturbation(tiny_cnn, x, [0, 1, 2, 3], max_masks_per_batch=3, **kw)
    assert (whole.masks - split.masks).abs().max() <= 1e-4


def test_custom_reward_callable(tiny_cnn):
    r = extremal_perturbation(tiny_cnn, images(), [0, 1], reward=lambda s, t: s.gather(1, t[:, None])[:, 0] * 2, **FAST)
    plain = extremal_perturbation(tiny_cnn, images(), [0, 1], **FAST)
    assert torch.allclose(r.phi0, 2 * plain.phi0, atol=1e-5)


def test_batchnorm_folding_pool_reordering_and_channels_last_do_not_change_the_answer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = images(2, 32)
    kw = dict(areas=[0.1, 0.3], max_iter=20, step=4, sigma=10.0)
    plain = extremal_perturbation(
        model, x, [0, 2], fuse_batchnorm=False, pool_before_relu=False, channels_last=False, **kw
    )
    fused = extremal_perturbation(model, x, [0, 2], **kw)  # all three on by default
    assert (plain.masks - fused.masks).abs().max() <= 1e-3
    assert torch.allclose(plain.rewards, fused.rewards, atol=1e-4)
    # the caller's model is not rewritten
    assert [type(m) for m in model[:4]] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d]
