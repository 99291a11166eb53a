"""The extension points of docs/architecture.md, each proven with a toy part defined here, touching nothing in
detkit/ but the registry dict it registers in (detkit.registries, only for the test): a toy backbone and a toy
predictor go into a detector through its constructor and train for an iteration, then detect; a toy backbone and a
toy box head registered in BACKBONES / BOX_HEADS are named in a config and built by build_model; a toy training
recipe (RECIPES) and a toy dataset format (FORMATS) are named in a loaded config and train through the ordinary
paths. Tiny: 64 x 64 images."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.modeling.detectors.faster_rcnn import FasterRCNN
from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.modeling.proposals.rpn import RegionProposalNetwork, RPNHead
from detkit.modeling.roi_heads.box_head import TwoMLPHead
from detkit.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.roi_heads import RoIHeads
from detkit.modeling.preprocess import ImagePreprocessor


class ToyBackbone(nn.Module):
    """Two strided convolutions: one 16-channel map at stride 4 (what a backbone must give: an ordered dict of
    maps, out_channels and strides)."""

    out_channels = 16
    strides = {"c2": 4}

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(c2=F.relu(self.conv2(F.relu(self.conv1(x)))))


class ToyPredictor(nn.Module):
    """Cosine-similarity class scores (a temperature-scaled softmax) and shared class-agnostic deltas: the
    predictor interface (losses, inference, class_logits) with scores of its own."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_channels) * 0.01)
        self.bbox_pred = nn.Linear(in_channels, 4)
        self.calls = {"losses": 0, "inference": 0}

    def class_logits(self, box_features: torch.Tensor) -> torch.Tensor:
        return 10.0 * F.normalize(box_features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def _deltas(self, box_features: torch.Tensor) -> torch.Tensor:
        return self.bbox_pred(box_features).repeat(1, self.weight.shape[0])

    def losses(self, box_features, labels, regression_targets):
        self.calls["losses"] += 1
        logits = self.class_logits(box_features)
        fg = labels > 0
        box = F.smooth_l1_loss(self.bbox_pred(box_features)[fg], regression_targets[fg], reduction="sum")
        return {"loss_classifier": F.cross_entropy(logits, labels), "loss_box_reg": box / max(labels.numel(), 1)}

    def inference(self, box_features, proposals, image_sizes, box_coder, **settings):
        self.calls["inference"] += 1
        return fast_rcnn_inference(self.class_logits(box_features), self._deltas(box_features), proposals,
                                   image_sizes, box_coder, **settings)


def toy_detector(predictor: nn.Module | None = None) -> FasterRCNN:
    backbone = ToyBackbone()
    anchors = AnchorGenerator(((16, 32),), (0.5, 1.0, 2.0))
    rpn = RegionProposalNetwork(anchors, RPNHead(16, anchors.num_anchors_per_location()[0]),
                                post_nms_top_n={"training": 64, "testing": 32})
    pooler = RoIPooler(4, [4])
    box_head = TwoMLPHead(16 * 4 * 4, 32)
    heads = RoIHeads(pooler, box_head, predictor or ToyPredictor(32, 3), batch_size_per_image=32)
    return FasterRCNN(backbone, rpn=rpn, roi_heads=heads,
                      preprocessor=ImagePreprocessor(64, 64, pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3))


def batch():
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}]
    return images, targets


def one_sgd_step(model: nn.Module) -> dict[str, float]:
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    sum(losses.values()).backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def test_a_toy_backbone_and_a_toy_predictor_train_and_detect():
    model = toy_detector()
    before = model.backbone.conv1.weight.detach().clone()
    losses = one_sgd_step(model)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(v == v and v >= 0 for v in losses.values())
    assert not torch.equal(before, model.backbone.conv1.weight)  # the toy backbone trained
    model.eval()
    images, _ = batch()
    with torch.no_grad():
        detections, proposals = model.detect_with_proposals(images)
    predictor = model.roi_heads.box_predictor
    assert predictor.calls == {"losses": 1, "inference": 1}  # the heads routed to the toy predictor
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
    assert all(len(p) > 0 for p in proposals)


def test_a_toy_recipe_registers_in_recipes_and_trains(tmp_path, monkeypatch):
    from detkit import recipes, registries
    from detkit.config import load_config
    from detkit.errors import DetkitError
    from detkit.edge import setup
    from detkit.recipes.common import build_train_and_test, make_trainer
    from detkit.modeling.build import build_detector
    from tests.recipes.test_alternating import voc_args
    from tests.test_tools_no_lost_work import DEMO, tiny_voc

    ran = {}

    def toy_recipe(cfg, resume=False, progress=True, overwrite=False):
        """Two SGD iterations of the config's detector, no evaluation."""
        device = setup(cfg)
        train_set, _ = build_train_and_test(cfg, progress=False)
        model = build_detector(cfg, num_classes=len(cfg.model.class_names))
        summary = make_trainer(cfg, model, train_set, device, tmp_path / "toy", max_iter=2, progress=False).train()
        ran["summary"] = summary
        return {"toy/iterations": 2}

    # One line in the dict: the recipe and the train.* keys it reads (the others do not apply to it).
    monkeypatch.setitem(registries.RECIPES, "toy", registries.Part(toy_recipe, reads=("train.eval_period",)))
    data = tiny_voc(tmp_path / "voc", count=4)
    args = [f"output_dir={tmp_path / 'run'}", *voc_args(data), "train.schedule=toy"]
    with pytest.raises(DetkitError, match=r"^config keys set on the command line that train.schedule=toy does not "
                                          r"read: train.exact_joint.proposal_grad_scale$"):
        load_config(DEMO, [*args, "train.exact_joint.proposal_grad_scale=0.5"])
    cfg = load_config(DEMO, [*args, "train.eval_period=0"])
    assert cfg.train.schedule == "toy" and recipes.RECIPES is registries.RECIPES
    assert recipes.train(cfg, progress=False) == {"toy/iterations": 2}
    assert (tmp_path / "toy" / "model_final.pth").is_file() and ran["summary"]["train/time_s"] > 0


@pytest.mark.parametrize("bad", ["not-a-recipe"])
def test_an_unknown_recipe_name_is_refused_by_the_schema(bad):
    from detkit.config import load_config
    from detkit.errors import DetkitError

    with pytest.raises(DetkitError, match="train.schedule"):
        load_config(None, [f"train.schedule={bad}"])


def test_a_toy_dataset_format_registers_in_formats_and_trains(tmp_path, monkeypatch):
    """A CSV format (one line per box: file, x1, y1, x2, y2, class) registered in detkit.registries.FORMATS for this test
    only: config -> dataset -> loader -> one SGD iteration, and the COCO evaluation of its test split."""
    import csv

    import cv2
    import numpy as np

    from detkit import registries
    from detkit.config import load_config
    from detkit.data.base import DetectionDataset, ImageRecord
    from detkit.edge import build_split, setup
    from detkit.evaluation.predict import evaluate
    from detkit.modeling.build import build_model
    from detkit.recipes.common import make_trainer
    from tests.test_tools_no_lost_work import DEMO, TINY

    rng = np.random.default_rng(0)
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        for i in range(4):
            cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            csv.writer(f).writerow([f"im{i}.png", 8, 8, 40 + i, 44, "cell"])

    def csv_format(root, split, ann_file, train, transforms, skip_corrupt, demo_cache):
        rows = list(csv.reader(open(f"{root}/boxes.csv")))
        records = [ImageRecord(path=tmp_path / name, file_name=name, image_id=i + 1, height=64, width=64,
                               boxes=np.array([[float(v) for v in box]], dtype=np.float32),
                               labels=np.array([1]), ignore=np.array([False]))
                   for i, (name, *box, _) in enumerate(rows)]
        return DetectionDataset(records, ["cell"], {1: 1}, skip_corrupt=skip_corrupt, transforms=transforms)

    monkeypatch.setitem(registries.FORMATS, "csv", csv_format)  # one line in the dict
    cfg = load_config(DEMO, [*TINY, f"output_dir={tmp_path / 'run'}", f"data.root={tmp_path}", "device=cpu",
                             "data.train.format=csv", "data.test.format=csv"])
    device = setup(cfg)
    train_set, test_set = build_split(cfg, "train"), build_split(cfg, "test")
    assert len(train_set) == 4 and train_set.classes == ["cell"]
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=1)
    summary = make_trainer(cfg, model, train_set, device, tmp_path / "run", max_iter=1, progress=False).train()
    assert summary["train/time_s"] > 0
    metrics, _ = evaluate(model, test_set, device, num_workers=0, progress=False)
    assert "bbox/AP" in metrics and 0 <= metrics["rpn/AR@100"] <= 1


def test_a_toy_backbone_and_box_head_register_in_their_dicts_and_build_from_a_config(monkeypatch):
    """model.backbone.name=toy and model.roi_heads.box_head=toy_mlp, each one line in its registry: load_config
    accepts them, build_model builds the detector with them, and it trains for an iteration."""
    from detkit import registries
    from detkit.config import load_config
    from detkit.modeling.build import build_model

    def toy_backbone(name, *, fpn, norm, weights, trainable_layers):
        return ToyBackbone()

    def toy_box_head(cfg, in_channels):
        return TwoMLPHead(in_channels * cfg.model.roi_heads.pooler_resolution ** 2, 32)

    monkeypatch.setitem(registries.BACKBONES, "toy", toy_backbone)
    monkeypatch.setitem(registries.BOX_HEADS, "toy_mlp", toy_box_head)
    cfg = load_config(None, ["model.backbone.name=toy", "model.backbone.fpn=false", "model.roi_heads.box_head=toy_mlp",
                             "model.rpn.anchor_sizes=[[16, 32]]", "model.roi_heads.pooler_resolution=4",
                             "input.min_size=64", "input.max_size=64", "model.num_classes=2"])
    model = build_model(cfg)
    assert isinstance(model.backbone, ToyBackbone) and model.roi_heads.box_head.out_channels == 32
    losses = one_sgd_step(model)
    assert all(v == v and v >= 0 for v in losses.values())


def test_a_config_built_in_python_is_checked_once_by_build_model(monkeypatch):
    """build_model checks a Config built in code (never through load_config) before building, once; a loaded one
    is not checked again; a key changed after the check is checked again."""
    from detkit import config_checks
    from detkit.config import load_config
    from detkit.config_schema import Config
    from detkit.errors import DetkitError
    from detkit.modeling import build

    cfg = Config()
    cfg.model.arch = "fast_rcnn"
    cfg.model.rpn.nms_thresh = 0.6  # not the default: a key Fast R-CNN does not read
    with pytest.raises(DetkitError, match=r"^config keys that do not apply to model.arch=fast_rcnn: "
                                          r"model.rpn.nms_thresh$"):
        build.build_model(cfg, 2)
    calls = []
    monkeypatch.setattr(config_checks, "check_keys_apply", lambda c: calls.append(c))
    cfg = Config()
    cfg.model.backbone.name, cfg.model.backbone.fpn, cfg.model.rpn.anchor_sizes = "resnet18", False, [[32.0]]
    with torch.device("meta"):
        build.build_model(cfg, 2)
        build.build_model(cfg, 2)
        assert len(calls) == 1
        cfg.model.roi_heads.score_thresh = 0.1
        build.build_model(cfg, 2)
        assert len(calls) == 2
        loaded = load_config(None, ["model.backbone.name=resnet18", "model.backbone.fpn=false",
                                    "model.rpn.anchor_sizes=[[32]]"])
        assert len(calls) == 3
        build.build_model(loaded, 2)
        assert len(calls) == 3
