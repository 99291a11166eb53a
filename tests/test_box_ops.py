import math

import torch
from torchvision.models.detection import _utils as tv_utils

from detkit.box_ops import DEFAULT_SCALE_CLAMP, BoxCoder


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 100 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_decode_inverts_encode():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref, tgt = random_boxes(100, 0), random_boxes(100, 1)
    torch.testing.assert_close(coder.decode(coder.encode(tgt, ref), ref), tgt, rtol=1e-5, atol=1e-3)


def test_matches_torchvision_box_coder():
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, theirs = BoxCoder(weights), tv_utils.BoxCoder(weights)
    ref, tgt = random_boxes(50, 2), random_boxes(50, 3)
    torch.testing.assert_close(ours.encode(tgt, ref), theirs.encode_single(tgt, ref))
    deltas = torch.randn(50, 4 * 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours.decode(deltas, ref), theirs.decode_single(deltas, ref))


def test_decode_clamps_log_size_ratio():
    coder = BoxCoder()
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)
    assert DEFAULT_SCALE_CLAMP == math.log(1000 / 16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))
