import torch

from detkit.modeling.roi_heads.box_head import TwoMLPHead
from detkit.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detkit.modeling.roi_heads.roi_heads import RoIHeads
from detkit.modeling.roi_heads.poolers import LevelMapper, RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor


def test_level_mapper_follows_fpn_equation():
    mapper = LevelMapper(2, 5)
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10], [0, 0, 2000, 2000.]])
    # 224 -> P4 (index 2), half of it -> P3, double -> P5, tiny -> P2, huge -> clamped to P5.
    assert mapper(boxes).tolist() == [2, 1, 3, 0, 3]


def test_multi_level_pooler_uses_each_boxs_level():
    pooler = RoIPooler(2, [4, 8, 16, 32], sampling_ratio=1)
    # Each level holds a constant equal to its index, so the pooled value says which level was read.
    features = [torch.full((1, 1, 64 // s, 64 // s), float(i)) for i, s in enumerate([4, 8, 16, 32])]
    boxes = [torch.tensor([[0, 0, 30, 30.], [0, 0, 60, 60.]])]
    out = pooler(features, boxes)
    assert out.shape == (2, 1, 2, 2)
    assert out[0].unique().tolist() == [0.0]  # sqrt(area) 30 -> P2
    assert out[1].unique().tolist() == [0.0]  # 60 -> still P2 (floor(4 + log2(60/224)) = 2)
    big = pooler(features, [torch.tensor([[0, 0, 64, 64.]] * 1)])
    assert big.shape == (1, 1, 2, 2)


def make_heads() -> RoIHeads:
    pooler = RoIPooler(2, [8], sampling_ratio=1)
    return RoIHeads(pooler, TwoMLPHead(4 * 2 * 2, 16), FastRCNNPredictor(16, 3), batch_size_per_image=16)


def test_empty_target_image_gives_zero_box_loss():
    torch.manual_seed(0)
    heads = make_heads().train()
    features = [torch.randn(1, 4, 8, 8)]
    proposals = [torch.tensor([[0, 0, 20, 20.], [10, 10, 40, 40.], [5, 5, 60, 50.]])]
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _, losses = heads(features, proposals, [(64, 64)], [target])
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_classifier"].item() > 0


def test_ground_truth_is_added_and_matched_as_foreground():
    torch.manual_seed(0)
    heads = make_heads().train()
    gt = {"boxes": torch.tensor([[8, 8, 40, 40.]]), "labels": torch.tensor([2])}
    sampled, labels, targets = heads.sample_proposals([torch.tensor([[0, 0, 10, 10.]])], [gt])
    assert labels.tolist().count(2) == 1 and labels.tolist().count(0) == 1
    torch.testing.assert_close(targets[labels == 2], torch.zeros(1, 4))


def test_postprocess_keeps_top_detections_in_image_bounds():
    heads = make_heads().eval()
    heads.detections_per_img = 2
    proposals = [torch.tensor([[0, 0, 20, 20.], [30, 30, 60, 60.], [0, 0, 70, 70.]])]
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 4.0, 0.0]])
    deltas = torch.zeros(3, 12)
    dets = fast_rcnn_inference(logits, deltas, proposals, [(64, 64)], heads.box_coder,
                               score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh,
                               detections_per_img=heads.detections_per_img, min_box_size=heads.min_box_size)
    assert len(dets[0]["boxes"]) == 2
    assert dets[0]["scores"][0] >= dets[0]["scores"][1]
    assert (dets[0]["boxes"] <= 64).all()
