"""Images of any decodable shape give detections (possibly none), for every detector (issue #21 item 4): extreme
aspect ratios (10000 x 20 used to end in "output (H: 191, W: 0)"), 1 x 1, and proposals that are empty."""
import numpy as np
import pytest
import torch

from detkit import build_model, load_config
from detkit.data.proposals import propose_image
from detkit.errors import DetkitError
from detkit.modeling.preprocess import ImagePreprocessor
from tests.modeling.test_build import CONFIGS

DETECTORS = {"faster_rcnn": ("faster_rcnn_r18_fpn.yaml", ["model.rpn.post_nms_top_n_test=32"]),
             "fast_rcnn": ("fast_rcnn_r18_fpn.yaml", []),
             "rcnn": ("rcnn_r18.yaml", ["model.rcnn.warp_size=32", "model.rcnn.context_pad=2"])}
SHAPES = [(10000, 20), (20, 10000), (1, 1), (2, 5000)]


def tiny(arch):
    recipe, extra = DETECTORS[arch]
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / recipe, ["model.num_classes=2", "input.min_size=96", "input.max_size=128", *extra])
    return build_model(cfg).eval()


@pytest.mark.parametrize("arch", DETECTORS)
def test_extreme_shapes_give_detections_inside_the_image(arch):
    model = tiny(arch)
    rng = np.random.default_rng(0)
    for height, width in SHAPES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        kwargs = {"proposals": [torch.from_numpy(propose_image(pixels, top_k=50))]} if model.needs_proposals else {}
        with torch.no_grad():
            det = model([image], **kwargs)[0]
        boxes = det["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) == len(det["scores"]) == len(det["labels"]), (height, width)
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width + 1e-3).all(), (height, width)
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height + 1e-3).all(), (height, width)


@pytest.mark.parametrize("arch", ["fast_rcnn", "rcnn"])
def test_no_proposals_or_degenerate_ones_give_no_detections(arch):
    model = tiny(arch)
    with torch.no_grad():
        for proposals in (torch.zeros(0, 4), torch.tensor([[10.0, 10.0, 10.0, 20.0]])):
            det = model([torch.rand(3, 50, 60)], proposals=[proposals])[0]
            assert det["boxes"].shape == (0, 4)


def test_resize_keeps_one_pixel_on_a_side_that_would_round_to_zero():
    pre = ImagePreprocessor(96, 128, pixel_mean=(0.0,) * 3, pixel_std=(1.0,) * 3).eval()
    batch, _, _ = pre([torch.rand(3, 10000, 20)])
    assert batch.image_sizes == [(128, 1)]  # scale 128 / 10000: 20 px -> 0.256 -> kept at 1
    batch, _, _ = pre([torch.rand(3, 20, 10000)])
    assert batch.image_sizes == [(1, 128)]


@pytest.mark.parametrize("channels, hint", [(1, r"image.expand\(3, -1, -1\)"), (4, r"image\[:3\]")])
def test_grayscale_or_rgba_tensor_is_one_line_saying_how_to_convert(channels, hint):
    message = rf"image 0 must be a \(3, H, W\) RGB tensor, got \({channels}, 8, 9\): .*{hint}"
    with pytest.raises(DetkitError, match=message):
        tiny("faster_rcnn")([torch.rand(channels, 8, 9)])


def test_an_empty_image_is_one_line_naming_it():
    with pytest.raises(DetkitError, match=r"image 1 is empty: 10x0 pixels \(W x H\)"):
        tiny("faster_rcnn")([torch.rand(3, 5, 5), torch.rand(3, 0, 10)])
