"""Test-time folding of BatchNorm (nn.BatchNorm2d in eval mode, torchvision's FrozenBatchNorm2d) into the
convolution before it: y = gamma * (W x + b - mean) / sqrt(var + eps) + beta is one convolution with weight
W * gamma / sqrt(var + eps) and bias (b - mean) * gamma / sqrt(var + eps) + beta (Ioffe & Szegedy 2015, §3).

A pair is folded only where torch.fx sees the convolution's output used by the norm layer alone, so the module's
function is unchanged (up to float rounding); the norm layer becomes nn.Identity and the module keeps its structure
and parameter names, minus the folded norms' entries. The folding itself is torch's `fuse_conv_bn_weights`.
"""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps convolutions and norm layers as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, *NORMS)) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv name, norm name) for every Conv2d whose output goes only into a BatchNorm2d / FrozenBatchNorm2d."""
    graph = _LeafTracer().trace(module)
    modules = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], NORMS):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1):
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def fold_batch_norm(module: nn.Module) -> int:
    """Fold every eval-mode norm layer that follows a convolution into it, in place; returns the number folded.

    Raises RuntimeError for a BatchNorm2d in training mode (its batch statistics cannot be folded) and
    torch.fx's TraceError where the module's forward cannot be traced symbolically.
    """
    modules = dict(module.named_modules())
    folded = 0
    for conv_name, norm_name in conv_bn_pairs(module):
        conv, norm = modules[conv_name], modules[norm_name]
        if norm.training and isinstance(norm, nn.BatchNorm2d):
            raise RuntimeError(f"fold_batch_norm: {norm_name} is in training mode; call .eval() first")
        mean, var = norm.running_mean, norm.running_var
        if mean is None or var is None:  # BatchNorm2d(track_running_stats=False) uses batch statistics
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, mean, var, norm.eps, norm.weight, norm.bias)
        grad = conv.weight.requires_grad
        conv.weight, conv.bias = nn.Parameter(weight, grad), nn.Parameter(bias, grad)
        parent_name, _, child = norm_name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, nn.Identity())
        folded += 1
    return folded


def fold_detector_batch_norm(model: nn.Module) -> int:
    """fold_batch_norm on a two-stage detector's backbone and box head (the parts with norm layers), in place;
    returns the number folded. A part whose forward torch.fx cannot trace is left as it is."""
    parts = [getattr(model, "backbone", None), getattr(getattr(model, "roi_heads", None), "box_head", None)]
    folded = 0
    for part in parts:
        if part is None or not any(isinstance(m, NORMS) for m in part.modules()):
            continue
        try:
            folded += fold_batch_norm(part)
        except (fx.proxy.TraceError, TypeError, NotImplementedError):  # data-dependent control flow
            continue
    return folded


def speed_up_inference(model: nn.Module, *, fold_bn: bool = True, gather_roi_align: bool = True,
                       channels_last: bool = True) -> nn.Module:
    """The test-time levers of docs/benchmarks.md "CPU inference levers", in place: BatchNorm folded (model in
    eval mode), the gather RoIAlign pooler on the CPU, channels-last images into the backbone; returns the model."""
    if fold_bn:
        fold_detector_batch_norm(model.eval())
    if gather_roi_align:
        from detkit.modeling.roi_heads.gather_pooler import use_gather_pooler

        use_gather_pooler(model)
    if channels_last and hasattr(model, "channels_last"):
        model.channels_last = True
    return model
