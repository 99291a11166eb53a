"""Feature extractors (VGG16, ResNet C4, ResNet+FPN) and the trunk-derived box heads, built by name."""

from .build import BACKBONES, build_backbone, build_res5_head, build_vgg_fc_head, load_torchvision_weights

__all__ = ["BACKBONES", "build_backbone", "build_res5_head", "build_vgg_fc_head", "load_torchvision_weights"]
