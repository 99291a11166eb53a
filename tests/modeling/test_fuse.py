"""BatchNorm folding at test time (detkit.modeling.fuse, test.fold_bn) keeps every output within float rounding."""
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit import build_model, load_config
from detkit.modeling.build import prepare_for_test
from detkit.modeling.fuse import NORMS, fold_batch_norm, fold_detector_batch_norm

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["model.num_classes=3", "input.min_size=64", "input.max_size=96", "model.rpn.post_nms_top_n_test=32"]


def randomise_norms(model: nn.Module) -> None:
    """Statistics and affine terms far from the identity, so that a wrong fold shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMS):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("recipe,norm,folds", [("faster_rcnn_r18_fpn.yaml", "bn", 20),
                                               ("faster_rcnn_r18_fpn.yaml", "frozen_bn", 20),
                                               ("faster_rcnn_r50_c4.yaml", "frozen_bn", 53)])
def test_folded_detector_gives_the_same_features_and_detections(recipe, norm, folds):
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / recipe, [*SMALL, f"model.backbone.norm={norm}"])).eval()
    randomise_norms(model)
    images = [torch.rand(3, 64, 80)]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        features, detections = model.backbone(x), model(images)
        assert fold_detector_batch_norm(model) == folds  # backbone and, for C4, the res5 box head
        assert not any(isinstance(m, NORMS) for m in model.modules())
        folded_features, folded_detections = model.backbone(x), model(images)
    for name in features:
        scale = features[name].abs().max()
        torch.testing.assert_close(folded_features[name], features[name], atol=1e-4 * scale, rtol=1e-4)
    assert len(folded_detections[0]["boxes"]) == len(detections[0]["boxes"])
    torch.testing.assert_close(folded_detections[0]["scores"], detections[0]["scores"], atol=1e-4, rtol=1e-4)


def test_prepare_for_test_applies_only_the_levers_asked_for():
    for on, norms_left in (("true", 0), ("false", 20)):
        levers = [f"test.fold_bn={on}", f"test.channels_last={on}"]
        cfg = load_config(CONFIGS / "faster_rcnn_r18_fpn.yaml", [*SMALL, *levers])
        model = prepare_for_test(build_model(cfg), cfg)
        assert sum(isinstance(m, NORMS) for m in model.modules()) == norms_left
        assert model.channels_last is (on == "true")


def test_a_convolution_whose_output_is_also_used_elsewhere_keeps_its_norm():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), FrozenBatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(self.conv2(y))

    module = Shared().eval()
    randomise_norms(module)
    x = torch.rand(2, 3, 8, 8)
    expected = module(x)
    assert fold_batch_norm(module) == 1  # conv2 -> bn2 only: conv's output also feeds the sum
    assert isinstance(module.bn, nn.BatchNorm2d) and isinstance(module.bn2, nn.Identity)
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


def test_a_batch_norm_in_training_mode_is_refused():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.raises(RuntimeError, match="training mode"):
        fold_batch_norm(module)
