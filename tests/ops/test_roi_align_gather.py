"""roi_align_gather (CPU inference RoIAlign as one gather) equals torchvision.ops.roi_align level by level."""
import pytest
import torch
import torchvision

from detkit.errors import DetkitError
from detkit.ops.roi_align_gather import roi_align_gather

SCALES = [1 / 4, 1 / 8, 1 / 16]


def levels_and_rois(num: int = 40):
    """Three FPN-like levels for 2 images, RoIs of all sizes (some reaching outside the image), a level each."""
    torch.manual_seed(0)
    features = [torch.randn(2, 6, 32 // 2 ** k, 40 // 2 ** k) for k in range(3)]
    xy = torch.rand(num, 2) * 170 - 15
    boxes = torch.cat([xy, xy + torch.rand(num, 2) * 70 + 0.2], dim=1)
    rois = torch.cat([torch.randint(0, 2, (num, 1)).float(), boxes], dim=1)
    return features, rois, torch.randint(0, 3, (num,))


def torchvision_per_roi(features, rois, levels, size, ratio, aligned):
    return torch.cat([torchvision.ops.roi_align(features[k], rois[i:i + 1], size, SCALES[k], ratio, aligned)
                      for i, k in enumerate(levels.tolist())])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_equals_torchvision_on_every_level(aligned, ratio):
    features, rois, levels = levels_and_rois()
    expected = torchvision_per_roi(features, rois, levels, (7, 5), ratio, aligned)
    out = roi_align_gather(features, rois, levels, (7, 5), SCALES, ratio, aligned)
    assert out.shape == (40, 6, 7, 5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    channels_last = [f.contiguous(memory_format=torch.channels_last) for f in features]
    torch.testing.assert_close(roi_align_gather(channels_last, rois, levels, (7, 5), SCALES, ratio, aligned), out)


def test_bf16_features_stay_bf16_within_bf16_rounding():
    features, rois, levels = levels_and_rois()
    expected = torchvision_per_roi(features, rois, levels, (7, 7), 2, True)
    out = roi_align_gather([f.bfloat16() for f in features], rois, levels, (7, 7), SCALES, 2, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.03, rtol=0.02)  # bf16: 8 significant bits


def test_no_rois_and_the_adaptive_grid():
    features, rois, levels = levels_and_rois()
    assert roi_align_gather(features, rois[:0], levels[:0], (7, 7), SCALES, 2, True).shape == (0, 6, 7, 7)
    with pytest.raises(DetkitError, match="sampling_ratio must be > 0"):
        roi_align_gather(features, rois, levels, (7, 7), SCALES, 0, True)
