"""Every float dtype through every op face and CPU path (torchvision, Triton under the interpreter), with and
without autocast: the same kept indices as float32 for NMS, torchvision's float32 result for RoIAlign / RoIPool."""
import pytest
import torch
import torchvision

from detkit.errors import DetkitError
from detkit.ops import batched_nms, multi_level_roi_align, nms, roi_align, roi_pool

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Box 0 contains box 2 (IoU 0.81) and overlaps box 1 (IoU 0.89); in float16 the areas (3400^2 > 65504) overflow,
# which would make every IoU NaN and keep all three boxes.
BOXES = torch.tensor([[0.0, 0.0, 3400.0, 3400.0], [100.0, 100.0, 3400.0, 3400.0], [0.0, 0.0, 3000.0, 3300.0]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
CLASSES = torch.tensor([0, 0, 1])


@pytest.fixture(params=["torchvision", "triton"])
def backend(request, monkeypatch):
    if request.param == "triton":
        request.getfixturevalue("triton_cpu")
    else:
        monkeypatch.setenv("DETKIT_OPS", "torchvision")
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_keeps_the_float32_indices_for_every_dtype(backend, dtype):
    boxes, scores = BOXES.to(dtype), SCORES.to(dtype)
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, CLASSES, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 2]  # IoU 0.89 and 0.81 stay under 0.9
    # and equal to torchvision on the same values in float32, with mixed box / score dtypes too
    ref = torchvision.ops.batched_nms(boxes.float(), scores.float(), CLASSES, 0.85)
    assert torch.equal(batched_nms(boxes, scores.float(), CLASSES, 0.85), ref)


def test_nms_rejects_integer_boxes_in_one_line():
    with pytest.raises(DetkitError, match="nms: boxes and scores must be floating point, got torch.int64"):
        nms(BOXES.long(), SCORES, 0.5)


def feature_map(dtype):
    return torch.arange(16.0).reshape(1, 1, 4, 4).div(7).sin().to(dtype)


ROIS = torch.tensor([[0, 0.3, 0.7, 3.1, 2.9], [0, 1.2, 0.1, 2.5, 3.7]])


@pytest.mark.parametrize("box_grad", [False, True])
def test_roi_align_under_cpu_bf16_autocast_computes_in_float32(backend, box_grad):
    # torchvision's autocast kernel upcasts to float32; the pure-PyTorch box-gradient path (box_grad) must too.
    features = feature_map(torch.float32)
    rois = ROIS.clone().requires_grad_(box_grad)
    ref = torchvision.ops.roi_align(features, ROIS, 2, 1.0, 2, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(features, rois, 2, 1.0, 2, True)
        multi = multi_level_roi_align([features], rois, torch.zeros(2, dtype=torch.long), 2, [1.0], 2, True)
    assert out.dtype == multi.dtype == torch.float32
    assert (out - ref).abs().max().item() < 1e-6 and (multi - ref).abs().max().item() < 1e-6
    if box_grad:
        (grad,) = torch.autograd.grad(out.sum(), rois)
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad[:, 1:].abs().sum() > 0


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("box_grad", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_ops_round_the_float32_result_for_every_dtype(backend, dtype, box_grad, autocast):
    features, rois = feature_map(dtype), ROIS.to(dtype).clone().requires_grad_(box_grad)
    exact = torchvision.ops.roi_align(features.double(), rois.detach().double(), 2, 1.0, 2, True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = roi_align(features, rois, 2, 1.0, 2, True)
        pooled = roi_pool(features, rois, 2, 1.0)
    assert out.dtype == pooled.dtype == dtype
    # computed in float32 or better (error ~1e-7), then rounded once to a half dtype: within half a unit in the
    # last place (a whole unit for Triton's bfloat16: the interpreter truncates float32 -> bfloat16, a GPU rounds)
    rounding = 0.0 if dtype in (torch.float32, torch.float64) else torch.finfo(dtype).eps / 2
    if backend == "triton" and dtype == torch.bfloat16:
        rounding *= 2
    compute = 1e-12 if dtype == torch.float64 else 1e-6
    assert ((out.double() - exact).abs() <= (rounding + compute) * exact.abs()).all()
    assert torch.equal(pooled.double(), torchvision.ops.roi_pool(features.double(), rois.detach().double(), 2, 1.0))
