"""The dataset browser draws each image's boxes where they are, at the model's resize when asked."""
import cv2
import numpy as np
import pytest
import torch

from detkit.errors import DetkitError
from detkit.report.browse import browse_split
from detkit.visualize import class_color


def near(pixel, colour, tolerance=70):  # JPEG blurs a 2-pixel line
    return np.abs(pixel.astype(int) - colour).max() < tolerance


class TinyDataset:
    """Two grey 100 x 200 images, one box each (x1, y1, x2, y2), the second with proposals."""

    classes = ["cat", "dog"]

    def __init__(self, proposals=None):
        self.proposals = proposals

    def __len__(self):
        return 2

    def get(self, index, seed=None):
        target = {"boxes": torch.tensor([[20.0, 10.0, 120.0, 90.0]]), "labels": torch.tensor([index + 1]),
                  "ignore": torch.tensor([False]), "image_id": 10 + index}
        if self.proposals is not None:
            target["proposals"] = torch.tensor([[150.0, 5.0, 195.0, 50.0]])
        return torch.full((3, 100, 200), 0.5), target


def test_boxes_are_drawn_in_their_class_colour_where_they_are(tmp_path):
    result = browse_split(TinyDataset(), tmp_path, progress=False)
    assert result["images"] == 2 and result["boxes"] == {"cat": 1, "dog": 1}
    picture = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / "00001_11.jpg")), cv2.COLOR_BGR2RGB)
    assert picture.shape == (100, 200, 3)
    assert near(picture[50, 20], class_color(2)) and not near(picture[50, 20], (128, 128, 128))  # the box's edge
    assert near(picture[50, 70], (128, 128, 128), 10)  # inside: untouched
    sheet = cv2.imread(str(result["sheet"]))
    assert sheet is not None and sheet.shape[1] > 2 * 192


def test_the_models_resize_and_the_proposals(tmp_path):
    browse_split(TinyDataset(proposals="store"), tmp_path, resize=(200, 400), proposals=True, progress=False)
    picture = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / "00000_10.jpg")), cv2.COLOR_BGR2RGB)
    assert picture.shape == (200, 400, 3)  # scale 2, as the preprocessor's
    assert near(picture[100, 40], class_color(1)) and not near(picture[100, 40], (128, 128, 128))  # scaled box
    assert near(picture[50, 300], (160, 160, 160), 25) and not near(picture[50, 300], (128, 128, 128), 20)


def test_bad_requests_are_one_clear_error(tmp_path):
    with pytest.raises(DetkitError, match="no proposal store"):
        browse_split(TinyDataset(), tmp_path, proposals=True, progress=False)
    with pytest.raises(DetkitError, match="--limit must be at least 1"):
        browse_split(TinyDataset(), tmp_path, limit=0, progress=False)
