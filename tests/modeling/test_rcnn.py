"""R-CNN's model side: context padding and warping (a hand-computed crop), SVM scores out of model(images),
model_final.pth reloading to identical detections."""
import torch

from detkit.config_schema import Config
from detkit.engine.checkpoint import atomic_torch_save, load_model_weights
from detkit.modeling.build import build_model
from detkit.modeling.roi_heads.warp import RegionWarper, dilate_boxes


def test_context_padding_dilates_by_warp_ratio():
    # warp 8, pad 2: the box fills the central 4 of 8 warped pixels, so it grows 2x about its centre
    out = dilate_boxes(torch.tensor([[10.0, 10.0, 30.0, 20.0]]), 8, 2)
    assert torch.allclose(out, torch.tensor([[0.0, 5.0, 40.0, 25.0]]))


def test_warp_maps_known_box_to_expected_crop_with_mean_fill():
    # Image value = 100 + column index (a pixel's centre is at column + 0.5); 0 is the mean pixel after subtraction.
    image = (100 + torch.arange(64.0)).expand(3, 64, 64)[None].contiguous()
    warper = RegionWarper(warp_size=8, context_pad=2, sampling_ratio=2)
    crops = warper([image], [torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 20.0, 20.0]])])
    assert crops.shape == (2, 3, 8, 8)
    # box 1 dilates to [0, 40]: 5-pixel bins whose mean sample is at 5 i + 2.5, i.e. column 5 i + 2
    assert torch.allclose(crops[0, 0, 3], torch.tensor([102.0 + 5 * i for i in range(8)]))
    # box 2 dilates to [-10, 30]: the two bins left of the image read the mean (0), then the same ramp from 102
    expected = torch.tensor([0.0, 0.0] + [102.0 + 5 * i for i in range(6)])
    assert torch.allclose(crops[1, 0, 4, :], expected)
    assert torch.allclose(crops[1, 0, :2, 4], torch.zeros(2))  # rows above the image are the mean pixel too


def _tiny_rcnn() -> torch.nn.Module:
    cfg = Config()
    cfg.model.arch = "rcnn"
    cfg.model.backbone.name = "resnet18"
    cfg.model.backbone.fpn = False
    cfg.model.rcnn.warp_size, cfg.model.rcnn.context_pad = 32, 2
    cfg.input.min_size, cfg.input.max_size = 64, 64
    cfg.model.roi_heads.batch_size_per_image = 8
    return build_model(cfg, 2)


def test_svm_scores_come_out_of_the_model_and_reload_identically(tmp_path):
    torch.manual_seed(0)
    model = _tiny_rcnn().eval()
    predictor = model.roi_heads.box_predictor
    weight, bias = torch.randn(2, predictor.svm_weight.shape[1]), torch.tensor([0.5, -0.25])
    predictor.set_svms(weight, bias, 0.5)
    predictor.set_regressors(torch.randn_like(predictor.reg_weight) * 1e-3, torch.zeros(2, 4), 1.0)
    images = [torch.rand(3, 64, 64)]
    proposals = [torch.tensor([[4.0, 4.0, 30.0, 30.0], [20.0, 10.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]])]
    with torch.no_grad():
        out = model(images, proposals=proposals)[0]
        fc7, _ = model.roi_heads.region_features([model.preprocessor(images)[0].tensors], proposals)
    margins = (fc7 * 0.5) @ weight.t() + bias  # the SVMs' margins, computed by hand
    for score, label in zip(out["scores"], out["labels"]):
        assert torch.isclose(margins[:, label - 1], score, atol=1e-4).any()
    assert torch.isclose(out["scores"].max(), margins.max(), atol=1e-4)  # the best region survives NMS
    path = tmp_path / "model_final.pth"
    atomic_torch_save({"model": model.state_dict(), "meta": {}}, path)
    reloaded = _tiny_rcnn().eval()
    load_model_weights(path, reloaded)
    with torch.no_grad():
        again = reloaded(images, proposals=proposals)[0]
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(out[key], again[key])


def test_fine_tuning_returns_a_classification_loss():
    torch.manual_seed(0)
    model = _tiny_rcnn().train()
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
              "proposals": torch.tensor([[9.0, 8.0, 40.0, 42.0], [44.0, 44.0, 63.0, 63.0]])}
    losses = model([torch.rand(3, 64, 64)], [target])
    assert set(losses) == {"loss_classifier"} and losses["loss_classifier"].item() > 0
