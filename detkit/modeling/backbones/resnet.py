"""ResNet trunks: the C4 backbone (conv1..layer3, stride 16) and the res5 box head (layer4 + average pool).

Shapes: N images, R RoIs. The C4 backbone maps [N, 3, H, W] to {"0": [N, C4, H/16, W/16]} with C4 = 256 for
resnet18/34 and 1024 for resnet50/101; the res5 head maps pooled RoI features [R, C4, 14, 14] through layer4
(stride 2 -> 7x7) and a global average pool to [R, C5], C5 = 512 or 2048 (the Faster R-CNN ResNet recipe).
Parameter names follow torchvision: backbone ``body.<conv1|bn1|layer1..3>.*``, head ``layer4.*``.
"""

from typing import Callable

import torch
from torch import nn
from torchvision.models import ResNet, resnet18, resnet34, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter

RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}
C4_STRIDE = 16
TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def resnet_trunk(name: str, *, norm_layer: Callable[[int], nn.Module], trainable_layers: int = 5) -> ResNet:
    """Build torchvision's ResNet ``name`` (random init) and freeze all but its last ``trainable_layers`` stages."""
    trunk = RESNETS[name](weights=None, norm_layer=norm_layer)
    # Same stage order and count as torchvision's resnet_fpn_backbone: 5 = everything, 0 = nothing.
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for param_name, param in trunk.named_parameters():
        if not any(param_name.startswith(stage) for stage in trainable):
            param.requires_grad_(False)
    return trunk


def stage_channels(trunk: ResNet, stage: int) -> int:
    """Output channels of ``layer<stage>`` (1-4) of a torchvision ResNet."""
    # After construction ``inplanes`` holds layer4's output width; each earlier stage halves it.
    return trunk.inplanes // 2 ** (4 - stage)


class ResNetC4(nn.Module):
    """ResNet conv1..layer3 as one stride-16 feature map; layer4 belongs to the box head (see Res5Head)."""

    def __init__(self, trunk: ResNet) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(trunk, return_layers={"layer3": "0"})
        self.out_channels = stage_channels(trunk, 3)
        self.strides = {"0": C4_STRIDE}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {"0": layer3 features [N, C4, H/16, W/16]} for images [N, 3, H, W]."""
        return self.body(x)


class Res5Head(nn.Module):
    """ResNet layer4 followed by global average pooling, run on pooled RoI features."""

    def __init__(self, trunk: ResNet) -> None:
        super().__init__()
        self.layer4 = trunk.layer4
        self.out_channels = stage_channels(trunk, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map pooled RoI features [R, C4, 14, 14] to [R, C5]."""
        return self.layer4(x).mean(dim=(2, 3))


def body_weight_prefixes(body: nn.Module, target: str = "body.") -> dict[str, str]:
    """Map torchvision classification keys to ``target``-prefixed keys for each trunk stage ``body`` holds."""
    names = {name for name, _ in body.named_children()}
    return {prefix: target + prefix for prefix in TRUNK_PREFIXES if prefix[:-1] in names}


HEAD_WEIGHT_PREFIXES = {"layer4.": "layer4."}
