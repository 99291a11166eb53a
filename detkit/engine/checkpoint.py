"""Atomic training checkpoints that resume exactly: model, optimizer, scheduler, AMP scaler, iteration, RNG streams.

A checkpoint file is a dict read with `torch.load(weights_only=True)`, so it holds only tensors and plain Python
values (dict, list, tuple, str, int, float, bool, None); `config` and `extra` must stay within those types too.

Keys:
    format, version   "detkit-checkpoint" and the layout version
    model             the model's state_dict (unwrapped from DDP / DataParallel)
    optimizer, scheduler, scaler   their state_dicts, or None when not saved
    iteration         the number of finished iterations
    rng               python `random`, numpy, torch CPU and every CUDA device's generator state
    config            the resolved config as a plain dict, or None
    extra             anything else the caller needs to resume (e.g. the data stream position), or None
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.atomic import atomic_write
from detkit.errors import DetkitError

FORMAT = "detkit-checkpoint"
VERSION = 1
_PLAIN_TYPES = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    iteration: int = 0,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically: a temp file in the same folder, fsync, rename over `path`, fsync the folder."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "rng": rng_state(),
        "config": dict(config) if config is not None else None,
        "extra": dict(extra) if extra is not None else None,
    }
    _check_plain(payload, "checkpoint")
    atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash leaves the old file."""
    atomic_write(path, lambda f: torch.save(obj, f))
    _fsync_dir(path.parent)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> dict[str, Any]:
    """Restore the given objects (and the RNG streams) from a checkpoint; return the checkpoint dict."""
    path = Path(path)
    checkpoint = _read(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise DetkitError(f"{path} is not a detkit checkpoint (no 'format': '{FORMAT}' entry).")
    missing = [k for k in ("model", "optimizer", "scheduler", "scaler", "iteration", "rng") if k not in checkpoint]
    if missing:
        raise DetkitError(f"{path} is not a complete detkit checkpoint: it lacks {', '.join(missing)}.")
    if model is not None:
        _load_model_state(unwrap_model(model), checkpoint["model"], path, strict)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if target is None:
            continue
        state = checkpoint[name]
        if state is None:
            raise DetkitError(f"{path} holds no {name} state, but a {name} was given to restore.")
        # A disabled GradScaler saves {} and refuses to load it; there is nothing to restore then.
        if name == "scaler" and not state:
            continue
        try:
            target.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as error:
            raise DetkitError(f"{path}: the saved {name} state does not fit the given {name} ({error}).") from error
    if restore_rng:
        set_rng_state(checkpoint["rng"])
    return checkpoint


def load_model_weights(path: str | os.PathLike, model: nn.Module, *, strict: bool = True,
                       prefix: str = "") -> dict[str, list[str]]:
    """Load model weights from a detkit checkpoint, a {"model": state_dict} file or a bare state_dict.

    With prefix (e.g. "backbone."), only the saved keys under it are loaded, with the prefix removed, into model (a
    part of the saved network, e.g. a detector's backbone). Raises DetkitError for an unreadable file, other shapes,
    or (strict) keys that do not match.
    """
    path = Path(path)
    loaded = _read(path)
    state = loaded.get("model") if isinstance(loaded, dict) and isinstance(loaded.get("model"), Mapping) else loaded
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DetkitError(f"{path} holds neither a detkit checkpoint nor a model state_dict of tensors.")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return _load_model_state(unwrap_model(model), state, path, strict)


def class_meta(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The class list of a resolved config dict as weights metadata: {"class_names": [...], "category_ids": [...]}."""
    model = (config or {}).get("model") or {}
    if not model.get("class_names"):
        return {}
    return {"class_names": list(model["class_names"]), "category_ids": model.get("category_ids")}


def read_class_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The class list stored with weights: model_final.pth's "meta", a checkpoint's config; None for a bare state_dict."""
    loaded = _read(Path(path))
    if not isinstance(loaded, Mapping):
        return None
    meta = loaded.get("meta")
    if isinstance(meta, Mapping) and meta.get("class_names"):
        return dict(meta)
    config = loaded.get("config")
    return (class_meta(config) or None) if isinstance(config, Mapping) else None


def rng_state() -> dict[str, Any]:
    """The state of python `random`, numpy's global generator, torch CPU and all CUDA generators, as plain values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states made by `rng_state`; CUDA states apply to as many devices as both sides have."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    key = np_state["key"].numpy().astype(np.uint32)
    np.random.set_state((np_state["bit_generator"], key, np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        devices = min(len(state["cuda"]), torch.cuda.device_count())
        for device in range(devices):
            torch.cuda.set_rng_state(state["cuda"][device], device)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise DetkitError(f"Checkpoint file {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DetkitError(f"{path} is not a detkit checkpoint: torch.load failed ({reason}).") from error


def _load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, strict: bool) -> dict:
    """Load `state` into `model`, raising one readable error for missing, unexpected or mis-shaped keys."""
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if shapes:
        raise DetkitError(f"{path}: model weights have other shapes (saved vs model): {_first(shapes)}.")
    if strict and (missing or unexpected):
        raise DetkitError(
            f"{path}: model keys do not match; missing {len(missing)}: {_first(missing)}; "
            f"unexpected {len(unexpected)}: {_first(unexpected)}."
        )
    model.load_state_dict(state, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def _first(items: list[str], count: int = 5) -> str:
    if not items:
        return "none"
    more = f", ... ({len(items) - count} more)" if len(items) > count else ""
    return ", ".join(items[:count]) + more


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DataParallel / DistributedDataParallel wrapper (or the model itself)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


def _check_plain(value: Any, where: str) -> None:
    """Raise where a value would not load with weights_only=True, naming its place in the checkpoint."""
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise DetkitError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys.")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif isinstance(value, np.generic) or not isinstance(value, _PLAIN_TYPES):
        raise DetkitError(
            f"{where} is a {type(value).__name__}; a checkpoint holds only tensors and plain Python values."
        )


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some platforms (Windows) cannot open a folder, and need not."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
