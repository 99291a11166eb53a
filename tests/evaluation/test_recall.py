import pytest
import torch

from detkit.box_ops import box_iou
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


def reference_recall(proposals, gt_boxes, limits, thresholds):
    """The plain algorithm: per limit and image, IoU of the top-n proposals, then greedy best-pair matching."""
    results = {}
    for limit in limits:
        overlaps = []
        for p, g in zip(proposals, gt_boxes):
            covered = torch.zeros(len(g), dtype=torch.float64)
            iou = box_iou(p.double()[:limit], g.double()) if len(p) and len(g) else torch.zeros(0, 0)
            for _ in range(min(iou.shape)):
                best_per_gt, proposal_index = iou.max(dim=0)
                best_iou, gt_index = best_per_gt.max(dim=0)
                covered[gt_index] = best_iou
                iou[proposal_index[gt_index], :] = -1
                iou[:, gt_index] = -1
            overlaps.append(covered)
        overlaps = torch.cat(overlaps)
        passed = overlaps[None, :] >= torch.tensor(thresholds, dtype=torch.float64)[:, None]
        results[f"AR@{limit}"] = float(passed.double().mean(dim=1).mean()) if overlaps.numel() else 0.0
    return results


def test_average_recall_equals_the_plain_algorithm_exactly():
    gen = torch.Generator().manual_seed(5)

    def boxes(n):  # a coarse integer grid: IoU ties and IoU exactly at the thresholds
        corners = torch.randint(0, 10, (n, 2), generator=gen)
        return torch.cat([corners, corners + torch.randint(1, 8, (n, 2), generator=gen)], dim=1).float()

    # Some images have no ground truth, some no proposals, some fewer proposals than the smallest limit.
    gt = [boxes(int(torch.randint(0, 6, (1,), generator=gen))) for _ in range(30)]
    proposals = []
    for g in gt:
        near = (g + torch.randint(-1, 2, g.shape, generator=gen)).repeat(2, 1)
        p = torch.cat([near, boxes(int(torch.randint(0, 40, (1,), generator=gen)))])
        proposals.append(p[torch.randperm(len(p), generator=gen)])
    limits, thresholds = (1, 5, 20, 0, 50), (0.5, 0.6, 0.75, 0.9)
    ar = proposal_recall(proposals, gt, limits=limits, iou_thresholds=thresholds)
    expected = reference_recall(proposals, gt, limits, thresholds)
    assert 0 < expected["AR@1"] < expected["AR@5"] < expected["AR@50"] < 0.95
    assert ar == expected


def test_no_ground_truth_anywhere_gives_zero_recall():
    proposals = [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)]
    assert proposal_recall(proposals, [torch.zeros(0, 4)] * 2, limits=(1, 10)) == {"AR@1": 0.0, "AR@10": 0.0}


def test_negative_limit_is_an_error():
    with pytest.raises(DetkitError, match="non-negative, got -1"):
        proposal_recall([torch.zeros(1, 4)], [torch.zeros(1, 4)], limits=(10, -1))
