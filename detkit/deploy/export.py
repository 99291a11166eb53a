"""Export a trained detector to ONNX with its pre- and post-processing inside the graph.

The graph (``DetectionGraph``) takes one image and returns its detections:

- ``image``: (H, W, 3) uint8 RGB, any H and W (what ``np.asarray(PIL.Image.open(f).convert("RGB"))`` gives; OpenCV's
  ``cv2.imread`` gives BGR: convert with ``cv2.cvtColor(im, cv2.COLOR_BGR2RGB)``). Fast R-CNN also takes
  ``proposals``: (P, 4) float32 x1, y1, x2, y2 in input pixels (selective search, outside the graph).
- ``boxes`` (D, 4) float32 x1, y1, x2, y2 in input pixels, ``labels`` (D,) int64 in 1..K (0 is background: never
  returned), ``scores`` (D,) float32, sorted by decreasing score; D = 0 when nothing is detected.

Inside: to float in [0, 1], normalisation, the resize (shorter side to the test size, longer side capped), padding to
the size divisor, backbone, RPN, RoI pooling, box head, decoding, clipping, per-class NMS and the scale back to input
pixels, all computed from the traced image shape so that the graph is right at every image size. The exporter is
torch.onnx's TorchScript-based one (``dynamo=False``): the dynamo exporter cannot follow the data-dependent shapes of
detection (torchvision's own Faster R-CNN fails in it too). RoIAlign with ``aligned=True`` needs opset 16 (its
``coordinate_transformation_mode``); the default opset is 17, as torchvision's detection export tests use.

``quantize_box_head`` (``tools/export.py --int8``) writes a copy whose fully connected layers (MatMul / Gemm: fc6,
fc7 and the predictor, most of the box head's time) have int8 weights (ONNX Runtime's dynamic quantisation,
``onnxruntime.quantization.quantize_dynamic``, QInt8 weights, activations quantised per call); the convolutions stay
float32 (ONNX Runtime's ConvInteger ran slower than its float32 convolutions on the CPUs measured, docs/benchmarks.md).

Metadata (``metadata_props``, key ``detkit``): a JSON object with the format version, the arch, class names and
category ids, the score threshold, the resize sizes, the normalisation and (Fast R-CNN) the selective-search settings,
so that ``detkit.deploy.OnnxDetector`` needs nothing but the .onnx file.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkit.atomic import atomic_write
from detkit.errors import DetkitError

METADATA_KEY = "detkit"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (aligned=True) arrived in opset 16
EXPORTABLE_ARCHS = ("faster_rcnn", "fast_rcnn")
# R-CNN is not exported: its per-region CNN runs on R warped 227 x 227 crops (a 2000-image batch per picture) and
# its SVM / ridge regressors are fitted in stages outside the two-stage forward's softmax path.
WHY_NOT = {"rcnn": "R-CNN runs its whole CNN on every warped region (about 2000 per image), a graph no runtime makes "
                   "practical; export its Fast R-CNN or Faster R-CNN successor instead"}


class DetectionGraph(nn.Module):
    """One uint8 HWC RGB image (and, without an RPN, its proposals) -> boxes, labels, scores: the traced module."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor, proposals: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Detections of one image; shapes in the module docstring."""
        x = image.permute(2, 0, 1).float() / 255.0  # as detkit.data.image_io.to_tensor
        kwargs = {"proposals": [proposals]} if proposals is not None else {}
        det = self.detector([x], **kwargs)[0]
        return det["boxes"], det["labels"], det["scores"]


def check_exportable(arch: str, where: str = "model.arch") -> None:
    """Raises DetkitError (one line) when a detector of this arch cannot be exported."""
    if arch not in EXPORTABLE_ARCHS:
        why = WHY_NOT.get(arch, f"exportable archs are {', '.join(EXPORTABLE_ARCHS)}")
        raise DetkitError(f"config key {where}={arch} cannot be exported to ONNX: {why}")


def check_opset(opset: int) -> None:
    """Raises DetkitError for an opset below MIN_OPSET."""
    if opset < MIN_OPSET:
        raise DetkitError(f"--opset {opset}: the detector needs opset >= {MIN_OPSET} (RoiAlign with "
                          f"aligned=True / coordinate_transformation_mode)")


def detector_metadata(detector: nn.Module, arch: str, class_names: list[str], category_ids: list[int],
                      proposals: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata a deployment needs, from a built detector (its preprocessor and RoI heads) and its class list."""
    pre, heads = detector.preprocessor, detector.roi_heads
    meta = {"format": FORMAT_VERSION, "arch": arch, "class_names": list(class_names),
            "category_ids": [int(c) for c in category_ids], "score_thresh": float(heads.score_thresh),
            "nms_thresh": float(heads.nms_thresh), "detections_per_img": int(heads.detections_per_img),
            "min_size": int(pre.test_min_size), "max_size": int(pre.max_size),
            "size_divisible": int(pre.size_divisible),
            "pixel_mean": [float(v) for v in pre.pixel_mean.flatten()],
            "pixel_std": [float(v) for v in pre.pixel_std.flatten()],
            "input": "image: (H, W, 3) uint8 RGB",
            "outputs": "boxes (D, 4) float32 x1, y1, x2, y2 in input pixels; labels (D,) int64 in 1..K; scores (D,)"}
    if detector.needs_proposals:
        meta["proposals"] = dict(proposals or {})
        meta["input"] += "; proposals: (P, 4) float32 x1, y1, x2, y2 in input pixels"
    return meta


def sample_inputs(detector: nn.Module, height: int = 0, width: int = 0) -> tuple[Tensor, ...]:
    """A trace input: a random image (default: a non-square size below the test size, so the trace resizes and pads)
    and, without an RPN, proposals inside it."""
    generator = torch.Generator().manual_seed(0)
    side = detector.preprocessor.test_min_size
    height, width = height or max(32, side * 3 // 4 + 5), width or max(48, side + 11)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    if not detector.needs_proposals:
        return (image,)
    xy = torch.rand(64, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
    wh = torch.rand(64, 2, generator=generator) * torch.tensor([width * 0.4, height * 0.4]) + 4
    return image, torch.cat([xy, xy + wh], dim=1)


def export_detector(detector: nn.Module, out: str | Path, metadata: dict[str, Any], *,
                    opset: int = DEFAULT_OPSET) -> Path:
    """Traces `detector` (eval mode, float32) into an ONNX file at `out` with `metadata`; checks it with onnx.checker.

    Raises DetkitError for an opset below 16. Writes `out` through a temporary file, so a failed export leaves no
    partial file."""
    import onnx

    check_opset(opset)
    detector = detector.eval().float()
    graph = DetectionGraph(detector).eval()  # torch.onnx.export restores the mode it found
    inputs = sample_inputs(detector)
    names = ["image", "proposals"][:len(inputs)]
    axes = {"image": {0: "height", 1: "width"}, "proposals": {0: "num_proposals"},
            "boxes": {0: "num_detections"}, "labels": {0: "num_detections"}, "scores": {0: "num_detections"}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which cannot export detection graphs (see the
        # module docstring); tracer warnings are about Python values made constant, each handled or intended.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, buffer, dynamo=False, opset_version=opset, input_names=names,
                          output_names=["boxes", "labels", "scores"],
                          dynamic_axes={k: v for k, v in axes.items() if k not in ("image", "proposals") or k in names})
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = "detkit detector: " + metadata.get("input", "")
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(model)
    out = Path(out)
    serialized = model.SerializeToString()
    return atomic_write(out, lambda f: f.write(serialized))


def quantize_box_head(source: str | Path, out: str | Path) -> Path:
    """Writes `out`: the detkit export `source` with int8 weights in its fully connected layers (module docstring),
    its detkit metadata kept (with ``"quantized": "int8 MatMul/Gemm weights"`` added). Returns `out`.

    Raises DetkitError when `source` has no detkit metadata. The file appears whole or not at all (detkit.atomic).
    """
    import contextlib
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source_model = onnx.load(str(source))
    raw = {p.key: p.value for p in source_model.metadata_props}.get(METADATA_KEY)
    if raw is None:
        raise DetkitError(f"{source} is not a detkit export (no '{METADATA_KEY}' metadata): nothing to quantize")
    metadata = {**json.loads(raw), "quantized": "int8 MatMul/Gemm weights"}
    root = logging.getLogger()  # quantize_dynamic logs advice on pre-processing, which changes nothing here
    level = root.level
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            quantized = Path(scratch) / "int8.onnx"
            quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
            model = onnx.load(str(quantized))
        finally:
            root.setLevel(level)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(model)
    serialized = model.SerializeToString()
    return atomic_write(Path(out), lambda f: f.write(serialized))
