"""Backbones and trunk-derived box heads by name, and the loader for local torchvision classification weights.

Names: ``vgg16``, ``vgg16_bn`` (conv5_3, stride 16, 512 channels) and ``resnet18/34/50/101`` (C4, stride 16,
or ResNet+FPN P2-P6 with ``fpn=True``). Every backbone maps images [N, 3, H, W] to an ordered dict of feature
maps and carries ``out_channels`` (int) and ``strides`` (feature name -> stride in input pixels).
Weights are torchvision-format classification state_dicts: a local file, a torchvision weights name
(``ResNet50_Weights.IMAGENET1K_V1``) or a URL, the last two fetched once into torch.hub's cache
(detkit.modeling.backbones.pretrained).
"""

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.errors import DetkitError
from detkit.registries import BACKBONES, resolve  # model.backbone.name -> family (vgg, resnet) or its builder

from . import pretrained, resnet, vgg
from .fpn import ResNetFPN

NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "gn": partial(nn.GroupNorm, 32),
}
_SHOWN_KEYS = 5


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Return the normalisation layer constructor for ``norm``, or raise naming the valid choices."""
    if norm not in NORM_LAYERS:
        raise DetkitError(f"Unknown norm {norm!r}; valid norms are {', '.join(NORM_LAYERS)}.")
    return NORM_LAYERS[norm]


def _first(keys: Sequence[str]) -> str:
    """Format the first few of ``keys`` for an error message."""
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of tensors a weights spec (file, torchvision name or URL) holds, on CPU (fetched first when
    not in torch.hub's cache); DetkitError if the file is missing, unreadable or holds something else."""
    return pretrained.read_state_dict(path)


def load_torchvision_weights(
    module_or_modules: nn.Module | Mapping[str, nn.Module], path: str | Path, prefix_map: Mapping[str, str]
) -> None:
    """Copy the keys of the state_dict at ``path`` under each prefix_map source prefix into the module(s).

    ``prefix_map`` maps a key prefix in the file to a key prefix in the module (for a mapping of modules, the
    module's name and a dot come first, e.g. ``{"layer4.": "box_head.layer4."}``). Keys outside the mapped
    prefixes are ignored both ways (a ResNet's ``fc.*``, an FPN's ``fpn.*``); inside them the file and the module
    must match key for key and shape for shape, else DetkitError names the file and the first offending keys.
    BatchNorm's ``num_batches_tracked`` counters are not weights and never need to match.
    """
    module = nn.ModuleDict(module_or_modules) if isinstance(module_or_modules, Mapping) else module_or_modules
    file_state = _read_state_dict(path)

    def to_target(key: str) -> str | None:
        for source, target in prefix_map.items():
            if key.startswith(source):
                return target + key[len(source) :]
        return None

    def to_source(key: str) -> str:
        source, target = next((s, t) for s, t in prefix_map.items() if key.startswith(t))
        return source + key[len(target) :]

    def counts(key: str) -> bool:
        return not key.endswith("num_batches_tracked")

    sources = {to_target(k): k for k in file_state if to_target(k) is not None and counts(k)}
    mapped = {target: file_state[source] for target, source in sources.items()}
    model_state = module.state_dict()
    wanted = [k for k in model_state if counts(k) and any(k.startswith(t) for t in prefix_map.values())]
    missing = [to_source(k) for k in wanted if k not in mapped]
    unexpected = [source for target, source in sources.items() if target not in model_state]
    if missing or unexpected:
        problems = [f"it lacks {_first(missing)}"] if missing else []
        problems += [f"the model has no place for {_first(unexpected)}"] if unexpected else []
        raise DetkitError(
            f"Weights file {path} does not fit the model: {'; '.join(problems)} "
            f"(the file's first keys are {_first(list(file_state))})."
        )
    wrong_shape = [
        f"{sources[k]} {tuple(mapped[k].shape)} vs {tuple(model_state[k].shape)}"
        for k in wanted
        if mapped[k].shape != model_state[k].shape
    ]
    if wrong_shape:
        raise DetkitError(f"Weights file {path} has tensors of the wrong shape (file vs model): {_first(wrong_shape)}.")
    module.load_state_dict(mapped, strict=False)


def build_backbone(
    name: str,
    *,
    fpn: bool = False,
    norm: str = "bn",
    weights: str | Path | None = None,
    trainable_layers: int = 5,
    fpn_channels: int = 256,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
) -> nn.Module:
    """Build backbone ``name``: VGG16 conv5_3, ResNet C4, or ResNet+FPN (``fpn=True``), optionally with weights.

    ``norm`` (bn | frozen_bn | gn) replaces the trunk's BatchNorm layers (vgg16 has none); ``trainable_layers``
    (0-5) leaves only that many of the last stages trainable, as torchvision counts them (for C4 the count
    includes layer4, which lives in the res5 head); ``fpn_channels`` and ``returned_layers`` apply to FPN only.
    """
    if name not in BACKBONES:
        raise DetkitError(f"Unknown backbone {name!r}; valid backbones are {', '.join(BACKBONES)}.")
    if BACKBONES[name] not in ("vgg", "resnet"):  # a backbone of its own: "module:function" or the function
        return resolve(BACKBONES[name])(name, fpn=fpn, norm=norm, weights=weights, trainable_layers=trainable_layers)
    norm_layer = _norm_layer(norm)
    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= 5:
        raise DetkitError(f"trainable_layers must be an integer from 0 to 5, got {trainable_layers!r}.")
    pretrained.check_backbone_arch(None if weights is None else str(weights), name)
    if BACKBONES[name] == "vgg":
        if fpn:
            raise DetkitError(f"Backbone {name!r} has no FPN variant; fpn=True needs a ResNet backbone.")
        backbone = vgg.VGGBackbone(
            batch_norm=name == "vgg16_bn", norm_layer=norm_layer, trainable_layers=trainable_layers
        )
        prefixes = vgg.BACKBONE_WEIGHT_PREFIXES
    else:
        trunk = resnet.resnet_trunk(name, norm_layer=norm_layer, trainable_layers=trainable_layers)
        if fpn:
            layers = list(returned_layers)
            if not layers or layers != sorted(set(layers)) or not set(layers) <= {1, 2, 3, 4}:
                raise DetkitError(f"returned_layers must be increasing stages from 1 to 4, got {returned_layers!r}.")
            backbone = ResNetFPN(trunk, returned_layers=layers, out_channels=fpn_channels)
        else:
            backbone = resnet.ResNetC4(trunk)
        prefixes = resnet.body_weight_prefixes(backbone.body)
    if weights is not None:
        load_torchvision_weights(backbone, weights, prefixes)
    return backbone


def build_res5_head(name: str, *, norm: str = "bn", weights: str | Path | None = None) -> nn.Module:
    """Build the res5 box head (ResNet layer4 + average pool) of ResNet ``name``, weights from ``layer4.*``."""
    if name not in resnet.RESNETS:
        raise DetkitError(f"Unknown ResNet {name!r} for the res5 head; valid names are {', '.join(resnet.RESNETS)}.")
    head = resnet.Res5Head(resnet.resnet_trunk(name, norm_layer=_norm_layer(norm)))
    if weights is not None:
        load_torchvision_weights(head, weights, resnet.HEAD_WEIGHT_PREFIXES)
    return head


def build_vgg_fc_head(*, weights: str | Path | None = None, dropout: float = 0.5) -> nn.Module:
    """Build VGG16's fc6/fc7 box head, weights from ``classifier.0`` / ``classifier.3`` of a vgg16(_bn) file;
    weights whose classifier is not valid (``VGG16_Weights.IMAGENET1K_FEATURES``) leave fc6/fc7 randomly
    initialised, with a message."""
    head = vgg.VGGFCHead(dropout=dropout)
    if weights is not None and not pretrained.has_valid_classifier(str(weights)):
        print(f"fc6/fc7 start from random weights: {weights} hold no valid classifier (torchvision: only the "
              "features are trained)", flush=True)
    elif weights is not None:
        load_torchvision_weights(head, weights, vgg.HEAD_WEIGHT_PREFIXES)
    return head
