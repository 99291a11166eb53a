"""Backbones by name: outputs, torchvision key compatibility, local weights, norms and frozen stages."""

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.vgg import cfgs, make_layers
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.errors import DetkitError
from detkit.modeling.backbones import build_backbone, build_res5_head, build_vgg_fc_head, load_torchvision_weights

FPN_STRIDES = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def resnet18_file(tmp_path):
    """A torchvision resnet18 classification state_dict saved to disk, and the model it came from."""
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.parametrize(
    "name, kwargs, channels, strides",
    [
        ("vgg16", {}, 512, {"0": 16}),
        ("resnet18", {}, 256, {"0": 16}),
        ("resnet18", {"fpn": True}, 256, FPN_STRIDES),
        (
            "resnet18",
            {"fpn": True, "fpn_channels": 64, "returned_layers": (2, 3, 4)},
            64,
            {"0": 8, "1": 16, "2": 32, "pool": 64},
        ),
    ],
)
def test_outputs_match_declared_names_strides_and_channels(name, kwargs, channels, strides):
    backbone = build_backbone(name, **kwargs)
    features = backbone(torch.rand(1, 3, 64, 96))
    assert backbone.out_channels == channels and backbone.strides == strides
    assert list(features) == list(strides)
    for key, stride in strides.items():
        assert features[key].shape == (1, channels, math.ceil(64 / stride), math.ceil(96 / stride))


def test_fpn_keys_equal_torchvision_faster_rcnn_backbone():
    ours_bn = build_backbone("resnet50", fpn=True, norm="bn").state_dict()
    theirs_bn = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.state_dict()
    assert list(ours_bn) == list(theirs_bn)
    ours_frozen = build_backbone("resnet50", fpn=True, norm="frozen_bn").state_dict()
    theirs_frozen = resnet_fpn_backbone(backbone_name="resnet50", weights=None).state_dict()
    assert list(ours_frozen) == list(theirs_frozen)


def test_fpn_loads_torchvision_backbone_state_and_computes_the_same():
    theirs = resnet_fpn_backbone(backbone_name="resnet18", weights=None).eval()
    ours = build_backbone("resnet18", fpn=True, norm="frozen_bn").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x).values(), theirs(x).values()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fpn", [False, True])
def test_resnet_weights_round_trip(resnet18_file, fpn):
    path, model = resnet18_file
    backbone = build_backbone("resnet18", fpn=fpn, weights=path)
    expected = model.state_dict()
    loaded = backbone.body.state_dict()
    assert {"conv1.weight", "layer3.1.bn2.running_var"} <= set(loaded)
    for key, value in loaded.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_frozen_bn_backbone_takes_batchnorm_statistics(resnet18_file):
    path, model = resnet18_file
    model.bn1.running_mean.fill_(0.5)
    torch.save(model.state_dict(), path)
    backbone = build_backbone("resnet18", norm="frozen_bn", weights=path)
    assert torch.equal(backbone.body.bn1.running_mean, torch.full((64,), 0.5))


def test_res5_head_takes_layer4_weights_and_pools_rois(resnet18_file):
    path, model = resnet18_file
    head = build_res5_head("resnet18", weights=path)
    for key, value in head.layer4.state_dict().items():
        torch.testing.assert_close(value, model.layer4.state_dict()[key], rtol=0, atol=0)
    assert head.out_channels == 512
    assert head(torch.rand(3, 256, 14, 14)).shape == (3, 512)
    assert build_res5_head("resnet50").out_channels == 2048


def test_vgg_weights_round_trip(tmp_path):
    features = make_layers(cfgs["D"], batch_norm=True)
    path = tmp_path / "vgg16_bn_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    backbone = build_backbone("vgg16_bn", weights=path)
    for key, value in backbone.body.state_dict().items():
        torch.testing.assert_close(value, features.state_dict()[key], rtol=0, atol=0)


def test_vgg_fc_head_maps_pooled_rois_to_4096():
    head = build_vgg_fc_head().eval()
    assert head.out_channels == 4096
    assert head(torch.rand(2, 512, 7, 7)).shape == (2, 4096)


def test_wrong_keys_name_the_file_and_the_keys(tmp_path):
    path = tmp_path / "vgg_features.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    with pytest.raises(DetkitError) as error:
        build_backbone("resnet18", weights=path)
    message = str(error.value)
    assert str(path) in message and "conv1.weight" in message and "features.0.weight" in message


def test_wrong_shape_names_the_key(resnet18_file):
    path, model = resnet18_file
    state = model.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, path)
    with pytest.raises(DetkitError, match=r"layer1\.0\.conv1\.weight"):
        build_backbone("resnet18", weights=path)


def test_missing_or_unreadable_file_names_the_file(tmp_path):
    with pytest.raises(DetkitError, match=r"nowhere\.pth does not exist"):
        build_backbone("resnet18", weights=tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(DetkitError, match=r"junk\.pth could not be read"):
        build_res5_head("resnet18", weights=junk)


def test_loader_accepts_named_modules(resnet18_file):
    path, model = resnet18_file
    modules = {"trunk": build_backbone("resnet18"), "head": build_res5_head("resnet18")}
    load_torchvision_weights(modules, path, {"conv1.": "trunk.body.conv1.", "layer4.": "head.layer4."})
    assert torch.equal(modules["trunk"].body.conv1.weight, model.conv1.weight)
    assert torch.equal(modules["head"].layer4[1].conv2.weight, model.layer4[1].conv2.weight)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(DetkitError, match="resnet50") as error:
        build_backbone("resnet152")
    assert "vgg16_bn" in str(error.value)
    with pytest.raises(DetkitError, match="frozen_bn"):
        build_backbone("resnet18", norm="syncbn")
    with pytest.raises(DetkitError, match="ResNet"):
        build_backbone("vgg16", fpn=True)


@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn"])
def test_norm_choice_sets_the_layer_type(name):
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_backbone(name).modules())
    frozen = build_backbone(name, norm="frozen_bn")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    gn = build_backbone(name, norm="gn")
    group_norms = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert group_norms and all(m.num_groups == 32 for m in group_norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())


def test_trainable_layers_freeze_the_early_stages():
    fpn = build_backbone("resnet18", fpn=True, trainable_layers=3)
    frozen = {n for n, p in fpn.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in fpn.named_parameters() if n.startswith(("body.conv1", "body.bn1", "body.layer1"))}
    c4 = build_backbone("resnet18", trainable_layers=0)
    assert not any(p.requires_grad for p in c4.parameters())
    vgg = build_backbone("vgg16", trainable_layers=3)
    trainable_convs = [m.weight.requires_grad for m in vgg.body if isinstance(m, nn.Conv2d)]
    assert trainable_convs == [False] * 4 + [True] * 9
    with pytest.raises(DetkitError, match="trainable_layers"):
        build_backbone("resnet18", trainable_layers=6)
