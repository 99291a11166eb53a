"""Image input that must not cost a run: decompression bombs refused from the header, cv2 and OS errors as one
line, loader workers that leave signals to the trainer, --check-data listing every problem, and infer output
paths that never hit an input."""
import signal
import struct
import zlib

import cv2
import numpy as np
import pytest

from detkit.data import image_io
from detkit.data.base import DetectionDataset, ImageRecord
from detkit.data.check import check_datasets
from detkit.data.image_io import collect_images, output_paths, read_image
from detkit.data.loader import _exit_quietly, _worker_init
from detkit.errors import DetkitError

from .conftest import write_image


def write_png_bomb(path, width=12000, height=8000):
    """A valid all-black 8-bit grayscale PNG of width x height, streamed row by row (a few hundred KB on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, body = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        body.append(packer.compress(row))
    body.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body))
                     + chunk(b"IEND", b""))


def test_a_96_megapixel_png_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    write_png_bomb(bomb)
    assert bomb.stat().st_size < 1_000_000
    decoded = []
    monkeypatch.setattr(image_io.cv2, "imdecode", lambda *a: decoded.append(a) or np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DetkitError, match=r"bomb.png is 12000x8000 = 96,000,000 pixels, over the cap of "
                                          r"89,478,485 \(data.max_image_pixels\); not decoded"):
        read_image(bomb)
    assert decoded == []
    image_io.set_max_image_pixels(None)  # no cap: the file goes to the decoder
    read_image(bomb)
    assert len(decoded) == 1
    image_io.set_max_image_pixels(100)
    write_image(tmp_path / "small.jpg", 8, 16)
    with pytest.raises(DetkitError, match="128 pixels, over the cap of 100"):
        read_image(tmp_path / "small.jpg")
    with pytest.raises(DetkitError, match="max_image_pixels"):
        image_io.set_max_image_pixels(0)


def test_decoder_and_file_system_errors_become_one_line_naming_the_image(tmp_path, monkeypatch):
    write_image(tmp_path / "ok.jpg", 4, 4)

    def out_of_memory(*args):
        raise cv2.error("OpenCV(4.10.0) /io/opencv/modules/core/src/alloc.cpp:73: error: (-4:Insufficient memory) "
                        "Failed to allocate 288000000 bytes in function 'OutOfMemoryError'\n")

    monkeypatch.setattr(image_io.cv2, "imdecode", out_of_memory)
    with pytest.raises(DetkitError, match=r"ok.jpg cannot be decoded: .*Insufficient memory") as info:
        read_image(tmp_path / "ok.jpg")
    assert "\n" not in str(info.value)

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(image_io.np, "fromfile", unreadable)
    with pytest.raises(DetkitError, match="ok.jpg cannot be read: Permission denied"):
        read_image(tmp_path / "ok.jpg")


def test_loader_workers_ignore_sigint_exit_quietly_on_sigterm_and_take_the_pixel_cap():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _worker_init(0, max_pixels=1234)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is _exit_quietly
        assert image_io.max_image_pixels() == 1234
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def record(path, boxes, labels, height=8, width=16, image_id=1):
    return ImageRecord(path=path, file_name=path.name, image_id=image_id, height=height, width=width,
                       boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int64),
                       ignore=np.zeros(len(labels), bool))


def test_check_data_lists_every_problem_of_both_splits_at_once(tmp_path):
    write_image(tmp_path / "good.jpg", 8, 16)
    write_image(tmp_path / "other_size.jpg", 10, 16)
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:20])
    train = DetectionDataset([
        record(tmp_path / "good.jpg", [[1, 1, 5, 5]], [1]),
        record(tmp_path / "truncated.jpg", [[1, 1, 5, 5]], [1], image_id=2),
        record(tmp_path / "other_size.jpg", [[1, 1, 5, 5], [0, 0, 40, 5]], [2, 3], image_id=3),
    ], ["a", "b"], {1: 1, 2: 2})
    test = DetectionDataset([record(tmp_path / "good.jpg", [[2, 2, 1, 6], [1, 1, float("nan"), 4]], [1, 1])],
                            ["a", "b"], {1: 1, 2: 2})
    problems = check_datasets({"train": train, "test": test}, workers=2, progress=False)
    assert len(problems) == 6, problems
    assert problems[0].startswith("[train] Image file") and "truncated.jpg is corrupt" in problems[0]
    assert "other_size.jpg: decoded size 10x16 (HxW) differs from the annotated 8x16" in problems[1]
    assert "box 1 [0.0, 0.0, 40.0, 5.0] lies outside the 16x8 (WxH) image" in problems[2]
    assert "box 1 [0.0, 0.0, 40.0, 5.0] has label 3, outside 1..2" in problems[3]
    assert problems[4].startswith("[test]") and "box 0 [2.0, 2.0, 1.0, 6.0] has no area" in problems[4]
    assert "box 1" in problems[5] and "is not finite" in problems[5]
    assert check_datasets({"train": DetectionDataset(train.records[:1], ["a"], {1: 1})}, progress=False) == []


def test_infer_outputs_keep_relative_paths_and_never_hit_an_input(tmp_path):
    for name in ("a/x.jpg", "a/x.png", "b/x.jpg", "a/y.bmp"):
        write_image(tmp_path / name, 4, 4)
    images = collect_images([str(tmp_path / "a"), str(tmp_path / "b" / "x.jpg"), str(tmp_path / "a" / "x.jpg")])
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a/x.jpg", "a/x.png", "a/y.bmp", "b/x.jpg"]
    out = tmp_path / "out"
    assert [p.relative_to(out).as_posix() for p in output_paths(images, out)] == [
        "a/x.jpg", "a/x.png", "a/y.bmp.png", "b/x.jpg"]
    only_a = collect_images([str(tmp_path / "a")])
    assert [p.relative_to(out).as_posix() for p in output_paths(only_a, out)] == ["x.jpg", "x.png", "y.bmp.png"]
    with pytest.raises(DetkitError, match=r"--out .*a would write over the input image .*x.jpg"):
        output_paths(only_a, tmp_path / "a")
    with pytest.raises(DetkitError, match="would write over the input image"):
        output_paths(images, tmp_path)


class SignalsItsWorker:
    """Three 8x8 images; loading image 2 sends SIGTERM to the loading process (a loader worker)."""

    def __len__(self):
        return 3

    def get(self, index, seed=0):
        import os

        import torch

        if index == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}

    def aspect_ratios(self):
        return [1.0] * 3


def test_a_worker_stopped_from_outside_is_one_detkit_error_not_a_traceback():
    from detkit.data.loader import build_train_loader

    batches = build_train_loader(SignalsItsWorker(), 1, num_workers=1, seed=0, aspect_ratio_grouping=False)
    with pytest.raises(DetkitError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly: a signal"):
        for _ in range(6):
            next(batches)
