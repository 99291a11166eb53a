"""Compiled Triton kernels on a CUDA device against torchvision's CUDA ops (speed-independent checks)."""
import pytest
import torch
import torchvision

from detkit.ops import batched_nms, multi_level_roi_align, nms, roi_align, roi_pool
from detkit.ops.dispatch import interpreting

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1 would interpret, not compile, the kernels"),
]


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("DETKIT_OPS", "triton")


def boxes_on_gpu(n: int, size: float = 1333.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    xy = torch.rand(n, 2, device="cuda", generator=g) * size
    wh = torch.rand(n, 2, device="cuda", generator=g) * 200 + 8
    return torch.cat([xy, xy + wh], 1)


def rois_on_gpu(r: int, images: int, size: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    idx = torch.randint(0, images, (r, 1), device="cuda", generator=g).float()
    return torch.cat([idx, boxes_on_gpu(r, size, seed) - 16], 1)


@pytest.mark.parametrize("n,threshold", [(1000, 0.7), (5000, 0.5), (20000, 0.7)])
def test_nms_matches_torchvision(n, threshold):
    boxes = boxes_on_gpu(n, seed=n)
    scores = torch.rand(n, device="cuda")
    scores[::5] = 0.5  # ties
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_batched_nms_80_classes_matches_torchvision():
    boxes, scores = boxes_on_gpu(5000, seed=3), torch.rand(5000, device="cuda").mul(50).floor()
    idxs = torch.randint(0, 80, (5000,), device="cuda")
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


def test_nms_mask_and_scan_never_synchronise_with_the_host():
    from detkit.ops.kernels.nms import _sorted_keep

    boxes = boxes_on_gpu(3000, seed=4)
    _sorted_keep(boxes, None, None, 0.5)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _sorted_keep(boxes, None, None, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_roi_align_fp32_matches_torchvision(aligned, sampling_ratio, channels_last):
    f = torch.randn(2, 64, 50, 84, device="cuda")
    if channels_last:
        f = f.to(memory_format=torch.channels_last)
    f.requires_grad_()
    rois = rois_on_gpu(500, 2, 200.0)
    args = (7, 0.25, sampling_ratio, aligned)
    out, ref = roi_align(f, rois, *args), torchvision.ops.roi_align(f, rois, *args)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, f, grad_out)[0], torch.autograd.grad(ref, f, grad_out)[0],
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_half_precision(dtype):
    f = torch.randn(2, 32, 40, 60, device="cuda")
    rois = rois_on_gpu(300, 2, 160.0)
    out = roi_align(f.to(dtype), rois, 7, 0.25, 2, True)
    ref = torchvision.ops.roi_align(f.to(dtype).float(), rois, 7, 0.25, 2, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_roi_align_box_gradient_passes_gradcheck_on_gpu():
    f = torch.randn(2, 4, 12, 14, device="cuda", dtype=torch.float64)
    rois = rois_on_gpu(6, 2, 40.0).double()
    corners = rois[:, 1:].clone().requires_grad_()
    fn = lambda c: roi_align(f, torch.cat([rois[:, :1], c], 1), 3, 0.25, 2, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (corners,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_pool_matches_torchvision(channels_last):
    f = torch.randn(2, 64, 50, 84, device="cuda")
    if channels_last:
        f = f.to(memory_format=torch.channels_last)
    f.requires_grad_()
    rois = rois_on_gpu(400, 2, 200.0)
    out, ref = roi_pool(f, rois, 7, 0.25), torchvision.ops.roi_pool(f, rois, 7, 0.25)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, f, grad_out)[0], torch.autograd.grad(ref, f, grad_out)[0])


def test_multi_level_matches_multiscale_roi_align():
    feats = {str(i): torch.randn(2, 32, 256 // s, 320 // s, device="cuda") for i, s in enumerate([4, 8, 16, 32])}
    boxes = [boxes_on_gpu(100, 256.0, seed=i) for i in range(2)]
    ref = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, [(256, 320)] * 2)
    from detkit.ops.benchmark import fpn_levels

    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    out = multi_level_roi_align(list(feats.values()), rois, fpn_levels(rois[:, 1:], 2, 5), 7, scales, 2, False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torchvision"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_nms_keeps_the_float32_indices_on_cuda(monkeypatch, backend, dtype):
    # float16 areas of 3400 px boxes overflow: computed in half, every IoU would be NaN and all boxes kept
    monkeypatch.setenv("DETKIT_OPS", backend)
    boxes = torch.tensor([[0.0, 0.0, 3400.0, 3400.0], [100.0, 100.0, 3400.0, 3400.0], [0.0, 0.0, 3000.0, 3300.0]],
                         device="cuda", dtype=dtype)
    scores = torch.tensor([0.9, 0.8, 0.7], device="cuda", dtype=dtype)
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1], device="cuda"), 0.5).tolist() == [0, 2]
