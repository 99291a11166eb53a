"""R-CNN's CNN on warped regions: the whole network runs once per region (Girshick et al. 2014, §2.1).

R warped regions (R, 3, S, S). Out: a pair (fc7, pool5) of features per region: fc7 (R, D) feeds the SVMs and the
fine-tuning classifier, pool5 (R, D5) flattened feeds box regression (§C). For VGG16 these are the paper's layers;
for a ResNet, fc7 is the globally average-pooled layer4 and pool5 is layer4's map flattened.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detkit.modeling.backbones.vgg import VGGBackbone, VGGFCHead


class ResNetRegionCNN(nn.Module):
    """A torchvision ResNet trunk (conv1..layer4); fc7 = global average pool, pool5 = layer4 flattened."""

    def __init__(self, trunk: nn.Module, warp_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool,
                                  trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)
        self.out_channels, self.pool5_channels = _feature_sizes(self, warp_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(fc7 (R, C5), pool5 (R, C5 * h * w)) for warped regions (R, 3, S, S)."""
        pool5 = self.body(x)
        return pool5.mean(dim=(2, 3)), pool5.flatten(1)


class VGGRegionCNN(nn.Module):
    """VGG16 conv1_1..pool5 then fc6/fc7, as in the paper (pool5 is 7 x 7 at S = 227: 227 // 32)."""

    def __init__(self, body: VGGBackbone, fc_head: VGGFCHead, warp_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*body.body, nn.MaxPool2d(2, 2))  # the backbone stops at conv5_3; pool5 follows
        self.pool = nn.AdaptiveMaxPool2d(7)  # fc6 takes 512 x 7 x 7 whatever S is
        self.fc_head = fc_head
        self.out_channels, self.pool5_channels = _feature_sizes(self, warp_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(fc7 (R, 4096), pool5 (R, 25088)) for warped regions (R, 3, S, S)."""
        pool5 = self.pool(self.body(x))
        return self.fc_head(pool5), pool5.flatten(1)


def _feature_sizes(cnn: nn.Module, warp_size: int) -> tuple[int, int]:
    """Widths of fc7 and pool5 for one S x S input, measured once at construction."""
    was_training = cnn.training
    with torch.no_grad():
        fc7, pool5 = cnn.eval()(torch.zeros(1, 3, warp_size, warp_size))
    cnn.train(was_training)
    return fc7.shape[1], pool5.shape[1]


def build_region_cnn(name: str, warp_size: int, *, norm: str = "bn", weights: str | None = None,
                     trainable_layers: int = 5) -> nn.Module:
    """The region CNN of backbone ``name`` (vgg16 | vgg16_bn | resnet*), ImageNet weights from a torchvision file."""
    from detkit.modeling.backbones.build import _norm_layer, build_backbone, build_vgg_fc_head, load_torchvision_weights
    from detkit.modeling.backbones.resnet import RESNETS, TRUNK_PREFIXES, resnet_trunk

    if name in RESNETS:
        trunk = resnet_trunk(name, norm_layer=_norm_layer(norm), trainable_layers=trainable_layers)
        if weights is not None:
            load_torchvision_weights(trunk, weights, {p: p for p in TRUNK_PREFIXES})
        return ResNetRegionCNN(trunk, warp_size)
    body = build_backbone(name, norm=norm, weights=weights, trainable_layers=trainable_layers)
    return VGGRegionCNN(body, build_vgg_fc_head(weights=weights), warp_size)
