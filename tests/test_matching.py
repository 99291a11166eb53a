import torch
from torchvision.models.detection import _utils as tv_utils

from detkit.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher


def test_hand_built_matrix():
    quality = torch.tensor([[0.9, 0.5, 0.1, 0.35],
                            [0.2, 0.6, 0.2, 0.30]])
    matches = Matcher(0.7, 0.3)(quality)
    assert matches.tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS]
    # Ground truth 1's best prediction (column 1, IoU 0.6) is kept as a low-quality match.
    low = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert low.tolist() == [0, 1, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS]


def test_no_ground_truth_is_all_background():
    assert Matcher(0.5, 0.5)(torch.zeros(0, 5)).tolist() == [BELOW_LOW_THRESHOLD] * 5


def test_matches_torchvision_matcher_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for allow in (False, True):
        for _ in range(5):
            quality = torch.rand(7, 300, generator=g)
            ours = Matcher(0.7, 0.3, allow)(quality)
            theirs = tv_utils.Matcher(0.7, 0.3, allow)(quality)
            assert torch.equal(ours, theirs)


def test_sampler_respects_fraction_and_budget():
    labels = torch.tensor([1] * 100 + [0] * 1000 + [-1] * 50)
    torch.manual_seed(0)
    pos, neg = BalancedSampler(256, 0.25)([labels])
    assert pos[0].sum() == 64 and neg[0].sum() == 192
    assert (labels[pos[0]] == 1).all() and (labels[neg[0]] == 0).all()
    # Few positives: the rest of the budget goes to negatives, like torchvision's sampler.
    few = torch.tensor([1] * 3 + [0] * 1000)
    torch.manual_seed(0)
    pos, neg = BalancedSampler(256, 0.25)([few])
    torch.manual_seed(0)
    tv_pos, tv_neg = tv_utils.BalancedPositiveNegativeSampler(256, 0.25)([few])
    assert pos[0].sum() == tv_pos[0].sum() == 3 and neg[0].sum() == tv_neg[0].sum() == 253


def test_low_quality_rule_never_matches_at_iou_zero():
    # Ground truth 1 overlaps nothing: with the rule, torchvision would match it to every prediction (all tie at 0).
    quality = torch.tensor([[0.8, 0.4, 0.0],
                            [0.0, 0.0, 0.0]])
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert matches.tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]
