import torch

from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.modeling.proposals.rpn import RegionProposalNetwork, RPNHead


def make_rpn(**kwargs) -> RegionProposalNetwork:
    gen = AnchorGenerator([[16, 32]], [0.5, 1.0, 2.0])
    return RegionProposalNetwork(gen, RPNHead(8, 6), **kwargs)


def test_targets_follow_thresholds_and_sampler_counts():
    torch.manual_seed(0)
    rpn = make_rpn(batch_size_per_image=32, positive_fraction=0.5)
    anchors = rpn.anchor_generator((64, 64), [(8, 8)])[0]
    gt = {"boxes": anchors[[100, 200]].clone(), "labels": torch.tensor([1, 1])}
    labels, targets = rpn.assign_targets(anchors, [gt])
    # The two anchors equal to ground truth are positive with zero regression target.
    assert labels[0, 100] == 1 and labels[0, 200] == 1
    torch.testing.assert_close(targets[0, [100, 200]], torch.zeros(2, 4))
    assert set(labels.unique().tolist()) <= {-1.0, 0.0, 1.0}
    pos, neg = rpn.sampler(list(labels))
    assert pos[0].sum() <= 16 and pos[0].sum() + neg[0].sum() == 32


def test_empty_image_gives_all_background_and_zero_box_loss():
    torch.manual_seed(0)
    rpn = make_rpn(batch_size_per_image=32).train()
    features = [torch.randn(1, 8, 8, 8)]
    _, losses = rpn((64, 64), [(64, 64)], features, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}])
    assert losses["loss_rpn_box_reg"].item() == 0.0 and losses["loss_rpn_cls"].item() > 0


def test_proposals_are_clipped_sorted_and_capped_per_image():
    torch.manual_seed(0)
    rpn = make_rpn(post_nms_top_n={"training": 20, "testing": 10}).eval()
    features = [torch.randn(2, 8, 8, 8)]
    proposals, losses = rpn((64, 64), [(64, 60), (50, 64)], features)
    assert losses == {} and len(proposals) == 2
    for boxes, (h, w) in zip(proposals, [(64, 60), (50, 64)]):
        assert 0 < len(boxes) <= 10
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
