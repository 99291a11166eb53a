"""Triton NMS under the interpreter returns torchvision's kept indices, in torchvision's order."""
import pytest
import torch
import torchvision

from detkit.ops import batched_nms, nms
from tests.ops.conftest import random_boxes

# zero-area boxes give 0/0 IoU (NaN, never suppresses, as in torchvision); the interpreter warns about it
pytestmark = [pytest.mark.usefixtures("triton_cpu"), pytest.mark.filterwarnings("ignore:invalid value encountered")]


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 150])
def test_nms_matches_torchvision(n):
    boxes = random_boxes(n, seed=n)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    keep = nms(boxes, scores, 0.3)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.3))


def test_equal_scores_keep_index_order():
    boxes = random_boxes(70, size=20.0, seed=3)
    scores = torch.full((70,), 0.5)
    scores[::7] = 0.9
    keep = nms(boxes, scores, 0.4)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.4))
    assert len(keep) < 70


def test_identical_and_zero_area_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.3, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3, 4]
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_box_dtypes(dtype):
    boxes = random_boxes(80, seed=5).to(dtype)
    scores = torch.rand(80, generator=torch.Generator().manual_seed(5)).to(dtype)
    common = torch.promote_types(dtype, torch.float32)  # torchvision's CPU kernel has no fp16
    ref = torchvision.ops.nms(boxes.to(common), scores.to(common), 0.5)
    assert torch.equal(nms(boxes, scores, 0.5), ref)


def test_batched_nms_matches_torchvision_with_ties():
    boxes = random_boxes(150, size=30.0, seed=7)
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(150, generator=g).mul(4).floor() / 4  # many exact ties, within and across classes
    idxs = torch.randint(0, 4, (150,), generator=g)
    keep = batched_nms(boxes, scores, idxs, 0.3)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idxs, 0.3))


def test_batched_nms_never_suppresses_across_classes():
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 4)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([2, 0, 2, 5])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 3]
    assert batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).shape == (0,)


def test_scan_chunks_and_mask_splits_do_not_change_the_result(monkeypatch):
    from detkit.ops.kernels import nms as kernels

    boxes = random_boxes(150, size=30.0, seed=9)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(9))
    idxs = torch.randint(0, 3, (150,), generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(kernels, "SCAN_CHUNK", 1)  # several OR steps per row block
    monkeypatch.setattr(kernels, "MAX_SPLIT", 1)  # one program walks all column blocks of its rows
    assert torch.equal(nms(boxes, scores, 0.3), torchvision.ops.nms(boxes, scores, 0.3))
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.3), torchvision.ops.batched_nms(boxes, scores, idxs, 0.3))
