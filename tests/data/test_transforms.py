import numpy as np
import pytest
import torch

from detkit.data.transforms import build_transforms
from detkit.data.voc import VOCDataset
from detkit.errors import DetkitError
from detkit.modeling.preprocess import ImagePreprocessor


def _sample(height=30, width=40):
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.float32([[2, 3, 12, 20], [25, 0, 40, 30]])
    return image, boxes, np.int64([1, 2]), np.array([False, True])


def test_horizontal_flip_maps_boxes_exactly():
    image, boxes, labels, ignore = _sample()
    flip = build_transforms(True, flip_prob=1.0)
    out_image, out_boxes, out_labels, out_ignore = flip(image, boxes, labels, ignore, seed=0)
    assert np.array_equal(out_image, image[:, ::-1])
    assert np.array_equal(out_boxes, np.float32([[40 - 12, 3, 40 - 2, 20], [0, 0, 15, 30]]))
    assert out_labels.tolist() == [1, 2] and out_ignore.tolist() == [False, True]


@pytest.mark.parametrize("seed", range(6))
def test_proposals_flip_with_the_boxes(seed):
    image, boxes, labels, ignore = _sample()
    proposals = np.float32([[0, 0, 10, 30], [5, 5, 39, 25]])
    out = build_transforms(True, flip_prob=0.5)(image, boxes, labels, ignore, seed=seed, proposals=proposals)
    flipped = not np.array_equal(out[0], image)
    expected = np.float32([[30, 0, 40, 30], [1, 5, 35, 25]]) if flipped else proposals
    assert np.array_equal(out[4], expected)
    assert np.array_equal(out[1][0], np.float32([28, 3, 38, 20]) if flipped else boxes[0])


def test_transforms_do_not_resize():
    image, boxes, labels, ignore = _sample()
    out = build_transforms(True, flip_prob=0.5, color_jitter=0.4)(image, boxes, labels, ignore, seed=3)
    assert out[0].shape == image.shape


def test_same_seed_gives_same_output_and_seeds_vary_it():
    sample = _sample()
    train = build_transforms(True, flip_prob=0.5, color_jitter=0.4)
    outputs = [train(*sample, seed=seed) for seed in range(8)]
    again = train(*sample, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(outputs[5], again))
    assert len({o[1].tobytes() for o in outputs}) == 2  # flipped or not
    assert len({o[0].tobytes() for o in outputs}) > 2  # jitter


def test_test_transforms_have_no_randomness():
    sample = _sample()
    test = build_transforms(False, flip_prob=1.0, color_jitter=0.5)
    first, second = test(*sample, seed=1), test(*sample, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert np.array_equal(first[0], sample[0])


def test_boxes_leaving_the_image_are_clipped_or_dropped():
    image, _, _, _ = _sample()
    boxes = np.float32([[-5, -5, 10, 10], [50, 5, 60, 10]])
    out = build_transforms(False)(image, boxes, np.int64([1, 2]), np.array([False, False]), seed=0)
    assert out[1].tolist() == [[0.0, 0.0, 10.0, 10.0]] and out[2].tolist() == [1]


def test_bad_values_raise():
    with pytest.raises(DetkitError, match="flip_prob"):
        build_transforms(True, flip_prob=2.0)
    with pytest.raises(DetkitError, match="color_jitter"):
        build_transforms(True, color_jitter=-1.0)


class _Store:
    """Stand-in for detkit.data.proposals.ProposalStore: proposals by image id."""

    def __init__(self, boxes):
        self.boxes = boxes

    def load(self, image_id, image_size):
        return self.boxes[image_id]


def test_dataset_proposals_flip_and_resize_with_the_boxes(tiny_voc):
    ds = VOCDataset(tiny_voc, "train", transforms=build_transforms(True, flip_prob=1.0))
    ds.proposals = _Store({ds.image_ids[0]: np.float32([[0, 0, 8, 12], [4, 2, 30, 20]]),
                           ds.image_ids[1]: np.float32([[1, 1, 5, 5]])})
    image, target = ds[0]  # a.jpg: 24x32 (H x W), flipped
    assert target["proposals"].dtype == torch.float32
    torch.testing.assert_close(target["proposals"], torch.tensor([[24.0, 0, 32, 12], [2, 2, 28, 20]]))
    pre = ImagePreprocessor(48, 1000, pixel_mean=(0.0,) * 3, pixel_std=(1.0,) * 3).train()
    batch, (resized,), _ = pre([image], [target])
    assert batch.image_sizes == [(48, 64)]  # scale 2 for image, boxes and proposals alike
    torch.testing.assert_close(resized["proposals"], target["proposals"] * 2)
    torch.testing.assert_close(resized["boxes"], target["boxes"] * 2)
    assert "proposals" not in VOCDataset(tiny_voc, "train")[0][1]
