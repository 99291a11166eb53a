"""The final RPN's proposal recall (rpn/AR@100/300/1000) comes out of the evaluation pass of a Faster R-CNN: equal
to proposal_recall on the model's own proposals, through the test-time autocast wrapper, and in metrics.json of a
training run (sharded over two ranks: tests/engine/test_distributed.py). Tiny: demo.yaml's R18-FPN at 64 px on
generated 64x64 VOC images."""
import json
import math

import numpy as np
import pytest
import torch

from detkit.config import load_config
from detkit.evaluation import proposal_recall
from detkit.modeling.build import build_model
from tests.test_tools_no_lost_work import DEMO, TINY, tiny_voc

KEYS = ("rpn/AR@100", "rpn/AR@300", "rpn/AR@1000")
# Fewer proposals than the 100 / 300 / 1000 budgets would make the three ARs equal; 120 keeps AR@100 apart.
OVERRIDES = [*TINY, "model.rpn.post_nms_top_n_test=120", "model.rpn.pre_nms_top_n_test=400"]


def tiny_model_and_data(root):
    from detkit.data import build_dataset

    data = root / "voc" if (root / "voc").is_dir() else tiny_voc(root / "voc", count=6)
    cfg = load_config(DEMO, OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg, 1).eval()
    return model, build_dataset("voc", str(data), "test", None, train=False)


def direct_recall(model, dataset):
    """AR from the model's proposals computed by hand: preprocess, backbone, RPN, scaled back to input pixels."""
    proposals, gt_boxes = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            image, _ = dataset[i]
            batch, _, _ = model.preprocessor([image])
            boxes, _ = model.rpn(tuple(batch.tensors.shape[-2:]), batch.image_sizes,
                                 list(model.backbone(batch.tensors).values()))
            (h, w), (oh, ow) = batch.image_sizes[0], image.shape[-2:]
            proposals.append(boxes[0] * torch.tensor([ow / w, oh / h, ow / w, oh / h]))
            target = dataset.target(i)
            gt_boxes.append(target["boxes"][~target["ignore"]])
    assert max(len(p) for p in proposals) > 100  # AR@100 and AR@300 differ in what they keep
    return {f"rpn/{k}": v for k, v in proposal_recall(proposals, gt_boxes).items()}


def test_evaluate_reports_the_recall_of_the_models_own_proposals(tmp_path):
    from detkit.evaluation.amp import AutocastDetector
    from detkit.evaluation.predict import evaluate

    model, dataset = tiny_model_and_data(tmp_path)
    expected = direct_recall(model, dataset)
    metrics, results = evaluate(model, dataset, torch.device("cpu"), num_workers=0, voc=True)
    assert {k: metrics[k] for k in KEYS} == pytest.approx(expected, abs=1e-9)
    assert 0 < metrics["rpn/AR@100"] <= metrics["rpn/AR@300"] <= 1
    assert all("rpn_proposals" not in r for r in results) and "bbox/AP" in metrics
    wrapped, _ = evaluate(AutocastDetector(model, "cpu"), dataset, torch.device("cpu"), num_workers=0)
    assert all(k in wrapped for k in KEYS)  # through test.amp's wrapper too


def test_propose_and_detect_with_proposals_give_the_rpns_own_boxes(tmp_path):
    """TwoStageDetector.propose and detect_with_proposals: the RPN's proposals in input pixels, the same from either,
    and the detections of forward; a detector with an RPN refuses given proposals."""
    from detkit.errors import DetkitError

    model, dataset = tiny_model_and_data(tmp_path)
    image, _ = dataset[0]
    with torch.no_grad():
        proposed = model.propose([image])[0]
        detections, (recorded,) = model.detect_with_proposals([image])
        plain = model([image])
    assert torch.equal(proposed, recorded) and proposed.dtype == torch.float32
    assert torch.equal(detections[0]["boxes"], plain[0]["boxes"])
    assert (proposed[:, 2] <= image.shape[-1] + 1e-4).all() and (proposed[:, 3] <= image.shape[-2] + 1e-4).all()
    model.channels_last = True  # the same boxes through the channels_last backbone
    with torch.no_grad():
        assert torch.allclose(model.propose([image])[0], proposed, atol=1e-3)
    model.channels_last = False
    with pytest.raises(DetkitError, match="do not pass proposals"):
        model.detect_with_proposals([image], proposals=[proposed])
    with pytest.raises(DetkitError, match="eval mode"):
        model.train().detect_with_proposals([image])


def test_detector_without_rpn_reports_no_rpn_recall(tmp_path):
    from detkit.evaluation.predict import evaluate

    class Replay(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([1])} for _ in images]

    _, dataset = tiny_model_and_data(tmp_path)
    metrics, _ = evaluate(Replay(), dataset, torch.device("cpu"), num_workers=0)
    assert not any(k.startswith("rpn/") for k in metrics)


@pytest.mark.parametrize("progress", [True, False])
def test_evaluate_shows_its_progress_bar_only_when_asked(progress, tmp_path, capsys):
    from detkit.evaluation.predict import evaluate

    model, dataset = tiny_model_and_data(tmp_path)
    capsys.readouterr()
    evaluate(model, dataset, torch.device("cpu"), num_workers=0, progress=progress)
    assert ("infer: 6/6 (100%)" in capsys.readouterr().err) is progress  # log lines: capsys is no terminal


@pytest.mark.parametrize("schedule", ["joint", "exact_joint"])
def test_training_writes_rpn_recall_into_metrics_json(schedule, tmp_path, capsys):
    from detkit.recipes import train

    data = tiny_voc(tmp_path / "voc", count=4)
    cfg = load_config(DEMO, [*OVERRIDES, f"output_dir={tmp_path / 'run'}", "data.train.format=voc",
                             "data.test.format=voc", f"data.root={data}", "data.train.split=trainval",
                             "data.test.split=test", "solver.max_iter=2", f"train.schedule={schedule}"])
    train(cfg, progress=False)
    assert "it/s]" not in capsys.readouterr().err  # --no-progress: no bar, the test pass's included
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(isinstance(metrics[k], float) and not math.isnan(metrics[k]) for k in KEYS)
    assert np.all(np.diff([metrics[k] for k in KEYS]) >= 0)  # more proposals never lower the recall
