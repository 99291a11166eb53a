"""RoIPool: the Triton kernel (interpreter) against torchvision, ties and empty bins included."""
import pytest
import torch
import torchvision

from detkit.ops import roi_pool
from tests.ops.conftest import random_rois

pytestmark = pytest.mark.usefixtures("triton_cpu")


def check_against_torchvision(f: torch.Tensor, rois: torch.Tensor, output_size, scale: float) -> None:
    f = f.detach().requires_grad_()
    out = roi_pool(f, rois, output_size, scale)
    ref = torchvision.ops.roi_pool(f, rois, output_size, scale)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    (grad,) = torch.autograd.grad(out, f, grad_out)
    (ref_grad,) = torch.autograd.grad(ref, f, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torchvision(dtype, channels_last):
    f = torch.randn(2, 5, 8, 9, generator=torch.Generator().manual_seed(0)).to(dtype)
    if channels_last:
        f = f.to(memory_format=torch.channels_last)
    check_against_torchvision(f, random_rois(7, 2, dtype=dtype), (3, 2), 0.25)


def test_ties_take_the_first_maximum_and_empty_bins_are_zero():
    f = torch.zeros(1, 2, 6, 6)
    f[0, 0, 1:4, 1:4] = 1.0  # a plateau: the gradient must go to one cell per bin, as torchvision picks it
    rois = torch.tensor([[0, 0, 0, 5, 5], [0, 2, 2, 2, 2], [0, -20, -20, -10, -10], [0, 30, 30, 40, 40.0]])
    check_against_torchvision(f, rois, 2, 1.0)
    assert roi_pool(f, rois, 2, 1.0)[2:].abs().sum() == 0


def test_zero_rois_and_half_precision():
    f = torch.randn(1, 3, 5, 5)
    assert roi_pool(f, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    rois = random_rois(4, 1)
    out = roi_pool(f.half(), rois, 2, 0.25)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torchvision.ops.roi_pool(f.half().float(), rois, 2, 0.25))
