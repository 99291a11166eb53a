import numpy as np
import pytest

import detkit.modeling.proposals.selective_search as ss
from detkit.errors import DetkitError


def test_finds_a_box_around_a_drawn_square():
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    image[16:48, 20:52] = (20, 40, 180)
    boxes = ss.selective_search(image, mode="fast")
    assert boxes.shape[1] == 4 and len(boxes) > 0
    assert (boxes[:, 2] <= 64).all() and (boxes[:, 0] >= 0).all()
    ious = _iou(boxes, np.array([20, 16, 52, 48], dtype=np.float32))
    assert ious.max() > 0.8


def test_missing_contrib_names_the_fix(monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    with pytest.raises(DetkitError, match="opencv-contrib-python-headless"):
        ss.selective_search(np.zeros((8, 8, 3), dtype=np.uint8))


def _iou(boxes, box):
    b = boxes.numpy()
    x1, y1 = np.maximum(b[:, 0], box[0]), np.maximum(b[:, 1], box[1])
    x2, y2 = np.minimum(b[:, 2], box[2]), np.minimum(b[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def test_an_image_gets_the_same_proposals_whatever_was_searched_before():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    other = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    first = ss.selective_search(image, mode="fast", max_proposals=100000)
    ss.selective_search(other, mode="fast")  # advances the C rand() state OpenCV ranks regions with
    again = ss.selective_search(image, mode="fast", max_proposals=100000)
    assert first.shape == again.shape and bool((first == again).all())


def test_the_proposal_generator_makes_a_fast_rcnn_callable_on_an_image_alone():
    """SelectiveSearchProposals gives propose_image's boxes for the image the tools decode; a Fast R-CNN built with
    it detects on images alone, given proposals win over it, and its state_dict is unchanged."""
    import torch

    from detkit.data.image_io import to_tensor
    from detkit.modeling.detectors.fast_rcnn import FastRCNN
    from detkit.modeling.proposals.search_generator import SelectiveSearchProposals
    from detkit.modeling.proposals.selective_search import propose_image
    from tests.modeling.test_fast_rcnn import fast_rcnn_heads

    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[10:40, 20:60] = (200, 40, 40)
    generator = SelectiveSearchProposals(max_side=80, top_k=50)
    (boxes,) = generator([to_tensor(pixels)])
    assert torch.equal(boxes, torch.from_numpy(propose_image(pixels, max_side=80, top_k=50))) and generator.seconds > 0
    from collections import OrderedDict

    class Stride8(torch.nn.Module):
        out_channels, strides = 4, {"c": 8}

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)

        def forward(self, x):
            return OrderedDict(c=self.conv(x))

    torch.manual_seed(0)
    plain = FastRCNN(Stride8(), roi_heads=fast_rcnn_heads()).eval()
    with_generator = FastRCNN(Stride8(), roi_heads=fast_rcnn_heads()).eval()
    with_generator.load_state_dict(plain.state_dict())
    with_generator.test_proposal_generator = generator
    assert plain.state_dict().keys() == with_generator.state_dict().keys()
    image = to_tensor(pixels)
    with torch.no_grad():
        alone, given = with_generator([image]), plain([image], proposals=[boxes])
        mine, theirs = with_generator([image], proposals=[boxes[:3]]), plain([image], proposals=[boxes[:3]])
    assert all(torch.equal(alone[0][k], given[0][k]) for k in ("boxes", "scores", "labels"))
    assert all(torch.equal(mine[0][k], theirs[0][k]) for k in ("boxes", "scores", "labels"))  # given ones win
    with pytest.raises(DetkitError, match="no proposal generator"):
        plain([image])
