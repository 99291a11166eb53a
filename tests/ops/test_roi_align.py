"""RoIAlign: the Triton kernel (interpreter) and the pure-PyTorch box-gradient path against torchvision."""
import pytest
import torch
import torchvision

from detkit.errors import DetkitError
from detkit.ops import roi_align
from tests.ops.conftest import random_rois

SCALE = 0.25


def features(dtype=torch.float32, channels_last=False, seed=0) -> torch.Tensor:
    f = torch.randn(2, 5, 8, 9, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return (f.to(memory_format=torch.channels_last) if channels_last else f).requires_grad_()


def forward_backward(fn, f, rois, seed=1):
    out = fn(f, rois)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    (grad_f,) = torch.autograd.grad(out, f, grad_out)
    return out, grad_f


@pytest.mark.usefixtures("triton_cpu")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (False, 2), (True, -1), (True, 1)])
def test_triton_matches_torchvision_and_float64(aligned, sampling_ratio, channels_last):
    f, rois = features(channels_last=channels_last), random_rois(6, 2)
    args = ((3, 2), SCALE, sampling_ratio, aligned)
    out, grad = forward_backward(lambda x, r: roi_align(x, r, *args), f, rois)
    ref, ref_grad = forward_backward(lambda x, r: torchvision.ops.roi_align(x, r, *args), f, rois)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    f64 = f.detach().double().requires_grad_()
    ref64, ref64_grad = forward_backward(lambda x, r: torchvision.ops.roi_align(x, r, *args), f64, rois.double())
    torch.testing.assert_close(out.double(), ref64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref64_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("triton_cpu")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features(dtype):
    f, rois = features(dtype), random_rois(5, 2)
    out = roi_align(f, rois, 2, SCALE, 2, True)
    assert out.dtype == dtype
    ref = torchvision.ops.roi_align(f.detach().double(), rois.double(), 2, SCALE, 2, True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.usefixtures("triton_cpu")
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_box_gradient_passes_gradcheck(aligned, sampling_ratio):
    f = features(torch.float64).detach()
    rois = random_rois(3, 2, dtype=torch.float64)
    corners = rois[:, 1:].clone().requires_grad_()
    fn = lambda c: roi_align(f, torch.cat([rois[:, :1], c], 1), 2, SCALE, sampling_ratio, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (corners,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_torch_path_box_gradient_passes_gradcheck(torchvision_backend, aligned, sampling_ratio):
    f = features(torch.float64)
    rois = random_rois(4, 2, dtype=torch.float64)
    corners = rois[:, 1:].clone().requires_grad_()
    fn = lambda x, c: roi_align(x, torch.cat([rois[:, :1], c], 1), (2, 3), SCALE, sampling_ratio, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f, corners), eps=1e-6, atol=1e-6, fast_mode=True)
    _, grad = forward_backward(lambda x, r: fn(x, r[:, 1:].clone().requires_grad_()), f, rois)
    reference = lambda x, r: torchvision.ops.roi_align(x, r, (2, 3), SCALE, sampling_ratio, aligned)  # noqa: E731
    _, ref_grad = forward_backward(reference, f, rois)
    torch.testing.assert_close(grad, ref_grad)


def test_triton_box_gradient_equals_torch_path(monkeypatch, triton_cpu):
    f, rois = features(), random_rois(5, 2)
    grads = []
    for backend in ("triton", "torchvision"):
        monkeypatch.setenv("DETKIT_OPS", backend)
        r = rois.clone().requires_grad_()
        out = roi_align(f, r, (3, 2), SCALE, -1, False)
        grads.append(torch.autograd.grad(out, [f, r], torch.ones_like(out)))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)
    assert grads[0][1][:, 0].abs().sum() == 0  # the batch index gets no gradient


@pytest.mark.usefixtures("triton_cpu")
def test_edge_cases_zero_rois_outside_and_zero_size():
    f = features()
    empty = roi_align(f, torch.zeros(0, 5), 2, SCALE)
    assert empty.shape == (0, 5, 2, 2)
    rois = torch.tensor([[0, 500, 500, 600, 600], [1, -90, -90, -50, -50], [0, 8, 8, 8, 8], [1, 12, 4, 12, 30.0]])
    for aligned in (False, True):
        out = roi_align(f, rois, 2, SCALE, -1, aligned)
        torch.testing.assert_close(out, torchvision.ops.roi_align(f, rois, 2, SCALE, -1, aligned), rtol=1e-5, atol=1e-6)
        assert out[:2].abs().sum() == 0
    out = roi_align(f, rois.requires_grad_(), 2, SCALE, 2, False)
    f_grad, box_grad = torch.autograd.grad(out.sum(), [f, rois])
    assert torch.isfinite(box_grad).all() and torch.isfinite(f_grad).all()


@pytest.mark.usefixtures("triton_cpu")
def test_list_of_boxes_per_image():
    f = features()
    boxes = [random_rois(3, 1)[:, 1:], random_rois(2, 1, seed=4)[:, 1:]]
    rois = torch.cat([torch.tensor([[0.0]] * 3 + [[1.0]] * 2), torch.cat(boxes)], 1)
    torch.testing.assert_close(roi_align(f, boxes, 2, SCALE, 2, True), roi_align(f, rois, 2, SCALE, 2, True))


def test_bad_boxes_raise_naming_the_input():
    with pytest.raises(DetkitError, match=r"boxes\[1\]"):
        roi_align(torch.zeros(2, 1, 4, 4), [torch.zeros(1, 4), torch.zeros(2, 5)], 2)
    with pytest.raises(DetkitError, match="Tensor\\[R, 5\\]"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4), 2)
    with pytest.raises(DetkitError, match="output_size"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 5), 0)


def test_torchvision_path_takes_bf16_and_mixed_dtypes(torchvision_backend):
    f, rois = features().detach(), random_rois(4, 2)
    ref = torchvision.ops.roi_align(f, rois, 2, SCALE, 2, True)
    bf16 = roi_align(f.bfloat16(), rois, 2, SCALE, 2, True)  # torchvision has no CPU bf16 kernel
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(roi_align(f, rois.double(), 2, SCALE, 2, True), ref)
