"""The gradient family through Captum: gradient (Simonyan et al.), guided backprop (Springenberg
et al.) and Grad-CAM (Selvaraju et al.), each one map per image.

Captum computes the attributions; this module only turns them into saliency maps as the paper's
comparisons (and TorchRay) do: the largest |attribution| over the colour channels for the two
input-space methods, Grad-CAM's ReLU'd map upsampled bilinearly to the image for the third.
The caller's model is used as it is (no rewrites, no copy): guided backprop hooks its `nn.ReLU`
modules, so a model whose ReLUs are functions would silently give plain gradients. A fully
convolutional model's score map `[B, C, h, w]` is followed back by `backward` (`ScoreHead`):
`logit` (its mean) or `pointing` (TorchRay's pointing-game gradient, as its benchmark runs them).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from types import ModuleType

import torch

from ..channels import find_layer
from ..inputs import checked_call, frozen
from ..rewards import ScoreHead
from .card import MethodCard, Smoothing
from .explanation import Explanation
from .registry import register_method
from .token_cam import default_layer, is_token_layer, token_grad_cam


def captum_attr() -> ModuleType:
    """``captum.attr``, imported on first use: the package pulls in matplotlib (about a second),
    which every worker and job would otherwise pay even when the method is not Captum's."""
    return importlib.import_module("captum.attr")


# Non-negative maps of arbitrary scale (|gradient|, ReLU'd Grad-CAM). TorchRay's pointing-game
# benchmark smooths the two input-space maps (saliency(smooth=0.02): 0.02 x the longer side,
# replicate padding), not Grad-CAM's.
_INPUT_CARD = MethodCard(maps="positive", smooth=Smoothing(0.02, "longer", "replicate"))
_CARD = MethodCard(maps="positive")


class _CaptumMethod:
    """What the three share: the call contract, the caller's model frozen during the call (eval
    mode, no parameter gradients), an out-of-range target reported as a ValueError, the class
    scores Captum differentiates (`ScoreHead(model, backward)`)."""

    num_maps = 1

    label = ""

    def __init__(self, model: torch.nn.Module, backward: str = "logit"):
        if model is None:
            raise ValueError(f"method {self.label!r} needs a model")
        self.model = model
        self.scores = ScoreHead(model, backward)

    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation:
        """maps `[B, 1, H, W]` (non-negative), labels `(name,)`."""
        t = checked_call(images, targets)
        # A leaf that requires grad: Captum would otherwise flip the caller's tensor and warn.
        x = images.detach().requires_grad_(True)
        with frozen(self.model), torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            try:
                maps = self.saliency(x, t)
            except (IndexError, RuntimeError) as exc:
                # Captum's target selection fails with a bare index error on a class the model lacks.
                if "index" in str(exc) and "out of" in str(exc):
                    raise ValueError(f"a target is out of range for the model's outputs: {exc}") from None
                raise
        return Explanation(maps=maps.detach(), labels=(self.label,))

    def saliency(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_method("gradient", card=_INPUT_CARD)
class GradientExplainer(_CaptumMethod):
    """max over channels of |∂ score_target / ∂ image| (Captum `Saliency`)."""

    label = "gradient"

    def __init__(self, model: torch.nn.Module, *, backward: str = "logit"):
        super().__init__(model, backward)
        self._captum = captum_attr().Saliency(self.scores)

    def saliency(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(images, target=targets, abs=True).amax(dim=1, keepdim=True)


@register_method("guided_backprop", card=_INPUT_CARD)
class GuidedBackpropExplainer(_CaptumMethod):
    """max over channels of |guided gradient| (Captum `GuidedBackprop`: only positive gradients
    pass back through each `nn.ReLU`)."""

    label = "guided_backprop"

    def __init__(self, model: torch.nn.Module, *, backward: str = "logit"):
        super().__init__(model, backward)
        if not any(isinstance(m, torch.nn.ReLU) for m in model.modules()):
            raise ValueError("guided backprop changes the backward pass of nn.ReLU modules, and the model has none")
        self._captum = captum_attr().GuidedBackprop(self.scores)

    def saliency(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(images, target=targets).abs().amax(dim=1, keepdim=True)


def default_grad_cam_layer(model: torch.nn.Module) -> str:
    """The layer the paper's comparisons use: ResNets' `layer4`; for a `features` sequence (VGG,
    whose last ReLU is `features.29` in VGG16) its last ReLU, else its last module; for timm and
    Hugging Face families `token_cam.default_layer` (a ViT's last `norm1`, ConvNeXt's last stage)."""
    children = dict(model.named_children())
    if "layer4" in children:
        return "layer4"
    features = children.get("features")
    if isinstance(features, torch.nn.Sequential) and len(features):
        names = [name for name, _ in features.named_children()]
        relus = [name for name, m in features.named_children() if isinstance(m, torch.nn.ReLU)]
        return f"features.{(relus or names)[-1]}"
    found = default_layer(model)
    if found is not None:
        return found
    layers = [name for name, _ in model.named_modules() if name]
    raise ValueError(
        f"no default Grad-CAM layer for a {type(model).__name__} (defaults: ResNet layer4, VGG the last ReLU of "
        f"features); set layer= one of: {', '.join(layers)}"
    )


@register_method("grad_cam", card=_CARD)
class GradCamExplainer(_CaptumMethod):
    """Grad-CAM at `layer` (Captum `LayerGradCam`, `relu_attributions=True`), upsampled
    bilinearly to the image; `layer` defaults per family (`default_grad_cam_layer`). At a
    transformer's token layer (a LayerNorm) the tokens are laid out on the patch grid first
    (`token_cam`; prefix tokens dropped)."""

    label = "grad_cam"

    def __init__(self, model: torch.nn.Module, *, layer: str | None = None, backward: str = "logit"):
        super().__init__(model, backward)
        self.layer = layer if layer is not None else default_grad_cam_layer(model)
        module = find_layer(model, self.layer)
        self._tokens = module if is_token_layer(module) else None
        self._captum = captum_attr().LayerGradCam(self.scores, module)

    def saliency(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._tokens is not None:
            prefix = getattr(self.model, "num_prefix_tokens", None)
            cam = token_grad_cam(self.model, self._tokens, images, targets, prefix)
        else:
            cam = self._captum.attribute(images, target=targets, relu_attributions=True)
        if cam.dim() != 4:
            raise ValueError(f"Grad-CAM needs a layer with a spatial output [B, K, h, w]; {self.layer!r} gives {list(cam.shape)}")
        return captum_attr().LayerAttribution.interpolate(cam, tuple(images.shape[2:]), interpolate_mode="bilinear")
