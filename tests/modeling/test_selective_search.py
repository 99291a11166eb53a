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
