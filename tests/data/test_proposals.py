"""The proposal store, the selective-search post-processing and resumable dataset runs (tiny images)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import detkit.data.proposals as props
import detkit.modeling.proposals.selective_search as search_module
from detkit.config import config_from_dict
from detkit.data.proposals import ProposalStore, propose_dataset, propose_image, recall_summary
from detkit.data.voc import VOCDataset
from detkit.errors import DetkitError
from tests.data.conftest import pattern_image, write_voc


@pytest.fixture
def voc5(tmp_path: Path) -> Path:
    """VOC folder of five 40x60 images, each with one box, split 'train'."""
    samples = {f"im{i}": (pattern_image(40, 60, 40 * i), [("cell", (3, 5, 30, 25), 0)]) for i in range(5)}
    return write_voc(tmp_path / "voc5", samples, jpeg_quality=100)


def fake_search(calls: list):
    """propose_image stand-in: two boxes derived from the image's mean, and a record of every call."""
    def propose(image, **kwargs):
        calls.append(image.shape)
        v = float(image.mean()) % 10
        return np.array([[2, 4, 30, 25], [v, v, v + 20, v + 15]], dtype=np.float32)[:kwargs["top_k"]]
    return propose


def test_store_round_trip_and_missing_image_error(tmp_path):
    store = ProposalStore(tmp_path / "store")
    boxes = np.array([[1.5, 2, 10, 20], [0, 0, 5, 5]], dtype=np.float64)
    store.save(7, boxes)
    loaded = store.load(7)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, boxes.astype(np.float32))
    assert store.has(7) and not store.has(8)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["7.npy"]  # no temporary file left
    with pytest.raises(DetkitError, match=r"proposal store .*store has no proposals for image id 8") as error:
        store.load(8)
    assert "\n" not in str(error.value)


def test_other_settings_on_an_existing_store_is_an_error_naming_the_key(voc5, tmp_path, monkeypatch):
    monkeypatch.setattr(props, "propose_image", fake_search([]))
    dataset = VOCDataset(voc5, "train")
    propose_dataset(dataset, tmp_path / "s", mode="fast", progress=False)
    with pytest.raises(DetkitError, match=r"proposal store .*s was made with mode='fast', not 'quality'"):
        propose_dataset(dataset, tmp_path / "s", mode="quality", progress=False)
    with pytest.raises(DetkitError, match=r"top_k=2000, not 5"):
        propose_dataset(dataset, tmp_path / "s", top_k=5, progress=False)


def test_a_store_of_other_images_is_refused(voc5, tmp_path, monkeypatch):
    monkeypatch.setattr(props, "propose_image", fake_search([]))
    propose_dataset(VOCDataset(voc5, "train"), tmp_path / "s", progress=False)
    (voc5 / "ImageSets" / "Main" / "train.txt").write_text("im1\nim0\n")  # image id 1 is now im1.jpg
    with pytest.raises(DetkitError, match=r"image id 1 for 'im0.jpg', but the dataset's image 1 is 'im1.jpg'"):
        propose_dataset(VOCDataset(voc5, "train"), tmp_path / "s", progress=False)


def test_boxes_are_mapped_back_from_the_scaled_search_and_filtered(monkeypatch):
    seen = []

    def search(image, mode, max_proposals, min_size):
        seen.append(image.shape)
        # Boxes in the pixels of the 50x25 image the search gets (the 200x100 image scaled by 1/4).
        return np.array([[0, 0, 10, 5], [0, 0, 10, 5],  # an exact duplicate: one is kept
                         [1, 1, 1.2, 3],  # 0.8 px wide in the stored image: under min_size
                         [2, 2, 50, 25], [5, 5, 6, 6], [1, 2, 3, 4]], np.float32)  # the last falls beyond top_k

    monkeypatch.setattr(search_module, "search_boxes", search)  # propose_image lives there (torch-free)
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    boxes = propose_image(image, mode="fast", max_side=50, min_size=1.0, top_k=3)
    assert seen == [(25, 50, 3)]
    expected = [[0, 0, 40, 20], [8, 8, 200, 100], [20, 20, 24, 24]]
    assert boxes.dtype == np.float32 and boxes.tolist() == expected


def test_an_image_within_max_side_is_searched_as_it_is(monkeypatch):
    seen = []
    monkeypatch.setattr(search_module, "search_boxes",
                        lambda image, **kw: seen.append(image.shape) or np.array([[1.0, 2.0, 30.0, 20.0]], np.float32))
    assert propose_image(np.zeros((40, 60, 3), np.uint8), max_side=500).tolist() == [[1, 2, 30, 20]]
    assert seen == [(40, 60, 3)]


def test_real_search_keeps_at_most_top_k_distinct_boxes_inside_the_image():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    boxes = propose_image(image, mode="fast", max_side=80, min_size=4, top_k=50)
    assert 0 < len(boxes) <= 50 and len(np.unique(boxes, axis=0)) == len(boxes)
    assert (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 90).all() and (boxes[:, :2] >= 0).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 4).all()


def test_resume_searches_only_the_missing_images_and_a_finished_store_none(voc5, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(props, "propose_image", fake_search(calls))
    dataset = VOCDataset(voc5, "train")
    first = propose_dataset(dataset, tmp_path / "s", progress=False)
    assert len(calls) == 5
    (tmp_path / "s" / "3.npy").unlink()
    calls.clear()
    assert propose_dataset(dataset, tmp_path / "s", progress=False) == first
    assert len(calls) == 1
    calls.clear()
    recomputed = []
    monkeypatch.setattr(props, "recall_summary", lambda *a: recomputed.append(1))
    assert propose_dataset(dataset, tmp_path / "s", progress=False) == first
    assert calls == [] and recomputed == []  # a finished store: no search, recall.json reused


def test_an_interrupted_run_resumes_to_the_same_store(voc5, tmp_path, monkeypatch):
    dataset = VOCDataset(voc5, "train")
    monkeypatch.setattr(props, "propose_image", fake_search([]))
    straight = propose_dataset(dataset, tmp_path / "straight", progress=False)
    calls: list = []
    search = fake_search(calls)

    def interrupted(image, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return search(image, **kwargs)

    monkeypatch.setattr(props, "propose_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        propose_dataset(dataset, tmp_path / "resumed", progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.npy")) == ["1.npy", "2.npy"]
    assert not (tmp_path / "resumed" / "recall.json").exists()
    monkeypatch.setattr(props, "propose_image", search)
    assert propose_dataset(dataset, tmp_path / "resumed", progress=False) == straight
    assert len(calls) == 5
    for image_id in dataset.image_ids:
        assert np.array_equal(ProposalStore(tmp_path / "resumed").load(image_id),
                              ProposalStore(tmp_path / "straight").load(image_id))


def test_recall_summary_on_hand_made_boxes():
    gt = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])]
    # One exact hit; the other box overlaps IoU 0.6 (10x6 inside 10x10): recalled at 0.5, missed at 0.7.
    proposals = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 26], [50, 50, 60, 60]])]
    recall = recall_summary(proposals, gt)
    assert recall["recall@0.5"] == 1.0 and recall["recall@0.7"] == 0.5
    assert recall["AR@100"] == pytest.approx((1.0 + 0.3) / 2)  # IoU 0.6 passes 0.50, 0.55, 0.60 of the ten
    assert recall["boxes_per_image"] == 3.0 and recall["images"] == 1 and recall["gt_boxes"] == 2


def test_recall_json_is_written_for_a_split_with_ground_truth(voc5, tmp_path, monkeypatch):
    monkeypatch.setattr(props, "propose_image",
                        lambda image, **kw: np.array([[2, 4, 30, 25], [0, 0, 5, 5]], np.float32))
    recall = propose_dataset(VOCDataset(voc5, "train"), tmp_path / "s", progress=False)
    assert json.loads((tmp_path / "s" / "recall.json").read_text()) == recall
    assert recall["recall@0.7"] == 1.0 and recall["boxes_per_image"] == 2.0 and recall["images"] == 5


def test_ensure_proposals_fills_the_configured_store(voc5, tmp_path, monkeypatch):
    from detkit.edge import ensure_proposals

    calls: list = []
    monkeypatch.setattr(props, "propose_image", fake_search(calls))
    store = tmp_path / "store"
    cfg = config_from_dict({"data": {"root": str(voc5), "train": {"format": "voc", "split": "train",
                                                                  "proposals": str(store)}},
                            "proposals": {"top_k": 1}})
    assert ensure_proposals(cfg, "test", progress=False) is None  # data.test.proposals is not set
    assert ensure_proposals(cfg, "train", progress=False) == store
    assert len(calls) == 5 and ProposalStore(store).load(1).shape == (1, 4)
    assert json.loads((store / "meta.json").read_text())["settings"]["top_k"] == 1


def test_rpn_proposals_come_from_the_trained_weights_in_stored_image_pixels(voc5, tmp_path):
    from detkit.data.image_io import read_image, to_tensor
    from detkit.data.proposals import finish_boxes
    from detkit import edge
    from detkit.engine.checkpoint import load_model_weights
    from detkit.modeling.build import build_model

    cfg = config_from_dict({
        "data": {"root": str(voc5), "train": {"format": "voc", "split": "train", "proposals": str(tmp_path / "s")}},
        "model": {"backbone": {"name": "resnet18", "fpn": True}},
        "input": {"min_size": 80, "max_size": 120},  # the 40x60 images are searched at twice their size
        "proposals": {"method": "rpn", "rpn_weights": str(tmp_path / "w.pth"), "top_k": 30}, "device": "cpu"})
    torch.manual_seed(0)
    torch.save(build_model(cfg, num_classes=1).state_dict(), tmp_path / "w.pth")
    edge.ensure_proposals(cfg, "train", progress=False)
    store = ProposalStore(tmp_path / "s")
    boxes = store.load(1)
    assert 0 < len(boxes) <= 30
    assert (boxes[:, 2] <= 60).all() and (boxes[:, 3] <= 40).all() and (boxes[:, :2] >= 0).all()
    model = build_model(cfg, num_classes=1)
    load_model_weights(tmp_path / "w.pth", model)
    model.eval()
    with torch.no_grad():  # the RPN's own boxes on the 80x120 resized image, halved: the stored-image pixels
        image = read_image(voc5 / "JPEGImages" / "im0.jpg")
        batch, _, _ = model.preprocessor([to_tensor(image)])
        assert batch.image_sizes == [(80, 120)]
        raw, _ = model.rpn(tuple(batch.tensors.shape[-2:]), batch.image_sizes,
                           list(model.backbone(batch.tensors).values()))
    assert np.allclose(boxes, finish_boxes(raw[0].numpy() / 2, 40, 60, 1.0, 30), atol=1e-4)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())["settings"]
    assert meta["method"] == "rpn" and meta["rpn_weights"] == str((tmp_path / "w.pth").resolve())
    torch.save(build_model(cfg, num_classes=1).state_dict(), tmp_path / "w.pth")  # other weights, same path
    with pytest.raises(DetkitError, match="was made with rpn_weights_"):
        edge.ensure_proposals(cfg, "train", progress=False)
