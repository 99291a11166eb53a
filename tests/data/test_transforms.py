import numpy as np
import pytest

from detkit.data.transforms import build_transforms, resized_shape
from detkit.errors import DetkitError


def _sample(height=30, width=40):
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.float32([[2, 3, 12, 20], [25, 0, 40, 30]])
    return image, boxes, np.int64([1, 2]), np.array([False, True])


def test_horizontal_flip_maps_boxes_exactly():
    image, boxes, labels, ignore = _sample()
    flip = build_transforms(True, 30, 1000, flip_prob=1.0)
    out_image, out_boxes, out_labels, out_ignore = flip(image, boxes, labels, ignore, seed=0)
    assert np.array_equal(out_image, image[:, ::-1])
    assert np.array_equal(out_boxes, np.float32([[40 - 12, 3, 40 - 2, 20], [0, 0, 15, 30]]))
    assert out_labels.tolist() == [1, 2] and out_ignore.tolist() == [False, True]


@pytest.mark.parametrize("min_size,max_size,expected", [(60, 1000, (60, 80)), (60, 70, (52, 70)), (15, 100, (15, 20))])
def test_resize_follows_min_size_capped_by_max_size(min_size, max_size, expected):
    image, boxes, labels, ignore = _sample()
    assert resized_shape(30, 40, min_size, max_size) == expected
    out_image, out_boxes, _, _ = build_transforms(False, min_size, max_size)(image, boxes, labels, ignore, seed=0)
    assert out_image.shape[:2] == expected
    scale = np.float32([expected[1] / 40, expected[0] / 30] * 2)
    assert np.allclose(out_boxes, boxes * scale, atol=1e-4)


def test_same_seed_gives_same_output_and_seeds_vary_it():
    sample = _sample()
    train = build_transforms(True, [20, 30, 40], 100, flip_prob=0.5, color_jitter=0.4)
    outputs = [train(*sample, seed=seed) for seed in range(8)]
    again = train(*sample, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(outputs[5], again))
    assert len({o[0].shape for o in outputs}) > 1
    assert len({o[1].tobytes() for o in outputs}) > 2


def test_test_transforms_use_last_min_size_without_randomness():
    sample = _sample()
    test = build_transforms(False, [20, 30, 45], 1000, flip_prob=1.0, color_jitter=0.5)
    first, second = test(*sample, seed=1), test(*sample, seed=2)
    assert first[0].shape[:2] == (45, 60)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_boxes_leaving_the_image_are_clipped_or_dropped():
    image, _, _, _ = _sample()
    boxes = np.float32([[-5, -5, 10, 10], [50, 5, 60, 10]])
    out = build_transforms(False, 30, 1000)(image, boxes, np.int64([1, 2]), np.array([False, False]), seed=0)
    assert out[1].tolist() == [[0.0, 0.0, 10.0, 10.0]] and out[2].tolist() == [1]


def test_bad_sizes_raise():
    with pytest.raises(DetkitError, match="min_size"):
        build_transforms(True, [], 100)
    with pytest.raises(DetkitError, match="flip_prob"):
        build_transforms(True, 10, 100, flip_prob=2.0)
