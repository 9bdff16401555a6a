"""The network the optimizer runs: a private copy of the caller's model, rewritten for speed
without changing its function.

- BatchNorm in eval mode is folded into the preceding convolution (`fuse_batchnorm`).
- A ReLU whose only user is a max-pool runs after the pool (`pool_before_relu`): ReLU is
  monotone, so max(relu(x)) = relu(max(x)) exactly, and the ReLU (forward and backward) touches
  a quarter of the elements. VGG's blocks and ResNet's stem have this pattern.
- Weights and activations use the channels_last layout (`channels_last`).
- Under `autocast`, the weights of convolutions and linear layers (the ops autocast runs in the
  low precision) are cast once here: autocast would otherwise cast every weight on every call.

Both graph rewrites need a symbolic trace; a model that cannot be traced runs unrewritten.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F

from .settings import ExtremalSettings

_RELU_FUNCTIONS = (torch.relu, F.relu)
_MAX_POOL_FUNCTIONS = (F.max_pool2d, torch.max_pool2d)


def engine_model(model: torch.nn.Module, settings: ExtremalSettings, rewrites: bool = True) -> torch.nn.Module:
    """The prepared private copy (eval mode, parameters frozen); the caller's model is left untouched.

    `rewrites=False` keeps the module structure (no BatchNorm folding, no ReLU moved), for methods
    that find layers by name or hook `nn.ReLU` modules; the copy and its memory format still apply.
    """
    prepared = model
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    fold = rewrites and settings.execution.fuse_batchnorm and has_bn
    move = rewrites and settings.execution.pool_before_relu
    if fold or move:
        try:
            prepared = _rewritten(model, fold, move)
        except Exception as exc:  # tracing fails on data-dependent control flow
            warnings.warn(f"graph rewrites skipped, the model could not be traced: {exc}", stacklevel=3)
    if prepared is model:  # freezing below must not reach the caller's model, which an explainer keeps using
        prepared = copy.deepcopy(model)
    if settings.execution.channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    if settings.execution.autocast:
        dtype = getattr(torch, settings.execution.autocast)
        for module in prepared.modules():
            if isinstance(module, _AUTOCAST_LOW_PRECISION):
                module.to(dtype)  # the rounding autocast would apply per call, applied once
    for p in prepared.parameters():
        p.requires_grad_(False)
    return prepared.eval()


_AUTOCAST_LOW_PRECISION = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)


def configure_backends(settings: ExtremalSettings, device: torch.device) -> dict[str, bool]:
    """On CUDA: cuDNN picks the fastest convolution algorithms for the fixed shapes of the loop
    (`cudnn.benchmark`), and TF32 follows `settings.execution.tf32` when it is set. Returns the flags in
    force (recorded with a run's timings)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if settings.execution.tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = settings.execution.tf32
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def _rewritten(model: torch.nn.Module, fold_batchnorm: bool, pool_before_relu: bool) -> fx.GraphModule:
    """A traced deep copy with the requested rewrites (kept even when no pair was found: it is
    already the private copy channels_last needs)."""
    if fold_batchnorm:
        from torch.fx.experimental.optimization import fuse

        traced = fuse(model)  # traces a deep copy
    else:
        traced = fx.symbolic_trace(copy.deepcopy(model))
    if pool_before_relu:
        move_pools_before_relus(traced)
    return traced


def move_pools_before_relus(gm: fx.GraphModule) -> int:
    """Rewrite `max_pool(relu(x))` as `relu(max_pool(x))` where x and the ReLU have no other
    user. Returns how many pairs were rewritten."""
    graph, moved = gm.graph, 0
    for pool in list(graph.nodes):
        if not _is_max_pool(gm, pool):
            continue
        relu = pool.args[0]
        if not (isinstance(relu, fx.Node) and _is_relu(gm, relu) and len(relu.users) == 1):
            continue
        source = relu.args[0]
        if not (isinstance(source, fx.Node) and len(source.users) == 1):
            continue  # an in-place ReLU would also have changed what the source's other users see
        pool.replace_input_with(relu, source)
        with graph.inserting_after(pool):
            after = graph.call_function(torch.relu, (pool,))
        pool.replace_all_uses_with(after, delete_user_cb=lambda user: user is not after)
        graph.erase_node(relu)
        moved += 1
    if moved:
        graph.lint()
        gm.recompile()
    return moved


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), torch.nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _is_max_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A 2-D max-pool that returns only values (every window holds a real element, so the
    ReLU commutes with it, padding and ceil_mode included)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, torch.nn.MaxPool2d) and not module.return_indices
    if node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS:
        return not node.kwargs.get("return_indices", False) and len(node.args) < 7
    return False
