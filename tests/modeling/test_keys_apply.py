"""Keys an arch ignores are errors when the user sets them (default values included); every shipped config builds;
test-time SVD (model.roi_heads.svd_rank) applies to R-CNN's VGG fc6/fc7 and is refused where there are none."""
import pytest
import torch
import yaml
from torch import nn

from detkit import build_model, load_config
from detkit.config import config_to_dict, save_config
from detkit.config_checks import RCNN_UNUSED_ROI_HEADS
from detkit.config_schema import RoIHeadsConfig
from detkit.errors import DetkitError
from detkit.config_checks import check_keys_apply
from detkit.modeling.build import prepare_for_test
from detkit.modeling.backbones import build_backbone
from detkit.modeling.detectors.rcnn import RCNN, build_rcnn_heads
from detkit.modeling.roi_heads.region_cnn import VGGRegionCNN
from tests.modeling.test_build import CONFIGS

SHIPPED = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_valued_rpn_key_in_a_fast_rcnn_file_is_named(tmp_path):
    path = write(tmp_path / "mine.yaml", {"_base_": str(CONFIGS / "fast_rcnn_r18_fpn.yaml"),
                                          "model": {"rpn": {"fg_iou_thresh": 0.7}}})  # 0.7 is the default
    with pytest.raises(DetkitError, match=rf"do not apply to model.arch=fast_rcnn: model.rpn.fg_iou_thresh "
                                          rf"\(in {path}\)$"):
        build_model(load_config(path), 2)
    with pytest.raises(DetkitError, match=r"fast_rcnn: model.rpn.min_size \(in the command line\)$"):
        build_model(load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml", ["model.rpn.min_size=0.001"]), 2)


def test_key_from_a_users_base_file_is_named_with_that_file(tmp_path):
    base = write(tmp_path / "base.yaml", {"model": {"rpn": {"nms_thresh": 0.7}, "rcnn": {"warp_size": 227}}})
    path = write(tmp_path / "run.yaml", {"_base_": "base.yaml", "model": {"arch": "fast_rcnn"}})
    with pytest.raises(DetkitError) as err:
        check_keys_apply(load_config(path))
    assert str(err.value) == ("config keys that do not apply to model.arch=fast_rcnn: model.rpn.nms_thresh "
                              f"(in {base}), model.rcnn.warp_size (in {base})")


def test_faster_rcnn_refuses_rcnn_keys_but_proposals_from_an_rpn_keep_rpn_keys():
    with pytest.raises(DetkitError, match=r"faster_rcnn: model.rcnn.context_pad \(in the command line\)"):
        check_keys_apply(load_config(CONFIGS / "demo.yaml", ["model.rcnn.context_pad=16"]))
    # A Fast R-CNN whose store an RPN fills reads model.rpn.*.
    check_keys_apply(load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml",
                                 ["proposals.method=rpn", "model.rpn.nms_thresh=0.7"]))


@pytest.mark.parametrize("key", RCNN_UNUSED_ROI_HEADS)
def test_roi_heads_keys_rcnn_ignores_are_named(key):
    default = getattr(RoIHeadsConfig(), key)
    value = str(default).lower() if isinstance(default, bool) else default
    with pytest.raises(DetkitError, match=rf"do not apply to model.arch=rcnn: model.roi_heads.{key} "
                                          r"\(in the command line\)$"):
        build_model(load_config(CONFIGS / "rcnn_r18.yaml", [f"model.roi_heads.{key}={value}"]), 2)


def test_rcnn_keys_it_reads_are_accepted_and_channels_last_is_not():
    check_keys_apply(load_config(CONFIGS / "rcnn_r18.yaml", [
        "model.roi_heads.batch_size_per_image=64", "model.roi_heads.positive_fraction=0.25",
        "model.roi_heads.detections_per_img=100", "model.rcnn.nms_thresh=0.3"]))
    with pytest.raises(DetkitError, match=r"rcnn: model.backbone.channels_last \(in the command line\)$"):
        check_keys_apply(load_config(CONFIGS / "rcnn_r18.yaml", ["model.backbone.channels_last=false"]))


@pytest.mark.parametrize("recipe", ["demo.yaml", "fast_rcnn_r18_fpn.yaml", "rcnn_r18.yaml"])
def test_saved_config_leaves_out_ignored_keys_and_reloads(recipe, tmp_path):
    cfg = load_config(CONFIGS / recipe)
    saved = save_config(cfg, tmp_path / "config.yaml")
    tree = yaml.safe_load(saved.read_text())
    again = load_config(saved)
    check_keys_apply(again)  # every key in a saved config.yaml applies to its arch
    assert again == cfg
    assert ("rpn" in tree["model"]) == (cfg.model.arch == "faster_rcnn")
    assert ("rcnn" in tree["model"]) == (cfg.model.arch == "rcnn")
    assert ("pooler" in tree["model"]["roi_heads"]) == (cfg.model.arch != "rcnn")


def test_every_shipped_config_loads_and_builds():
    built: dict[str, str] = {}
    for config in SHIPPED:
        cfg = load_config(CONFIGS / config, ["model.num_classes=2"])
        check_keys_apply(cfg)
        key = repr((config_to_dict(cfg.model), cfg.train.schedule))  # what build_model reads besides input.*
        if key in built:
            continue
        with torch.device("meta"):  # every constructor runs; the weights' random init (seconds for VGG16) does not
            model = build_model(cfg, init_weights=False)  # configs/finetune' weights: test_pretrained_weights.py
        assert (model.rpn is None) == (cfg.model.arch != "faster_rcnn"), config
        built[key] = config
    assert len(built) >= 12  # distinct detectors among the shipped configs


class NarrowFC(nn.Module):
    """fc6/fc7 as VGG's but narrow (pool5 max-pooled to 512 -> 64 -> 64), so that their SVDs take milliseconds."""

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.fc6, self.fc7 = nn.Linear(512, 64), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc7(torch.relu(self.fc6(x.amax(dim=(2, 3))))))


def test_svd_rank_compresses_rcnn_vgg16_fc6_fc7():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "rcnn_vgg16.yaml", ["model.num_classes=2", "model.roi_heads.svd_rank=16"])
    check_keys_apply(cfg)  # svd_rank applies to R-CNN on VGG16
    cnn = VGGRegionCNN(build_backbone("vgg16"), NarrowFC(), warp_size=32)  # R-CNN's VGG16 CNN, narrow fc layers
    model = RCNN(3, roi_heads=build_rcnn_heads(cnn, 3, warp_size=32, context_pad=2)).eval()
    fc6, fc7 = cnn.fc_head.fc6.weight.detach().clone(), cnn.fc_head.fc7.weight.detach().clone()
    image, proposals = torch.rand(3, 80, 96), torch.tensor([[4.0, 6.0, 60.0, 70.0], [30.0, 20.0, 90.0, 78.0]])
    with torch.no_grad():
        full, _ = model.roi_heads.region_features([image[None]], [proposals])
    assert prepare_for_test(model, cfg) is model
    assert isinstance(cnn.fc_head.fc6, nn.Sequential) and isinstance(cnn.fc_head.fc7, nn.Sequential)
    for layer, weight in ((cnn.fc_head.fc6, fc6), (cnn.fc_head.fc7, fc7)):
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        torch.testing.assert_close(layer[1].weight @ layer[0].weight, (u[:, :16] * s[:16]) @ vh[:16],
                                   atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        compressed, _ = model.roi_heads.region_features([image[None]], [proposals])
        detections = model([image], proposals=[proposals])
    assert compressed.shape == full.shape and not torch.equal(compressed, full)
    assert detections[0]["boxes"].shape[1] == 4


def test_svd_rank_without_fc_layers_is_a_one_line_error():
    with pytest.raises(DetkitError, match=r"^config key model.roi_heads.svd_rank \(in the command line\) does not "
                                          r"apply to model.arch=rcnn with model.backbone.name=resnet18"):
        build_model(load_config(CONFIGS / "rcnn_r18.yaml", ["model.roi_heads.svd_rank=8"]), 2)
    with pytest.raises(DetkitError, match=r"svd_rank \(in the command line\) does not apply to the res5 box head"):
        build_model(load_config(CONFIGS / "faster_rcnn_r50_c4.yaml", ["model.roi_heads.svd_rank=8"]), 2)


def test_a_whole_config_saved_by_an_older_run_still_loads(tmp_path):
    """Runs saved before save_config left ignored keys out wrote every key (at its default); eval/infer on such a
    config.yaml must not read those defaults as the user's keys, while a changed ignored key is still an error."""
    tree = config_to_dict(load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml"))  # every key, model.rpn.* included
    old = write(tmp_path / "config.yaml", tree)
    build_model(load_config(old), 2)
    tree["model"]["rpn"]["nms_thresh"] = 0.6
    changed = write(tmp_path / "changed.yaml", tree)
    with pytest.raises(DetkitError, match=r"fast_rcnn: model.rpn.nms_thresh"):
        build_model(load_config(changed), 2)
    with pytest.raises(DetkitError, match=r"model.rpn.min_size \(in the command line\)"):
        build_model(load_config(old, ["model.rpn.min_size=0.001"]), 2)


@pytest.mark.parametrize("recipe, extra", [("rcnn_r18.yaml", ["model.rpn.anchor_sizes=[[32,64,128]]"]),
                                           ("fast_rcnn_r18_fpn.yaml", [])])
def test_the_rpn_that_proposes_for_a_detector_builds_from_its_config(recipe, extra):
    """proposals.method=rpn builds a Faster R-CNN from the detector's config for its RPN: R-CNN's own keys
    (model.rcnn.*, set in its recipe) must not make that build a key error."""
    from detkit.edge import rpn_config

    cfg = load_config(CONFIGS / recipe, ["proposals.method=rpn", "proposals.rpn_weights=rpn.pth", *extra])
    model = build_model(rpn_config(cfg), 5)
    assert model.rpn is not None and cfg.model.arch != "faster_rcnn"  # the detector's own config is untouched


def test_the_keys_that_do_not_apply_come_from_the_archs_declaration(monkeypatch):
    """config_checks derives the keys an arch ignores from what registries.ARCHS says it reads: declaring model.rpn
    for fast_rcnn makes an RPN key apply to it, with no list to keep by hand."""
    from dataclasses import replace

    from detkit import registries

    overrides = ["model.rpn.nms_thresh=0.6"]
    with pytest.raises(DetkitError, match=r"fast_rcnn: model.rpn.nms_thresh \(in the command line\)$"):
        load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml", overrides)
    fast = registries.ARCHS["fast_rcnn"]
    monkeypatch.setitem(registries.ARCHS, "fast_rcnn", replace(fast, reads=fast.reads + ("model.rpn",)))
    assert load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml", overrides).model.rpn.nms_thresh == 0.6
