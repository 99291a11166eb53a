"""Choose, per call, between detkit's Triton kernels and torchvision.ops / pure PyTorch.

Backends: ``auto`` (Triton for CUDA tensors when triton imports, torchvision otherwise), ``triton`` (always
Triton; CPU tensors only under ``TRITON_INTERPRET=1``), ``torchvision``. The env var ``DETKIT_OPS``, when set,
wins over ``set_backend`` (the config key ``ops.backend``); both are read at call time.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from detkit.errors import DetkitError

BACKENDS = ("auto", "triton", "torchvision")
_configured = "auto"


def set_backend(name: str) -> None:
    """Set the backend used when DETKIT_OPS is unset (the config key ops.backend)."""
    global _configured
    _configured = _checked(name, "ops.backend")


def get_backend() -> str:
    """Return the backend in force now: DETKIT_OPS if set, else the one from set_backend."""
    env = os.environ.get("DETKIT_OPS", "").strip().lower()
    return _checked(env, "DETKIT_OPS") if env else _configured


def _checked(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise DetkitError(f"{where} must be one of {', '.join(BACKENDS)}, got {name!r}.")
    return name


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Return True when triton can be imported (imported once, only when a CUDA tensor or 'triton' asks)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install (driver/ABI mismatch) counts as absent
        return False
    return True


def interpreting() -> bool:
    """Return True when Triton kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def use_triton(op: str, tensor: torch.Tensor) -> bool:
    """Return True when `op` on `tensor` should run detkit's Triton kernel; raise if 'triton' cannot."""
    backend = get_backend()
    if backend == "torchvision":
        return False
    if backend == "auto":
        return tensor.is_cuda and triton_available()
    if not tensor.is_cuda and not interpreting():
        raise DetkitError(
            f"{op}: DETKIT_OPS=triton on a {tensor.device.type} tensor needs TRITON_INTERPRET=1 "
            "(set before triton is imported) or a CUDA tensor."
        )
    if not triton_available():
        raise DetkitError(f"{op}: DETKIT_OPS=triton but triton cannot be imported.")
    return True
