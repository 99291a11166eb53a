"""Multi-level RoIAlign: one Triton launch over all levels equals the per-level torchvision loop."""
import pytest
import torch

from detkit.errors import DetkitError
from detkit.ops import multi_level_roi_align
from tests.ops.conftest import random_rois

SCALES = [0.25, 0.125, 0.0625]


def pyramid(dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 16 // 2**i, 18 // 2**i, generator=g).to(dtype).requires_grad_() for i in range(3)]


def pooled_with_grads(monkeypatch, backend, feats, rois, levels, **kw):
    monkeypatch.setenv("DETKIT_OPS", backend)
    rois = rois.clone().requires_grad_()
    out = multi_level_roi_align(feats, rois, levels, 2, SCALES, **kw)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    return out, torch.autograd.grad(out, [*feats, rois], grad_out, materialize_grads=True)


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 2), (False, -1)])
def test_triton_matches_level_loop_with_an_empty_level(monkeypatch, triton_cpu, aligned, sampling_ratio):
    feats, rois = pyramid(), random_rois(6, 2, size=60.0)
    levels = torch.tensor([0, 2, 0, 2, 2, 0])  # level 1 gets no RoI
    kw = dict(sampling_ratio=sampling_ratio, aligned=aligned)
    out, grads = pooled_with_grads(monkeypatch, "triton", feats, rois, levels, **kw)
    ref, ref_grads = pooled_with_grads(monkeypatch, "torchvision", feats, rois, levels, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    assert grads[1].abs().sum() == 0


def test_half_precision_and_no_rois(triton_cpu):
    feats = [f.detach().half() for f in pyramid()]
    rois, levels = random_rois(4, 2, size=60.0), torch.tensor([0, 1, 2, 1])
    out = multi_level_roi_align(feats, rois, levels, 2, SCALES, 2, True)
    ref = multi_level_roi_align([f.float() for f in feats], rois, levels, 2, SCALES, 2, True)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    empty = multi_level_roi_align(feats, rois[:0], levels[:0], (2, 3), SCALES, 2, True)
    assert empty.shape == (0, 3, 2, 3)


def test_bad_inputs_raise_naming_the_argument():
    feats = [f.detach() for f in pyramid()]
    rois, levels = random_rois(2, 2), torch.tensor([0, 1])
    with pytest.raises(DetkitError, match="spatial_scales"):
        multi_level_roi_align(feats, rois, levels, 2, SCALES[:2], 2, True)
    with pytest.raises(DetkitError, match=r"features\[1\]"):
        multi_level_roi_align([feats[0], feats[1][:, :2]], rois, levels, 2, SCALES[:2], 2, True)
    with pytest.raises(DetkitError, match="levels"):
        multi_level_roi_align(feats, rois, levels[:1], 2, SCALES, 2, True)
    with pytest.raises(DetkitError, match="1 to 5 levels"):
        multi_level_roi_align(feats * 2, rois, levels, 2, SCALES * 2, 2, True)


def test_torch_path_passes_float64_gradcheck_for_features_and_boxes(torchvision_backend):
    """Exact joint training pools FPN levels from proposals that require grad: d out / d features and d boxes."""
    feats = [f.detach().double().requires_grad_() for f in pyramid()]
    rois = random_rois(4, 2, size=60.0, dtype=torch.float64)
    levels = torch.tensor([0, 2, 1, 0])
    corners = rois[:, 1:].clone().requires_grad_()

    def pooled(c, *levels_features):
        boxes = torch.cat([rois[:, :1], c], 1)
        return multi_level_roi_align(list(levels_features), boxes, levels, (2, 3), SCALES, 2, True)

    assert torch.autograd.gradcheck(pooled, (corners, *feats), eps=1e-6, atol=1e-6, fast_mode=True)
    box_grad = torch.autograd.grad(pooled(corners, *feats).sum(), corners)[0]
    assert box_grad.abs().sum() > 0
