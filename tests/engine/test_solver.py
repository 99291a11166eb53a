"""Tests for detkit.engine.solver: parameter groups and the per-iteration learning-rate schedule."""
import math

import pytest
from torch import nn

from detkit.engine.solver import build_lr_scheduler, build_optimizer
from detkit.errors import DetkitError

BASE_LR = 0.02


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _lrs(num_iters: int, **kwargs) -> list[float]:
    """The learning rate used at each iteration 0..num_iters-1."""
    optimizer = build_optimizer(_model(), base_lr=BASE_LR)
    scheduler = build_lr_scheduler(optimizer, **kwargs)
    lrs = []
    for _ in range(num_iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_ramps_linearly_from_warmup_factor_to_base_lr():
    lrs = _lrs(12, max_iter=20, warmup_iters=10, warmup_factor=0.001, policy="step", steps=(15,))
    assert lrs[0] == pytest.approx(BASE_LR * 0.001)
    assert lrs[5] == pytest.approx(BASE_LR * (0.001 * 0.5 + 0.5))
    assert lrs[10] == pytest.approx(BASE_LR)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))


def test_step_policy_multiplies_by_gamma_at_each_step():
    lrs = _lrs(20, max_iter=20, warmup_iters=0, policy="step", steps=(8, 15), gamma=0.1)
    assert lrs[7] == pytest.approx(BASE_LR)
    assert lrs[8] == pytest.approx(BASE_LR * 0.1)
    assert lrs[14] == pytest.approx(BASE_LR * 0.1)
    assert lrs[15] == pytest.approx(BASE_LR * 0.01)


def test_cosine_policy_halves_at_midpoint_and_reaches_zero_at_max_iter():
    lrs = _lrs(101, max_iter=100, warmup_iters=0, policy="cosine")
    assert lrs[0] == pytest.approx(BASE_LR)
    assert lrs[50] == pytest.approx(BASE_LR * 0.5)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_warmup_multiplies_the_decay():
    lrs = _lrs(3, max_iter=4, warmup_iters=4, warmup_factor=0.5, policy="cosine")
    assert lrs[2] == pytest.approx(BASE_LR * 0.75 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))


def test_weight_decay_applies_to_every_parameter_by_default():
    optimizer = build_optimizer(_model(), base_lr=BASE_LR, weight_decay=1e-4)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4]
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_weight_decay_norm_applies_to_norm_and_bias_parameters():
    model = _model()
    optimizer = build_optimizer(model, base_lr=BASE_LR, weight_decay=1e-4, weight_decay_norm=0.0)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    conv, bn, _, linear = model
    assert {id(p) for p in decay["params"]} == {id(conv.weight), id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(linear.bias)}


def test_frozen_parameters_are_not_optimized():
    model = _model()
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, base_lr=BASE_LR)
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model[0].weight) not in ids and id(model[3].weight) in ids


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"policy": "poly"}, "lr_policy"),
        ({"steps": (8, 5)}, "steps"),
        ({"steps": (0.75,)}, "steps"),
        ({"steps": (30,)}, "steps"),
        ({"warmup_iters": -1}, "warmup_iters"),
    ],
)
def test_bad_schedule_arguments_raise_naming_the_key(kwargs, key):
    optimizer = build_optimizer(_model(), base_lr=BASE_LR)
    with pytest.raises(DetkitError, match=key):
        build_lr_scheduler(optimizer, **{"max_iter": 20, "warmup_iters": 2, **kwargs})
