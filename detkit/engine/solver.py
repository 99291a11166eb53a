"""The solver: SGD with momentum and weight decay, and a per-iteration learning-rate schedule.

Names: `iteration` counts optimizer steps from 0; the schedule is a factor on `base_lr`, a linear warm-up from
`warmup_factor` to 1 over the first `warmup_iters` iterations, multiplied by a `step` or `cosine` decay.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

import torch
from torch import nn

from detkit.errors import DetkitError

# Parameters of these layers (their weight and bias) count as "norm" parameters for `weight_decay_norm`.
_NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)

LR_POLICIES = ("step", "cosine")


def build_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_norm: float | None = None,
) -> torch.optim.SGD:
    """Build SGD over the model's trainable parameters; `weight_decay_norm` (if set) applies to norm and bias params."""
    if base_lr <= 0:
        raise DetkitError(f"solver.base_lr must be positive, got {base_lr}.")
    if weight_decay < 0 or (weight_decay_norm is not None and weight_decay_norm < 0):
        raise DetkitError(f"solver.weight_decay must be >= 0, got {weight_decay} (norm: {weight_decay_norm}).")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_norm_or_bias = isinstance(module, _NORM_LAYERS) or name == "bias"
            (no_decay if weight_decay_norm is not None and is_norm_or_bias else decay).append(param)
    if not decay and not no_decay:
        raise DetkitError("The model has no trainable parameters to optimize.")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": weight_decay_norm})
    return torch.optim.SGD([g for g in groups if g["params"]], lr=base_lr, momentum=momentum)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float = 0.001,
    policy: str = "step",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Build a per-iteration LambdaLR: linear warm-up, then `step` (x gamma at each of `steps`) or `cosine` decay."""
    if max_iter <= 0:
        raise DetkitError(f"solver.max_iter must be positive, got {max_iter}.")
    if warmup_iters < 0 or not 0 < warmup_factor <= 1:
        raise DetkitError(
            "solver.warmup_iters must be >= 0 and solver.warmup_factor in (0, 1], "
            f"got {warmup_iters} and {warmup_factor}."
        )
    if policy not in LR_POLICIES:
        raise DetkitError(f"solver.lr_policy must be one of {', '.join(LR_POLICIES)}, got {policy!r}.")
    steps = [int(s) for s in steps]
    if any(b <= a for a, b in zip(steps, steps[1:])) or any(not 0 < s <= max_iter for s in steps):
        raise DetkitError(f"solver.steps must be increasing iterations in (0, max_iter={max_iter}], got {steps}.")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(max_iter, warmup_iters, warmup_factor, policy, steps, gamma)
    )


def _lr_factor(
    max_iter: int, warmup_iters: int, warmup_factor: float, policy: str, steps: list[int], gamma: float
) -> Callable[[int], float]:
    """Return the function iteration -> learning-rate factor."""

    def factor(iteration: int) -> float:
        if policy == "step":
            decay = gamma ** bisect.bisect_right(steps, iteration)
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max_iter))
        if iteration >= warmup_iters:
            return decay
        alpha = iteration / warmup_iters
        return decay * (warmup_factor * (1.0 - alpha) + alpha)

    return factor
