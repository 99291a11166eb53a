"""Every decodable image becomes 3-channel uint8 RGB (issue #21 item 4): grayscale, RGBA, palette, 16-bit PNGs;
EXIF orientation applied when asked (infer.py), as PIL.ImageOps.exif_transpose does, and kept off for datasets."""
import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detkit.data.image_io import read_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_grayscale_rgba_and_palette_pngs_become_rgb(tmp_path):
    gray = RGB[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([RGB, np.full((5, 7), 9, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.png")
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.dstack([gray] * 3))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), RGB)  # alpha dropped, colours kept
    palette = Image.open(tmp_path / "palette.png").convert("RGB")
    assert np.array_equal(read_image(tmp_path / "palette.png"), np.asarray(palette))


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
    deep = RGB.astype(np.uint16) * 257  # 8-bit v -> 16-bit v * 257, which reads back as v
    cv2.imwrite(str(tmp_path / "c16.png"), deep[..., ::-1])
    cv2.imwrite(str(tmp_path / "g16.png"), deep[..., 0])
    assert np.array_equal(read_image(tmp_path / "c16.png"), RGB)
    assert np.array_equal(read_image(tmp_path / "g16.png"), np.dstack([RGB[..., 0]] * 3))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_only_when_asked(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # lossless, so pixels compare exactly
    Image.fromarray(RGB).save(path, exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(read_image(path, exif_orientation=True), upright)
    assert np.array_equal(read_image(path), RGB)  # datasets: the stored grid their annotations refer to


def test_exif_rotated_jpeg_is_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: a phone held upright
    Image.fromarray(np.repeat(np.repeat(RGB, 8, 0), 8, 1)).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    assert read_image(tmp_path / "phone.jpg", exif_orientation=True).shape == (56, 40, 3)
    assert read_image(tmp_path / "phone.jpg").shape == (40, 56, 3)
