"""Every recipe in configs/ builds a detector that trains and predicts under torchvision's calling contract."""
from pathlib import Path

import pytest
import torch

from detkit import build_model, load_config
from detkit.errors import DetkitError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_and_predicts(recipe):
    torch.manual_seed(0)
    rcnn = recipe.startswith("rcnn")  # R-CNN: small warps keep the test fast
    rpn = ["model.rcnn.warp_size=64", "model.rcnn.context_pad=4"] if rcnn else [] if "fast_rcnn" in recipe else [
        "model.rpn.post_nms_top_n_train=64", "model.rpn.post_nms_top_n_test=32"]
    cfg = load_config(CONFIGS / recipe, ["model.num_classes=3", "input.min_size=96", "input.max_size=128",
                                         "model.roi_heads.batch_size_per_image=16", *rpn])
    model = build_model(cfg)
    images = [torch.rand(3, 90, 120), torch.rand(3, 100, 80)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    proposals = None
    if model.needs_proposals:  # Fast R-CNN: proposals come with the input
        proposals = [torch.tensor([[0.0, 0.0, 50.0, 50.0], [12.0, 8.0, 58.0, 72.0], [30.0, 40.0, 79.0, 89.0]])] * 2
        targets = [{**t, "proposals": p} for t, p in zip(targets, proposals)]
    losses = model.train()(images, targets)
    rpn = set() if model.needs_proposals else {"loss_rpn_cls", "loss_rpn_box_reg"}
    heads = {"loss_classifier"} if rcnn else {"loss_classifier", "loss_box_reg"}  # R-CNN fine-tunes a classifier
    assert set(losses) == rpn | heads
    sum(losses.values()).backward()
    with torch.no_grad():
        detections = model.eval()(images, proposals=proposals)
    for det, image in zip(detections, images):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["labels"]) == len(det["scores"])
        h, w = image.shape[-2:]
        assert (det["boxes"][:, 2] <= w + 1e-3).all() and (det["boxes"][:, 3] <= h + 1e-3).all()


def test_degenerate_target_box_is_a_clear_error():
    cfg = load_config(CONFIGS / "demo.yaml", ["model.num_classes=2"])
    model = build_model(cfg).train()
    with pytest.raises(DetkitError, match=r"target 0: box 0 \[5.0, 5.0, 5.0, 20.0\] has no area"):
        model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 20.0]]), "labels": torch.tensor([1])}])


def test_anchor_levels_must_match_the_backbone():
    cfg = load_config(CONFIGS / "faster_rcnn_r18_fpn.yaml", ["model.num_classes=2", "model.rpn.anchor_sizes=[[32]]"])
    with pytest.raises(DetkitError, match="model.rpn.anchor_sizes"):
        build_model(cfg)


def test_detector_needs_no_config():
    from detkit.modeling.detectors.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(num_classes=3).eval()  # torchvision's default: R50-FPN, background included in the count
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
