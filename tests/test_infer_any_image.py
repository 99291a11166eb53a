"""tools/infer.py reads any decodable image with every detector (issue #21 item 4): extreme shapes, 1 x 1,
grayscale, RGBA, 16-bit, EXIF-rotated (boxes and the drawn picture upright, as a viewer shows it)."""
import argparse
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detkit import build_model, load_config
from detkit.config import save_config
from tests.modeling.test_extreme_images import DETECTORS
from tests.test_tools import REPO

SPEC = importlib.util.spec_from_file_location("infer_tool", REPO / "tools" / "infer.py")
INFER = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(INFER)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Each image and the (height, width) a viewer shows."""
    folder = tmp_path_factory.mktemp("any")
    rng = np.random.default_rng(0)
    sizes = {}
    for name, (h, w) in {"tall.png": (10000, 20), "wide.png": (20, 10000), "one.png": (1, 1)}.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        sizes[name] = (h, w)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels[..., 0], "L").save(folder / "gray.png")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA").save(folder / "rgba.png")
    cv2.imwrite(str(folder / "deep.png"), pixels.astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 64 high, 48 wide
    Image.fromarray(pixels).save(folder / "phone.jpg", exif=exif)
    sizes.update({"gray.png": (48, 64), "rgba.png": (48, 64), "deep.png": (48, 64), "phone.jpg": (64, 48)})
    return folder, sizes


@pytest.mark.parametrize("arch", DETECTORS)
def test_infer_gives_detections_inside_every_image_as_shown(arch, images, tmp_path, capsys):
    folder, sizes = images
    recipe, extra = DETECTORS[arch]
    cfg = load_config(REPO / "configs" / recipe, ["model.num_classes=2", "input.min_size=64", "input.max_size=96",
                                                  "model.class_names=[a,b]", "proposals.top_k=30", "threads=1",
                                                  f"output_dir={tmp_path / 'run'}", *extra])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "meta": {"class_names": ["a", "b"]}}, tmp_path / "w.pth")
    save_config(cfg, tmp_path / "config.yaml")
    out = tmp_path / "out"
    args = argparse.Namespace(inputs=[str(folder)], config=str(tmp_path / "config.yaml"),
                              weights=str(tmp_path / "w.pth"), out=str(out), score_thresh=0.0,
                              stop_on_error=False, no_progress=False)
    assert INFER.main(args) == 0
    printed = capsys.readouterr()
    assert f"in {len(sizes)} images" in printed.out
    # Output that is not a terminal (here captured; a Slurm log) gets log lines, not a bar redrawn with "\r".
    assert "\r" not in printed.err and f"infer: {len(sizes)}/{len(sizes)} (100%) elapsed" in printed.err
    results = json.loads((out / "detections.json").read_text())
    for r in results:
        name = r["file_name"].rsplit("/", 1)[-1]
        x, y, w, h = r["bbox"]
        height, width = sizes[name]
        assert 0 <= x and x + w <= width + 0.02 and 0 <= y and y + h <= height + 0.02, (name, r["bbox"])
    for name, (height, width) in sizes.items():
        assert Image.open(out / name).size == (width, height), name  # drawn upright, at the input's size
