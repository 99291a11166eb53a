import pytest
import torch

from detkit.errors import DetkitError
from detkit.evaluation.recall import proposal_recall


def test_average_recall_on_hand_built_case():
    gt = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), torch.tensor([[0.0, 0, 10, 10]])]
    proposals = [
        # IoU with the first box 1.0, 0.8 (a second hit on the same box), then 340 / 400 = 0.85 with the second.
        torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 40, 37]]),
        # No overlap, then IoU 72 / 100 = 0.72.
        torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 7.2]]),
    ]
    ar = proposal_recall(proposals, gt, limits=(1, 2, 3))
    # Matched IoU per gt box, top 1: (1, 0, 0); top 2: (1, 0, .72); top 3: (1, .85, .72).
    # Thresholds .50:.95 passed (of 10): IoU 1 -> 10, .85 -> 8, .72 -> 5.
    assert ar["AR@1"] == pytest.approx(10 / 30)
    assert ar["AR@2"] == pytest.approx((10 + 5) / 30)
    assert ar["AR@3"] == pytest.approx((10 + 8 + 5) / 30)


def test_one_proposal_covers_one_ground_truth_box_only():
    gt = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])]
    ar = proposal_recall([torch.tensor([[0.0, 0, 10, 10]])], gt, limits=(100,), iou_thresholds=(0.5,))
    assert ar == {"AR@100": pytest.approx(0.5)}


def test_images_without_proposals_or_ground_truth():
    gt = [torch.zeros(0, 4), torch.tensor([[0.0, 0, 10, 10]])]
    proposals = [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)]
    assert proposal_recall(proposals, gt) == {"AR@100": 0.0, "AR@300": 0.0, "AR@1000": 0.0}


def test_bad_shapes_name_the_image():
    with pytest.raises(DetkitError, match=r"proposals\[1\]"):
        proposal_recall([torch.zeros(1, 4), torch.zeros(3)], [torch.zeros(0, 4)] * 2)
    with pytest.raises(DetkitError, match="2 images but gt_boxes for 1"):
        proposal_recall([torch.zeros(1, 4)] * 2, [torch.zeros(0, 4)])
