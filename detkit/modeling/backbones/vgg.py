"""VGG16 conv5_3 backbone and the fc6/fc7 box head of Fast R-CNN.

Shapes: N images, R RoIs. The backbone maps [N, 3, H, W] to {"0": [N, 512, H/16, W/16]} (torchvision's vgg16
features without the last max-pool); the head maps pooled RoI features [R, 512, 7, 7] to [R, 4096].
Parameter names follow torchvision's VGG: backbone ``body.*`` <- ``features.*``, head ``fc6``/``fc7`` <-
``classifier.0`` / ``classifier.3``.
"""

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

VGG16_CHANNELS = 512
VGG16_STRIDE = 16
FC_CHANNELS = 4096


def _init_like_torchvision(module: nn.Module) -> None:
    """Initialise conv, norm and linear layers as torchvision's VGG does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGGBackbone(nn.Module):
    """VGG16 (optionally with BatchNorm) conv1_1..conv5_3: one stride-16, 512-channel feature map."""

    def __init__(
        self,
        *,
        batch_norm: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        trainable_layers: int = 5,
    ) -> None:
        super().__init__()
        # Built from torchvision's layer list rather than vgg16(): that would also allocate the 120M-parameter
        # classifier only to throw it away.
        body = make_layers(cfgs["D"], batch_norm=batch_norm)[:-1]
        if norm_layer is not nn.BatchNorm2d:
            for i, layer in enumerate(body):
                if isinstance(layer, nn.BatchNorm2d):
                    body[i] = norm_layer(layer.num_features)
        _init_like_torchvision(body)
        self.body = body
        self.out_channels = VGG16_CHANNELS
        self.strides = {"0": VGG16_STRIDE}
        self._freeze_blocks(5 - trainable_layers)

    def _freeze_blocks(self, num_frozen: int) -> None:
        """Freeze the parameters of the first ``num_frozen`` conv blocks (conv1_x, conv2_x, ...)."""
        block = 0
        for layer in self.body:
            if isinstance(layer, nn.MaxPool2d):
                block += 1
            elif block < num_frozen:
                layer.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Return {"0": conv5_3 features [N, 512, H/16, W/16]} for images [N, 3, H, W]."""
        return OrderedDict([("0", self.body(x))])


class VGGFCHead(nn.Module):
    """fc6/fc7 of VGG16 (Linear 25088->4096, ReLU, Dropout, Linear 4096->4096, ReLU, Dropout)."""

    def __init__(self, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc6 = nn.Linear(VGG16_CHANNELS * 7 * 7, FC_CHANNELS)
        self.fc7 = nn.Linear(FC_CHANNELS, FC_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=dropout)
        self.out_channels = FC_CHANNELS
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map pooled RoI features [R, 512, 7, 7] to [R, 4096]."""
        x = self.dropout(self.relu(self.fc6(x.flatten(1))))
        return self.dropout(self.relu(self.fc7(x)))


BACKBONE_WEIGHT_PREFIXES = {"features.": "body."}
HEAD_WEIGHT_PREFIXES = {"classifier.0.": "fc6.", "classifier.3.": "fc7."}
