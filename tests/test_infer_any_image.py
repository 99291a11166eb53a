"""tools/infer.py reads any decodable image with every detector (issue #21 item 4): extreme shapes, 1 x 1,
grayscale, RGBA, 16-bit, EXIF-rotated (boxes and the drawn picture upright, as a viewer shows it); and eval.py on a
VOC set of extreme shapes."""
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



def load_tool(name):
    """tools/<name>.py as a module, so that its main runs in this process (no interpreter start-up per case)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INFER, EVAL = load_tool("infer"), load_tool("eval")


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
                              stop_on_error=False, no_progress=False, onnx=None, batch_size=None, threads=None)
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


@pytest.mark.parametrize("arch", DETECTORS)
def test_eval_on_a_voc_set_of_extreme_shapes(arch, tmp_path, capsys):
    from tests.data.conftest import write_voc

    rng = np.random.default_rng(1)
    shapes = [("tall", (3000, 20), (2, 100, 18, 400)), ("wide", (20, 3000), (100, 2, 400, 18)),
              ("tiny", (2, 2), (1, 1, 2, 2))]
    samples = {name: (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), [("a", box, 0)]) for name, (h, w), box in shapes}
    root = write_voc(tmp_path / "voc", samples)
    recipe, extra = DETECTORS[arch]
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / recipe, ["model.num_classes=2", "model.class_names=[a,b]", *extra])
    torch.save({"model": build_model(cfg).state_dict(), "meta": {"class_names": ["a", "b"]}}, tmp_path / "w.pth")
    overrides = [f"data.root={root}", "data.test.format=voc", "data.test.split=train", "data.train.format=voc",
                 "data.train.split=train", f"data.test.proposals={tmp_path / 'props'}", "input.min_size=64",
                 "input.max_size=96", "proposals.top_k=30", "threads=1", "data.num_workers=0",
                 f"output_dir={tmp_path / 'run'}", *extra]
    args = argparse.Namespace(config=str(REPO / "configs" / recipe), overrides=["model.num_classes=2", *overrides],
                              weights=str(tmp_path / "w.pth"), onnx=None, out=str(tmp_path / "eval"), no_progress=True)
    assert EVAL.main(args) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["voc/mAP"] <= 1.0 and "bbox/AP" in metrics
