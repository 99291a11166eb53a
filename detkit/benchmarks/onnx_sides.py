"""The ONNX Runtime sides of `tools/benchmark.py infer --onnx`: detkit's export (tools/export.py's graph) and
torchvision's twin exported by the same exporter (torch.onnx, TorchScript-based, opset 17), both run by ONNX Runtime
on the CPU with the benchmark's thread count; and random weights with sharpened class logits for speed-only runs.

Each side is a callable from a list of CHW float images in [0, 1] to their detections (boxes x1, y1, x2, y2 in input
pixels, labels, scores), as the eager sides; uint8 HWC pixels for detkit's graph are made in `prepare`, before timing.
"""
from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detkit.deploy import OnnxDetector
from detkit.deploy.export import detector_metadata, export_detector, quantize_box_head
from detkit.deploy.predict import to_pixels


class DetkitOnnxSide:
    """detkit's exported graph in an ONNX Runtime session."""

    def __init__(self, model: nn.Module, arch: str, class_names: list[str], category_ids: list[int], folder: Path,
                 threads: int, quantize: bool = False) -> None:
        path = folder / "detkit.onnx"
        export_detector(model, path, detector_metadata(model, arch, class_names, category_ids))
        if quantize:
            path = quantize_box_head(path, folder / "detkit_int8.onnx")
        self.detector = OnnxDetector(path, threads=threads)
        self.pixels: dict[int, np.ndarray] = {}

    def prepare(self, images: list[torch.Tensor]) -> None:
        """uint8 HWC pixels of every image, made before timing."""
        self.pixels = {id(im): to_pixels(im.cpu()) for im in images}

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for im in images:
            boxes, labels, scores = self.detector(self.pixels[id(im)])
            out.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)})
        return out


class TorchvisionOnnxSide:
    """torchvision's Faster R-CNN (the twin) exported with torch.onnx (dynamo=False, opset 17), in ONNX Runtime."""

    def __init__(self, twin: nn.Module, sample: torch.Tensor, threads: int) -> None:
        import onnxruntime as ort

        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(twin.eval(), ([sample.cpu()],), buffer, dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["boxes", "labels", "scores"],
                              dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"},
                                            "scores": {0: "n"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.arrays: dict[int, np.ndarray] = {}

    def prepare(self, images: list[torch.Tensor]) -> None:
        """float32 CHW arrays of every image, made before timing."""
        self.arrays = {id(im): im.cpu().numpy() for im in images}

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for im in images:
            boxes, labels, scores = self.session.run(["boxes", "labels", "scores"], {"image": self.arrays[id(im)]})
            out.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)})
        return out


def random_weights(cfg, sharpen: float, folder: Path) -> Path:
    """Random-initialised weights of the config's detector for its test split's classes, saved as training saves
    model_final.pth, with the class logits multiplied by `sharpen` so that scores are peaked as a trained model's
    (a few classes per region over the score threshold) rather than uniform."""
    from detkit.edge import build_split
    from detkit.modeling.build import build_detector

    dataset = build_split(cfg, "test")
    names = list(dataset.classes)
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg, num_classes=len(names))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(sharpen)
        model.roi_heads.box_predictor.cls_score.bias.mul_(sharpen)
    path = folder / "random_model_final.pth"
    ids = [dataset.label_to_category_id[k] for k in range(1, len(names) + 1)]
    torch.save({"model": model.state_dict(), "meta": {"class_names": names, "category_ids": ids}}, path)
    return path


def scratch_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for the exported graphs."""
    return tempfile.TemporaryDirectory(prefix="detkit_bench_onnx_")
