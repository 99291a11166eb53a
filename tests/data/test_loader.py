import torch

from detkit.data.loader import TrainStream, build_test_loader, build_train_loader, collate
from detkit.data.transforms import build_transforms
from detkit.data.voc import VOCDataset

from .conftest import pattern_image, write_voc


def _voc(root, count=8):
    """VOC set alternating landscape (24x32) and portrait (32x24) images, each with one box."""
    samples = {}
    for i in range(count):
        height, width = (24, 32) if i % 2 == 0 else (32, 24)
        samples[f"im{i}"] = (pattern_image(height, width, 20 * i), [("obj", (2, 3, 10 + i, 12), 0)])
    write_voc(root, samples, jpeg_quality=100)
    transforms = build_transforms(True, flip_prob=0.5, color_jitter=0.2)
    return VOCDataset(root, "train", transforms=transforms)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    for (images_a, targets_a), (images_b, targets_b) in zip(batches_a, batches_b, strict=True):
        assert [t["image_id"] for t in targets_a] == [t["image_id"] for t in targets_b]
        assert all(torch.equal(a, b) for a, b in zip(images_a, images_b, strict=True))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets_a, targets_b))


def test_resumed_run_yields_exactly_the_uninterrupted_batches(tmp_path):
    ds = _voc(tmp_path / "voc")
    full = _take(build_train_loader(ds, 2, num_workers=0, seed=7), 7)
    _assert_same(full[4:], _take(build_train_loader(ds, 2, num_workers=0, seed=7, start_iter=4), 3))
    _assert_same(full[4:], _take(build_train_loader(ds, 2, num_workers=2, seed=7, start_iter=4), 3))
    other = _take(build_train_loader(ds, 2, num_workers=0, seed=8), 7)
    assert [t["image_id"] for _, ts in other for t in ts] != [t["image_id"] for _, ts in full for t in ts]


def test_grouping_batches_only_same_orientation_images(tmp_path):
    ds = _voc(tmp_path / "voc")
    for images, _ in _take(build_train_loader(ds, 3, num_workers=0, seed=1), 6):
        assert len({image.shape[1] >= image.shape[2] for image in images}) == 1


def test_stream_visits_every_index_once_per_epoch_and_grouping_keeps_groups_apart():
    stream = iter(TrainStream(12, 4, seed=3))
    epoch = [index for _ in range(3) for index, _ in next(stream)]
    assert sorted(epoch) == list(range(12))
    groups = [i % 3 == 0 for i in range(12)]
    for batch in list(zip(range(20), TrainStream(12, 2, seed=3, group_ids=groups)))[:20]:
        assert len({groups[index] for index, _ in batch[1]}) == 1


def test_building_and_running_a_loader_leaves_the_global_torch_rng_alone(tmp_path):
    ds = _voc(tmp_path / "voc", count=4)
    state = torch.get_rng_state()
    _take(build_train_loader(ds, 2, num_workers=0), 2)
    list(build_test_loader(ds, num_workers=0))
    assert torch.equal(state, torch.get_rng_state())


def test_test_loader_keeps_dataset_order(tmp_path):
    ds = _voc(tmp_path / "voc", count=5)
    ids = [t["image_id"] for _, targets in build_test_loader(ds, batch_size=2, num_workers=0) for t in targets]
    assert ids == ds.image_ids


def test_collate_keeps_images_of_different_sizes_as_a_list():
    images, targets = collate([(torch.zeros(3, 4, 5), {"image_id": 1}), (torch.zeros(3, 6, 2), {"image_id": 2})])
    assert [tuple(i.shape) for i in images] == [(3, 4, 5), (3, 6, 2)] and [t["image_id"] for t in targets] == [1, 2]


FORK_AFTER_CV2_POOL = """
import cv2, numpy as np, torch
from detkit.data.loader import build_test_loader
image = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
for _ in range(3):
    cv2.resize(image, (1500, 1500))  # OpenCV's thread pool runs in this (parent) process
class Tiny(torch.utils.data.Dataset):
    def __len__(self): return 4
    def __getitem__(self, i): return torch.zeros(3, 4, 4), {"i": i}
print(len(list(build_test_loader(Tiny(), num_workers=2))))
"""


def test_workers_forked_after_opencv_ran_its_thread_pool_do_not_hang():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", FORK_AFTER_CV2_POOL], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0 and proc.stdout.strip() == "4", proc.stderr[-1000:]
