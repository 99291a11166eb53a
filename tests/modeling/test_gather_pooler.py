"""test.gather_roi_align swaps in GatherRoIPooler at test time: same pooled features and detections on the CPU."""
from pathlib import Path

import torch

from detkit import build_model, load_config
from detkit.modeling.build import prepare_for_test
from detkit.modeling.roi_heads.gather_pooler import GatherRoIPooler, use_gather_pooler
from detkit.modeling.roi_heads.poolers import RoIPooler

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["model.num_classes=3", "input.min_size=64", "input.max_size=96", "model.rpn.post_nms_top_n_test=32"]


def test_gather_pooler_gives_the_pooled_features_and_detections_of_roi_pooler():
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / "faster_rcnn_r18_fpn.yaml", SMALL)).eval()
    features = [torch.randn(1, 8, 16 // 2 ** k, 24 // 2 ** k) for k in range(4)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 30.0], [5.0, 3.0, 90.0, 60.0], [10.0, 10.0, 11.0, 12.0]])]
    images = [torch.rand(3, 64, 90)]
    with torch.no_grad():
        pooled, detections = model.roi_heads.pooler(features, boxes), model(images)
        assert use_gather_pooler(model) and type(model.roi_heads.pooler) is GatherRoIPooler
        gathered, gathered_detections = model.roi_heads.pooler(features, boxes), model(images)
    torch.testing.assert_close(gathered, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gathered_detections[0]["boxes"], detections[0]["boxes"], atol=1e-3, rtol=0)
    with torch.enable_grad():  # training-time calls keep RoIPooler's (differentiable) path
        features[0].requires_grad_(True)
        assert model.roi_heads.pooler(features, boxes).requires_grad


def test_only_roi_align_with_a_fixed_grid_is_swapped_and_only_when_asked():
    for overrides, swapped in (([], True), (["test.gather_roi_align=false"], False),
                               (["model.roi_heads.pooler=roi_pool"], False),
                               (["model.roi_heads.sampling_ratio=0"], False)):
        cfg = load_config(CONFIGS / "faster_rcnn_r18_fpn.yaml", [*SMALL, *overrides])
        model = prepare_for_test(build_model(cfg), cfg)
        assert (type(model.roi_heads.pooler) is GatherRoIPooler) == swapped
        assert isinstance(model.roi_heads.pooler, RoIPooler)
