"""test.batch_size: eval's predict loop and infer.py run several images per forward. Images of one size give the
detections of batch 1 (same padding); mixed sizes are padded to the largest, which moves detections near the borders
of the smaller ones, so there only the mAP is compared."""
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.config import load_config
from detkit.errors import DetkitError
from detkit.modeling.build import build_model, prepare_for_test

REPO = Path(__file__).resolve().parents[2]
SMALL = ["input.min_size=96", "input.max_size=160", "model.rpn.pre_nms_top_n_test=200",
         "model.rpn.post_nms_top_n_test=60", "model.roi_heads.representation_size=64"]


class Images(torch.utils.data.Dataset):
    def __init__(self, sizes):
        rng = np.random.default_rng(0)
        self.images = [torch.from_numpy(rng.random((3, h, w), dtype=np.float32)) for h, w in sizes]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}


@pytest.fixture(scope="module")
def model():
    cfg = load_config(REPO / "configs" / "demo.yaml", SMALL)
    torch.manual_seed(0)
    return prepare_for_test(build_model(cfg, 3), cfg).eval()


def predict(model, dataset, batch_size):
    from detkit.data.loader import build_test_loader
    from detkit.evaluation.predict import predict as predict_loop

    outputs, _ = predict_loop(model, build_test_loader(dataset, batch_size=batch_size, num_workers=0),
                              torch.device("cpu"), progress=False)
    return outputs


def test_batches_of_same_size_images_give_the_detections_of_batch_1(model):
    dataset = Images([(90, 120)] * 2)
    one, two = predict(model, dataset, 1), predict(model, dataset, 2)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=0.01, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)


def test_mixed_sizes_are_padded_and_keep_image_order(model):
    dataset = Images([(90, 120), (60, 150), (120, 80)])
    two = predict(model, dataset, 2)
    assert len(two) == 3
    for out, image in zip(two, dataset.images):  # every box inside its own image
        h, w = image.shape[-2:]
        assert (out["boxes"][:, 2] <= w + 1e-3).all() and (out["boxes"][:, 3] <= h + 1e-3).all()


def test_batch_size_must_be_positive():
    with pytest.raises(DetkitError, match="test.batch_size"):
        load_config(REPO / "configs" / "demo.yaml", ["test.batch_size=0"])
