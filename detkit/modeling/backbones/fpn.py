"""ResNet + Feature Pyramid Network backbone (P2-P6), key-for-key the same as torchvision's detection backbone.

Shapes: N images. For images [N, 3, H, W] the output is an ordered dict "0".."3" (P2-P5 for the default
returned layers 1-4, strides 4, 8, 16, 32) plus "pool" (P6, stride 64, a max-pool of the last level), each
[N, out_channels, H/stride, W/stride] (sizes rounded up). Parameter names are ``body.*`` (the ResNet trunk) and
``fpn.*``, exactly those of ``torchvision.models.detection.fasterrcnn_resnet50_fpn().backbone``.
"""

from collections.abc import Sequence

from torchvision.models import ResNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .resnet import stage_channels


class ResNetFPN(BackboneWithFPN):
    """torchvision's BackboneWithFPN over a ResNet, with detkit's ``strides`` attribute."""

    def __init__(self, trunk: ResNet, *, returned_layers: Sequence[int] = (1, 2, 3, 4), out_channels: int = 256):
        return_layers = {f"layer{stage}": str(i) for i, stage in enumerate(returned_layers)}
        super().__init__(
            trunk,
            return_layers=return_layers,
            in_channels_list=[stage_channels(trunk, stage) for stage in returned_layers],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        # layer<k> has stride 2^(k+1); LastLevelMaxPool halves the last level once more.
        self.strides = {str(i): 2 ** (stage + 1) for i, stage in enumerate(returned_layers)}
        self.strides["pool"] = 2 ** (returned_layers[-1] + 2)
