"""Pretrained weights by name, URL or file, kept in torch.hub's cache: resolve, fetch once, read safely.

A weights *spec* is one of
- a torchvision weights name, ``<Enum>.<member>`` as torchvision spells it (``ResNet50_Weights.IMAGENET1K_V1``,
  ``ResNet18_Weights.DEFAULT``, ``VGG16_Weights.IMAGENET1K_FEATURES``, ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``),
  resolved by ``torchvision.models.get_weight``;
- a URL (``https://...``, ``file://...``);
- a path to a local file.
Names and URLs are kept in torch.hub's cache, ``$TORCH_HOME/hub/checkpoints/<the URL's file name>`` (torchvision's
own ``load_state_dict_from_url`` keeps them there too, so both share one copy). A missing file is downloaded once,
with a progress bar, by ``torch.hub.download_url_to_file`` (which writes a temporary file and renames it when
complete, so an interrupted download leaves nothing behind). Every file is read with ``torch.load(...,
weights_only=True)``: a file holding pickled code is refused.
"""

from __future__ import annotations

import difflib
import os
import pickle
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from detkit.errors import DetkitError

_CLOSE_NAMES = 5


@dataclass(frozen=True)
class WeightsRef:
    """Where a weights spec lives: ``kind`` file | url | torchvision; ``path`` the local file (the cache path for a
    name or URL); ``weights`` the torchvision Weights enum member of a name (else None)."""

    spec: str
    kind: str
    path: Path
    url: str | None = None
    weights: object | None = None

    @property
    def arch(self) -> str | None:
        """The torchvision builder the weights belong to (``resnet50``, ``fasterrcnn_resnet50_fpn``), or None."""
        return None if self.weights is None else _enum_arch(type(self.weights).__name__)


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint cache, ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(url: str) -> Path:
    """The cache file a URL is kept in: the URL's file name under hub_checkpoints(), as torch.hub names it."""
    return hub_checkpoints() / os.path.basename(urllib.parse.urlparse(url).path)


def is_torchvision_name(spec: str) -> bool:
    """True for a spec shaped like ``SomeModel_Weights.MEMBER`` (it may still be unknown to torchvision)."""
    head, _, member = spec.partition(".")
    return bool(member) and head.endswith("_Weights") and "/" not in spec and os.sep not in spec


@lru_cache(maxsize=1)
def all_weight_names() -> tuple[str, ...]:
    """Every torchvision weights name (``Enum.MEMBER``, aliases such as ``DEFAULT`` included)."""
    from torchvision.models import get_model_weights, list_models

    names: set[str] = set()
    for model in list_models():
        enum = get_model_weights(model)
        names.update(f"{enum.__name__}.{member}" for member in enum.__members__)
    return tuple(sorted(names))


def _enum_arch(enum_name: str) -> str | None:
    """The torchvision builder whose weights enum is ``enum_name`` (ResNet50_Weights -> resnet50)."""
    from torchvision.models import get_model_weights, list_models

    return next((m for m in list_models() if get_model_weights(m).__name__ == enum_name), None)


def resolve(spec: str | os.PathLike) -> WeightsRef:
    """Where ``spec`` (name, URL or local path) lives; no download. Raises DetkitError for an unknown torchvision
    name (listing the close names) or a local file that does not exist."""
    text = os.fspath(spec)
    if text.startswith(("http://", "https://", "file://")):
        return WeightsRef(text, "url", cache_path(text), url=text)
    if is_torchvision_name(text):
        from torchvision.models import get_weight

        try:
            weights = get_weight(text)
        except (ValueError, KeyError, AttributeError):
            close = difflib.get_close_matches(text, all_weight_names(), n=_CLOSE_NAMES, cutoff=0.6)
            hint = f"close names: {', '.join(close)}" if close else "see torchvision.models.list_models()"
            raise DetkitError(f"torchvision has no weights named {text!r}; {hint}.") from None
        return WeightsRef(f"{type(weights).__name__}.{weights.name}", "torchvision", cache_path(weights.url),
                          url=weights.url, weights=weights)
    path = Path(text).expanduser()
    if not path.is_file():
        raise DetkitError(f"weights file {path} does not exist (a torchvision weights name looks like "
                          "ResNet50_Weights.IMAGENET1K_V1; a URL starts with https://).")
    return WeightsRef(text, "file", path)


def fetch(spec: str | os.PathLike | WeightsRef, *, progress: bool = True) -> Path:
    """The local file of a weights spec, downloaded into torch.hub's cache first when a name or URL is not there.

    Offline (or any failed download) raises one DetkitError naming the URL and the exact path to put the file at.
    """
    ref = spec if isinstance(spec, WeightsRef) else resolve(spec)
    if ref.kind == "file" or ref.path.is_file():
        return ref.path
    ref.path.parent.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {ref.url} to {ref.path}", file=sys.stderr, flush=True)
    try:
        torch.hub.download_url_to_file(ref.url, str(ref.path), progress=progress)
    except Exception as error:  # URLError, HTTPError, socket timeouts, SSL: all mean "not fetched"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DetkitError(f"could not download {ref.url} ({reason}); offline, copy that file to {ref.path} "
                          "(torch.hub's cache, $TORCH_HOME/hub/checkpoints)") from error
    return ref.path


def read_state_dict(spec: str | os.PathLike | WeightsRef, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The state_dict (tensor name -> tensor, on the CPU) a weights spec holds, fetched first if needed; a
    ``{"model": state_dict}`` file (detkit's model_final.pth, last.pth) gives its model's.

    Raises DetkitError for a file that does not load with weights_only=True (pickled code, truncated or corrupt:
    a cached file is named with the advice to delete it, never downloaded again silently) or that holds no
    state_dict.
    """
    ref = spec if isinstance(spec, WeightsRef) else resolve(spec)
    path = fetch(ref, progress=progress)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if isinstance(error, pickle.UnpicklingError):  # torch's text advises weights_only=False: not for us to repeat
            reason = "not a torch.save file of tensors, or one holding pickled objects"
        else:
            reason = str(error).strip().split(". ")[0] if str(error).strip() else type(error).__name__
        if ref.kind != "file":
            raise DetkitError(f"cached weights file {path} is truncated or corrupt ({reason}); delete it and run "
                              f"again to download {ref.url} anew") from error
        raise DetkitError(f"weights file {path} could not be read with weights_only=True (truncated, corrupt, or "
                          f"it holds pickled code): {reason}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise DetkitError(f"weights file {path} does not hold a state_dict (a dict of tensor names to tensors).")
    return dict(loaded)


def normalization(spec: str | None) -> tuple[list[float], list[float]] | None:
    """(pixel_mean, pixel_std) on RGB in [0, 1] from a torchvision name's own transforms, or None (a URL, a file,
    a detection model's weights, whose normalisation lives inside the model: ImageNet's for torchvision's)."""
    if not spec or not is_torchvision_name(str(spec)):
        return None
    transforms = resolve(spec).weights.transforms()
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    return (list(map(float, mean)), list(map(float, std))) if mean is not None and std is not None else None


def has_valid_classifier(spec: str | os.PathLike | None) -> bool:
    """False for weights whose classifier is not valid (``VGG16_Weights.IMAGENET1K_FEATURES``: torchvision says
    only its ``features`` module holds trained values), so VGG's fc6/fc7 must not load from them."""
    return not (spec and is_torchvision_name(str(spec)) and resolve(spec).spec.endswith(".IMAGENET1K_FEATURES"))


def check_backbone_arch(spec: str | None, backbone: str) -> None:
    """Raises DetkitError when a torchvision name belongs to another architecture than ``backbone``."""
    if not spec or not is_torchvision_name(str(spec)):
        return
    ref = resolve(spec)
    if ref.arch != backbone:
        raise DetkitError(f"model.backbone.weights={ref.spec} are weights of torchvision's {ref.arch}, but "
                          f"model.backbone.name is {backbone} (use {_suggest(backbone)})")


def _suggest(backbone: str) -> str:
    enum = {"vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights"}.get(backbone, backbone.replace(
        "resnet", "ResNet") + "_Weights")
    return f"{enum}.DEFAULT" + (" or VGG16_Weights.IMAGENET1K_FEATURES" if backbone == "vgg16" else "")
