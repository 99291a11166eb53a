"""Box heads: per-region feature extractors between the pooler and the predictor.

R regions; input (R, C, S, S) pooled features; output (R, D) vectors.
FPN uses the 2-MLP head; VGG16 uses fc6/fc7 and ResNet-C4 the res5 stage (both from detkit.modeling.backbones).
At test time fc6/fc7 may be compressed by truncated SVD (Fast R-CNN §3.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """Two fully connected layers with ReLU (the FPN paper's box head)."""

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, representation_size)."""
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


def truncated_svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """W (out, in) ~ U_t S_t V_t^T as two layers: in -> rank (S_t V_t^T, no bias) -> out (U_t, W's bias).

    Fast R-CNN §3.1: parameters drop from out * in to rank * (out + in); the layers are for inference only.
    """
    u, s, vh = torch.linalg.svd(layer.weight.detach().float(), full_matrices=False)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(s[:rank, None] * vh[:rank])
        second.weight.copy_(u[:, :rank])
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(layer.weight.device, layer.weight.dtype)


def compress_box_head(box_head: nn.Module, rank: int) -> list[str]:
    """Replaces each Linear layer (fc6, fc7) of a box head by its rank-``rank`` truncated SVD, where that is smaller;
    returns the names of the layers replaced."""
    if rank <= 0:
        raise ValueError(f"the SVD rank must be positive, got {rank}")
    replaced = []
    for name, layer in list(box_head.named_children()):
        if isinstance(layer, nn.Linear) and rank * (layer.in_features + layer.out_features) < layer.weight.numel():
            setattr(box_head, name, truncated_svd_linear(layer, rank))
            replaced.append(name)
    return replaced
