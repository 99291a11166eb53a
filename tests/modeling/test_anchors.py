import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from detkit.modeling.proposals.anchors import AnchorGenerator


def test_nine_anchors_at_one_level_with_paper_areas_and_ratios():
    gen = AnchorGenerator([[128, 256, 512]], [0.5, 1.0, 2.0])
    assert gen.num_anchors_per_location() == [9]
    cell = gen.cell_anchors[0]
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    torch.testing.assert_close(h / w, torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3), atol=0.03, rtol=0)  # rounded to pixels
    torch.testing.assert_close((w * h).sqrt(), torch.tensor([128.0, 256, 512] * 3), atol=1.0, rtol=0)
    anchors = gen((64, 96), [(4, 6)])[0]
    assert anchors.shape == (4 * 6 * 9, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # Row-major cells with stride 16, all 9 anchors of a cell share its centre.
    torch.testing.assert_close(centres[9 * 7], torch.tensor([16.0, 16.0]))


def test_fpn_layout_equals_torchvision():
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ours = AnchorGenerator(sizes, (0.5, 1.0, 2.0))
    theirs = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    feature_sizes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    features = [torch.zeros(1, 8, h, w) for h, w in feature_sizes]
    expected = theirs(TVImageList(torch.zeros(1, 3, 128, 160), [(128, 160)]), features)[0]
    torch.testing.assert_close(torch.cat(ours((128, 160), feature_sizes)), expected)
