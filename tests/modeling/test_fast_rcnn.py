"""Fast R-CNN: hierarchical sampling, proposals as input, config keys per arch, test-time SVD."""
import pytest
import torch

from detkit import build_model, load_config
from detkit.box_ops import box_iou
from detkit.errors import DetkitError
from detkit.modeling.roi_heads.box_head import TwoMLPHead, compress_box_head
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor
from detkit.modeling.roi_heads.roi_heads import RoIHeads
from tests.modeling.test_build import CONFIGS

GT = torch.tensor([[40.0, 40.0, 120.0, 120.0], [150.0, 60.0, 230.0, 180.0]])


def jittered_proposals(count: int, seed: int) -> torch.Tensor:
    """Boxes around the ground truth at every overlap from 0 to 1, plus far-away ones (IoU 0)."""
    g = torch.Generator().manual_seed(seed)
    centre = GT[torch.randint(len(GT), (count,), generator=g)]
    shift = (torch.rand(count, 4, generator=g) - 0.5) * 120 * torch.rand(count, 1, generator=g)
    boxes = centre + shift
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 4)
    far = torch.tensor([[250.0, 200.0, 280.0, 240.0]]).expand(50, 4)
    return torch.cat([boxes, far]).clamp(0, 300)


def fast_rcnn_heads() -> RoIHeads:
    pooler = RoIPooler(2, [8], sampling_ratio=1)
    return RoIHeads(pooler, TwoMLPHead(4 * 2 * 2, 16), FastRCNNPredictor(16, 3), fg_iou_thresh=0.5,
                    bg_iou_thresh=0.5, bg_iou_lo=0.1, batch_size_per_image=64, positive_fraction=0.25)


def test_hierarchical_sampling_counts_and_iou_ranges():
    torch.manual_seed(0)
    heads = fast_rcnn_heads().train()
    proposals = [jittered_proposals(1500, 0), jittered_proposals(1500, 1)]
    targets = [{"boxes": GT, "labels": torch.tensor([1, 2])}] * 2
    sampled, labels, _ = heads.sample_proposals(proposals, targets)
    assert [len(s) for s in sampled] == [64, 64]  # 128 RoIs from 2 images
    for boxes, image_labels in zip(sampled, labels.split([64, 64])):
        iou = box_iou(GT, boxes).max(dim=0).values
        fg = image_labels > 0
        assert 0 < fg.sum() <= 16  # 25% of 64
        assert (iou[fg] >= 0.5).all()
        assert ((iou[~fg] >= 0.1) & (iou[~fg] < 0.5)).all()  # no IoU-0 box is background
        assert torch.equal(image_labels[fg], torch.tensor([1, 2])[box_iou(GT, boxes[fg]).argmax(dim=0)])


def test_ground_truth_joins_the_proposals():
    torch.manual_seed(0)
    heads = fast_rcnn_heads().train()
    far = torch.tensor([[250.0, 200.0, 280.0, 240.0]]).expand(100, 4)  # no foreground among the proposals
    sampled, labels, targets = heads.sample_proposals([far], [{"boxes": GT, "labels": torch.tensor([1, 2])}])
    assert sorted(labels.tolist()) == [1, 2]  # only the ground-truth boxes themselves; IoU-0 boxes are not bg
    assert torch.allclose(targets, torch.zeros_like(targets))


def test_default_bg_iou_lo_keeps_faster_rcnn_background_from_zero():
    heads = RoIHeads(RoIPooler(2, [8]), TwoMLPHead(16, 16), FastRCNNPredictor(16, 3), batch_size_per_image=64)
    label, _ = heads.label_proposals(torch.tensor([[250.0, 200.0, 280.0, 240.0]]), GT, torch.tensor([1, 2]))
    assert label.tolist() == [0]


def fast_config(*overrides):
    return load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml", ["model.num_classes=2", "input.min_size=96",
                                                            "input.max_size=128", *overrides])


def test_fast_rcnn_trains_and_predicts_on_given_proposals():
    torch.manual_seed(0)
    model = build_model(fast_config())
    assert model.rpn is None and model.needs_proposals
    images = [torch.rand(3, 150, 200), torch.rand(3, 120, 100)]
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1]),
                "proposals": jittered_proposals(200, 0).clamp(0, 99)},
               {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([2]),
                "proposals": jittered_proposals(100, 1).clamp(0, 99)}]
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        detections = model.eval()(images, proposals=[t["proposals"] for t in targets])
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
    with pytest.raises(DetkitError, match="no proposal generator: pass .* proposals= argument"):
        model(images)


def test_faster_rcnn_refuses_proposals():
    model = build_model(load_config(CONFIGS / "faster_rcnn_r18_fpn.yaml", ["model.num_classes=2"])).eval()
    with pytest.raises(DetkitError, match="own proposal generator"):
        model([torch.rand(3, 64, 64)], proposals=[torch.zeros(1, 4)])


def test_inapplicable_key_is_an_error_naming_it_and_its_source():
    with pytest.raises(DetkitError, match=r"do not apply to model.arch=fast_rcnn: model.rpn.nms_thresh "
                                          r"\(in the command line\)"):
        build_model(fast_config("model.rpn.nms_thresh=0.5"))
    cfg = fast_config()
    cfg.model.rpn.anchor_sizes = [[8.0]]  # set in code: no source, still named
    with pytest.raises(DetkitError, match=r"model.rpn.anchor_sizes$"):
        build_model(cfg)
    with pytest.raises(DetkitError, match="unknown config key 'model.roi_heads.bg_iou_low'"):
        fast_config("model.roi_heads.bg_iou_low=0.1")


def test_box_head_is_chosen_by_its_key():
    cfg = load_config(CONFIGS / "faster_rcnn_vgg16.yaml", ["model.num_classes=2", "model.roi_heads.box_head=two_mlp",
                                                           "model.roi_heads.representation_size=32"])
    assert isinstance(build_model(cfg).roi_heads.box_head, TwoMLPHead)
    with pytest.raises(DetkitError, match="'model.roi_heads.box_head' is vgg_fc"):
        build_model(fast_config("model.roi_heads.box_head=vgg_fc"))


def test_truncated_svd_of_fc_layers():
    torch.manual_seed(0)
    head = TwoMLPHead(64, 48)
    fc6 = head.fc6.weight.detach().clone()
    x = torch.randn(10, 64)
    full = head(x)
    assert compress_box_head(head, 8) == ["fc6", "fc7"]  # 8 * (64 + 48) < 64 * 48 and 8 * 96 < 48 * 48
    assert sum(p.numel() for p in head.parameters()) == 8 * (64 + 48) + 48 + 8 * (48 + 48) + 48
    u, s, vh = torch.linalg.svd(fc6, full_matrices=False)
    torch.testing.assert_close(head.fc6[1].weight @ head.fc6[0].weight, (u[:, :8] * s[:8]) @ vh[:8],
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(head(x), full)
    same = TwoMLPHead(64, 48)
    assert compress_box_head(same, 25) == ["fc6"]  # 25 * 112 < 64 * 48, but 25 * 96 > 48 * 48: fc7 stays
    assert compress_box_head(TwoMLPHead(64, 48), 48) == []
