import numpy as np
import pytest

from detkit.data.image_io import read_image, to_tensor
from detkit.errors import DetkitError

from .conftest import write_image


def test_read_image_gives_rgb_uint8_hwc(tmp_path):
    import cv2

    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    image = read_image(tmp_path / "red.png")
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 0, 0]
    tensor = to_tensor(image)
    assert tensor.shape == (3, 4, 6) and tensor[0].max() == 1.0 and tensor[1].max() == 0.0


def test_missing_and_corrupt_files_raise_naming_the_file(tmp_path):
    with pytest.raises(DetkitError, match="nothere.jpg does not exist"):
        read_image(tmp_path / "nothere.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DetkitError, match="junk.jpg is corrupt"):
        read_image(tmp_path / "junk.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DetkitError, match="empty.jpg is corrupt"):
        read_image(tmp_path / "empty.jpg")
    write_image(tmp_path / "ok.jpg", 5, 7)
    assert read_image(tmp_path / "ok.jpg").shape == (5, 7, 3)
