"""Run an exported detkit detector with ONNX Runtime: numpy and OpenCV only, no PyTorch.

    detector = OnnxDetector("model.onnx", threads=2)
    boxes, labels, scores = detector(rgb_uint8_image)     # or detector("photo.jpg")

``image``: an (H, W, 3) uint8 RGB array (PIL: ``np.asarray(img.convert("RGB"))``; OpenCV: ``cv2.cvtColor(bgr,
cv2.COLOR_BGR2RGB)``) or an image file path. Returns ``Detections``: boxes (D, 4) float32 x1, y1, x2, y2 in input
pixels, labels (D,) int64 in 1..K (``class_names[label - 1]``, ``category_ids[label - 1]`` are the trained names and
dataset ids), scores (D,) float32, by decreasing score. A Fast R-CNN export computes its selective-search proposals
with the settings stored at export (or takes ``proposals=`` (P, 4) float32 in input pixels).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from detkit.errors import DetkitError

METADATA_KEY = "detkit"  # the key detkit.deploy.export writes (that module imports torch, so it is not imported here)


class Detections(NamedTuple):
    """One image's detections (shapes in the module docstring)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def read_metadata(path: str | Path, session: Any) -> dict[str, Any]:
    """The detkit metadata of a loaded session; DetkitError naming the file when it is not a detkit export."""
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise DetkitError(f"{path} is an ONNX model but not a detkit export (no '{METADATA_KEY}' metadata): export "
                          "one with tools/export.py")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DetkitError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({error})") from None
    missing = [k for k in ("arch", "class_names", "category_ids", "score_thresh") if k not in meta]
    if missing:
        raise DetkitError(f"{path}: its '{METADATA_KEY}' metadata lacks {', '.join(missing)}")
    return meta


class OnnxDetector:
    """An exported detector in an ONNX Runtime session; call it on an image (see the module docstring).

    threads: intra-op threads (None: ONNX Runtime's default, one per core); providers: ONNX Runtime execution
    providers in order of preference (default CPUExecutionProvider). Raises DetkitError when the file is missing,
    is not an ONNX model (e.g. truncated) or is not a detkit export."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DetkitError(f"ONNX model {self.path} does not exist")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise DetkitError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DetkitError(f"{self.path} cannot be loaded by ONNX Runtime (not an ONNX model, or truncated): "
                              f"{reason}") from None
        self.metadata = read_metadata(self.path, self.session)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.needs_proposals = "proposals" in self.input_names

    @property
    def class_names(self) -> list[str]:
        """Names of labels 1..K."""
        return list(self.metadata["class_names"])

    @property
    def category_ids(self) -> list[int]:
        """Dataset category id of labels 1..K."""
        return list(self.metadata["category_ids"])

    def __call__(self, image: np.ndarray | str | Path, proposals: np.ndarray | None = None) -> Detections:
        """Detections of one image; DetkitError for an image that is not (H, W, 3) uint8 or unreadable."""
        if isinstance(image, (str, Path)):
            image = read_rgb(image)
        image = check_image(image)
        feeds = {"image": image}
        if self.needs_proposals:
            if proposals is None:
                proposals = self.propose(image)
            proposals = np.asarray(proposals, dtype=np.float32)
            if proposals.ndim != 2 or proposals.shape[1] != 4:
                raise DetkitError(f"proposals must be a (P, 4) array, got shape {proposals.shape}")
            feeds["proposals"] = proposals
        elif proposals is not None:
            raise DetkitError(f"{self.path} has its own proposal generator (RPN): do not pass proposals")
        boxes, labels, scores = self.session.run(["boxes", "labels", "scores"], feeds)
        return Detections(boxes, labels, scores)

    def propose(self, image: np.ndarray) -> np.ndarray:
        """Selective-search proposals (P, 4) float32 with the settings stored at export (Fast R-CNN)."""
        from detkit.modeling.proposals.selective_search import propose_image

        settings = self.metadata.get("proposals")
        if not settings:
            raise DetkitError(f"{self.path} was trained on RPN proposals, which it cannot compute: pass proposals=")
        return propose_image(image, **settings)


def check_image(image: Any) -> np.ndarray:
    """The image as a C-contiguous (H, W, 3) uint8 array; DetkitError when it is not one."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise DetkitError(f"the image must be an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file decoded by OpenCV as (H, W, 3) uint8 RGB; DetkitError when it cannot be read."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise DetkitError(f"Image file {path} does not exist.")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DetkitError(f"Image file {path} is corrupt or not an image cv2 can decode.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
