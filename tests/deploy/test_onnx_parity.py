"""ONNX export parity: ONNX Runtime against detkit eager float32 on the same weights, per architecture, at image
sizes other than the traced one (boxes within 0.01 px, scores within 1e-4, same labels in the same order)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from detkit.config import load_config  # noqa: E402
from detkit.deploy import OnnxDetector  # noqa: E402
from detkit.deploy.export import METADATA_KEY, detector_metadata, export_detector, sample_inputs  # noqa: E402
from detkit.modeling.build import build_model, prepare_for_test  # noqa: E402
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

SMALL = ["input.min_size=96", "input.max_size=160", "model.rpn.pre_nms_top_n_test=200",
         "model.rpn.post_nms_top_n_test=60", "model.roi_heads.representation_size=64"]
ARCHS = {
    "faster_fpn": ("configs/demo.yaml", SMALL),
    "faster_c4": ("configs/faster_rcnn_r50_c4.yaml", [*SMALL[:4], "model.backbone.name=resnet18"]),
    "faster_vgg16": ("configs/faster_rcnn_vgg16.yaml", SMALL[:4]),
    "fast_fpn": ("configs/fast_rcnn_r18_fpn.yaml", SMALL[:2] + SMALL[4:]),
}
SIZES = [(71, 133), (150, 90), (203, 260)]  # none is the traced size (sample_inputs)


def tiny_detector(name: str) -> tuple[torch.nn.Module, str]:
    """A random-weight detector of the arch, with the test-time options of its config; VGG16's fc6/fc7 narrowed
    (the full pair is 120M parameters) so that its graph, RoIPool included, exports in seconds."""
    config, overrides = ARCHS[name]
    cfg = load_config(REPO / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    if name == "faster_vgg16":
        head = model.roi_heads.box_head
        head.fc6, head.fc7, head.out_channels = torch.nn.Linear(512 * 7 * 7, 64), torch.nn.Linear(64, 64), 64
        model.roi_heads.box_predictor = FastRCNNPredictor(64, 4)
    return prepare_for_test(model, cfg).eval(), cfg.model.arch


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth blobs rather than noise, so that the random-weight RPN ranks proposals without near ties."""
    small = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(height, width),
                                            mode="bilinear", align_corners=False)[0]
    return image.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def random_proposals(rng: np.random.Generator, height: int, width: int, count: int = 40) -> np.ndarray:
    xy = rng.random((count, 2)) * [width * 0.7, height * 0.7]
    wh = rng.random((count, 2)) * [width * 0.3, height * 0.3] + 4
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1).astype(np.float32)


def eager(model: torch.nn.Module, image: np.ndarray, proposals: np.ndarray | None) -> dict[str, np.ndarray]:
    kwargs = {"proposals": [torch.from_numpy(proposals)]} if proposals is not None else {}
    with torch.no_grad():
        out = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255], **kwargs)[0]
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module", params=list(ARCHS))
def exported(request, tmp_path_factory):
    model, arch = tiny_detector(request.param)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    meta = detector_metadata(model, arch, ["a", "b", "c"], [7, 3, 11], {"mode": "fast", "max_side": 500,
                                                                        "min_size": 1.0, "top_k": 2000})
    export_detector(model, path, meta)
    return request.param, model, path


def test_onnx_runtime_matches_eager_at_every_size(exported):
    name, model, path = exported
    detector = OnnxDetector(path, threads=1)
    rng = np.random.default_rng(1)
    traced = tuple(sample_inputs(model)[0].shape[:2])
    for height, width in SIZES:
        assert (height, width) != traced
        image = random_image(rng, height, width)
        proposals = random_proposals(rng, height, width) if model.needs_proposals else None
        boxes, labels, scores = detector(image, proposals)
        want = eager(model, image, proposals)
        assert len(want["boxes"]) > 0, (name, height, width)
        assert labels.tolist() == want["labels"].tolist(), (name, height, width)
        np.testing.assert_allclose(boxes, want["boxes"], atol=0.01, rtol=0, err_msg=f"{name} {height}x{width}")
        np.testing.assert_allclose(scores, want["scores"], atol=1e-4, rtol=0, err_msg=f"{name} {height}x{width}")
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and boxes.shape == (len(scores), 4)


def test_metadata_names_classes_sizes_and_normalisation(exported):
    import onnx

    name, model, path = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    meta = json.loads({p.key: p.value for p in graph.metadata_props}[METADATA_KEY])
    assert meta["class_names"] == ["a", "b", "c"] and meta["category_ids"] == [7, 3, 11]
    assert meta["min_size"] == 96 and meta["max_size"] == 160
    assert meta["score_thresh"] == pytest.approx(0.05) and meta["pixel_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert ("proposals" in meta) == model.needs_proposals
    assert [i.name for i in graph.graph.input] == (["image", "proposals"] if model.needs_proposals else ["image"])


def test_no_detection_gives_empty_outputs(tmp_path):
    model, arch = tiny_detector("fast_fpn")
    model.roi_heads.score_thresh = 1.0  # softmax never exceeds it
    path = export_detector(model, tmp_path / "m.onnx", detector_metadata(model, arch, ["a", "b", "c"], [1, 2, 3]))
    detector = OnnxDetector(path)
    image = random_image(np.random.default_rng(0), 80, 120)
    for proposals in (random_proposals(np.random.default_rng(0), 80, 120), np.zeros((0, 4), np.float32)):
        boxes, labels, scores = detector(image, proposals)
        assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)


def test_fast_rcnn_export_computes_the_selective_search_proposals_of_its_metadata(exported):
    name, model, path = exported
    if not model.needs_proposals:
        pytest.skip("a detector with an RPN takes no proposals")
    from detkit.modeling.proposals.selective_search import propose_image

    detector = OnnxDetector(path)
    image = random_image(np.random.default_rng(2), 90, 120)
    boxes, labels, scores = detector(image)  # proposals from the stored settings (fast mode, max_side 500, ...)
    want = eager(model, image, propose_image(image, mode="fast", max_side=500, min_size=1.0, top_k=2000))
    assert labels.tolist() == want["labels"].tolist()
    np.testing.assert_allclose(boxes, want["boxes"], atol=0.01, rtol=0)
