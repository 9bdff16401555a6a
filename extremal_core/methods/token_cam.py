"""Grad-CAM on a transformer's tokens (ViT, DeiT, EVA, Swin; timm or Hugging Face).

A block's LayerNorm sees tokens, not a feature map: ViT-style layers give `[B, N, D]` with the
class token (and distillation / register tokens) before the `h * w` patch tokens, Swin's give
`[B, h, w, D]` (channels last). Grad-CAM needs `[B, D, h, w]`: the prefix tokens are dropped and
the patch tokens reshaped to the patch grid (row-major, as patch embeddings flatten them), then
the usual weights (the gradient averaged over the grid) and map (ReLU of the weighted sum).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Prefix counts tried, in order, when the model does not say (timm's `num_prefix_tokens` does):
# none (Swin), a class token, class + distillation (DeiT), and class + up to 4/8 registers.
_PREFIXES = (0, 1, 2, 5, 9, 3, 4, 6, 7, 8)


def is_token_layer(module: torch.nn.Module) -> bool:
    """A LayerNorm over the last dimension: its output is tokens (`[B, N, D]` or `[B, h, w, D]`).
    timm's `LayerNorm2d` (ConvNeXt) normalises a channels-first map and is not one."""
    return isinstance(module, torch.nn.LayerNorm) and not type(module).__name__.endswith("2d")


def patch_grid(tokens: torch.Tensor, image_size: tuple[int, int], prefix: int | None = None) -> torch.Tensor:
    """`[B, N, D]` tokens (or channels-last `[B, h, w, D]`) -> `[B, D, h, w]`.

    `prefix`: how many non-patch tokens come first; when None, the smallest count in `_PREFIXES`
    that leaves a grid with the image's aspect ratio (`image_size` = (H, W)).
    """
    if tokens.dim() == 4:
        return tokens.permute(0, 3, 1, 2)
    if tokens.dim() != 3:
        raise ValueError(f"token Grad-CAM needs [B, N, D] or [B, h, w, D] activations, got {list(tokens.shape)}")
    b, n, d = tokens.shape
    height, width = image_size
    for p in (prefix,) if prefix is not None else _PREFIXES:
        count = n - p
        if count <= 0:
            continue
        rows = max(1, round(math.sqrt(count * height / width)))
        if count % rows == 0 and round(rows * width / height) == count // rows:
            return tokens[:, p:].reshape(b, rows, count // rows, d).permute(0, 3, 1, 2)
    raise ValueError(f"cannot lay {n} tokens out as a patch grid for a {height}x{width} image; set the layer explicitly")


def token_grad_cam(
    model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, prefix: int | None = None
) -> torch.Tensor:
    """Grad-CAM at a token layer: `images [B, C, H, W]`, `targets [B]` -> ReLU'd maps `[B, 1, h, w]`
    on the patch grid (the caller upsamples), from the model's output score of each target."""
    store: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        store["tokens"] = output

    handle = layer.register_forward_hook(keep)
    try:
        scores = model(images)
    finally:
        handle.remove()
    if "tokens" not in store:
        raise ValueError("the Grad-CAM layer did not run in the model's forward pass")
    selected = scores.gather(1, targets.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(selected, store["tokens"])
    size = (images.shape[2], images.shape[3])
    acts, grads = patch_grid(store["tokens"], size, prefix), patch_grid(grads, size, prefix)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # [B, D, 1, 1]
    return F.relu((weights * acts).sum(dim=1, keepdim=True))


def default_layer(model: torch.nn.Module) -> str | None:
    """The Grad-CAM layer by structure, for the timm / Hugging Face families: a transformer's last
    block's first norm (`norm1`, HF `layernorm_before`), else the last stage (`stages`, ConvNeXt)
    or last block group (`blocks`, EfficientNet); None when none is found."""
    names = [name for name, _ in model.named_modules()]
    norms = [n for n in names if n.rpartition(".")[2] in ("norm1", "layernorm_before")]
    if norms:
        return norms[-1]
    for group in ("stages", "blocks"):
        for name, module in model.named_modules():
            is_list = isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList))
            if name.rpartition(".")[2] == group and is_list and len(module):
                return f"{name}.{len(module) - 1}"
    return None
