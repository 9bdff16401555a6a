"""The prepared network (extremal_core/network.py): rewrites that keep the model's function."""

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision

from extremal_core.network import engine_model, move_pools_before_relus
from extremal_core.settings import ExtremalSettings


class Functional(torch.nn.Module):
    """ReLU / max-pool pairs written as functions, with padding and ceil_mode."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a(x)), 3, stride=2, padding=1, ceil_mode=True)
        return torch.max_pool2d(torch.relu(self.b(x)), 2).flatten(1)


class Shared(torch.nn.Module):
    """Pairs that must stay: the ReLU output is used twice; an in-place ReLU's input is used
    again; a pool that returns indices."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu_inplace = torch.nn.ReLU(inplace=True)
        self.pool = torch.nn.MaxPool2d(2)
        self.pool_idx = torch.nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        y = self.conv(x)
        r = torch.relu(y)
        a = self.pool(r) + r[..., ::2, ::2]
        z = self.conv(x)
        b = self.pool(self.relu_inplace(z)) + z[..., ::2, ::2]
        c, _ = self.pool_idx(torch.relu(self.conv(x)))
        return (a + b + c).flatten(1)


def _same_function(before: torch.nn.Module, after: torch.nn.Module, shape=(2, 3, 21, 23)):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = before(x), after(x2)
    assert torch.equal(y, y2)  # max and ReLU commute exactly
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y2 * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)


def test_functional_pairs_are_reordered():
    model = Functional().eval()
    gm = fx.symbolic_trace(Functional().eval())
    gm.load_state_dict(model.state_dict())
    assert move_pools_before_relus(gm) == 2
    order = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert order.index(torch.relu) > order.index(F.max_pool2d)
    _same_function(model, gm)


def test_pairs_whose_values_are_shared_stay():
    model = Shared().eval()
    gm = fx.symbolic_trace(Shared().eval())
    gm.load_state_dict(model.state_dict())
    assert move_pools_before_relus(gm) == 0
    _same_function(model, gm, shape=(2, 3, 20, 22))


def test_vgg_blocks_are_reordered_and_logits_kept():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10).eval()
    prepared = engine_model(model, ExtremalSettings.from_flat(channels_last=False))
    nodes = list(prepared.graph.nodes)
    relus_after_pools = [n for n in nodes if n.target is torch.relu and _is_pool(prepared, n.args[0])]
    assert len(relus_after_pools) == 5  # one per VGG block
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(prepared(x), model(x), atol=1e-5)
    assert isinstance(model.features[1], torch.nn.ReLU)  # the caller's model is untouched


def _is_pool(gm, node):
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), torch.nn.MaxPool2d)


def test_untraceable_model_runs_unrewritten():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            if y.sum() > 0:  # data-dependent: symbolic tracing fails
                y = F.max_pool2d(y, 2)
            return y.flatten(1)

    model = Branchy().eval()
    with pytest.warns(UserWarning, match="could not be traced"):
        prepared = engine_model(model, ExtremalSettings.from_flat(channels_last=False))
    assert type(prepared) is Branchy and prepared is not model  # unrewritten, still a private copy


def test_autocast_weights_are_cast_once_with_the_same_scores():
    """Under autocast the copy's convolution and linear weights are stored in bf16 (no cast per
    call), and its scores are those autocast gives with the fp32 weights (the same rounding)."""
    from extremal_core.optimize import model_scores

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    settings = ExtremalSettings.from_flat(autocast="bfloat16")
    prepared = engine_model(model, settings)
    convs = [m for m in prepared.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model untouched
    x = torch.randn(2, 3, 64, 64)
    uncast = engine_model(model, settings.with_overrides(autocast=None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = uncast(x.contiguous(memory_format=torch.channels_last)).float()
    assert torch.equal(model_scores(prepared, x, settings), expected)
