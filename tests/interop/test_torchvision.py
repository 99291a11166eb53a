import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from detkit.interop.torchvision import from_torchvision, to_torchvision


def torchvision_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=256, max_size=320,
                                    box_score_thresh=0.0)
    with torch.no_grad():  # random init scores everything alike; spread the heads so detections differ
        for p in model.roi_heads.box_predictor.parameters():
            p.normal_(0, 0.5)
        for p in model.rpn.head.parameters():
            p.normal_(0, 0.05)
    return model.eval()


@torch.no_grad()
def test_same_detections_as_torchvision_both_ways():
    tv = torchvision_model()
    images = [torch.rand(3, 240, 300, generator=torch.Generator().manual_seed(1))]
    expected = tv(images)[0]
    assert len(expected["boxes"]) >= 3
    ours = from_torchvision(tv).eval()
    got = ours(images)[0]
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=0)
    assert torch.equal(got["labels"], expected["labels"])
    back = to_torchvision(ours).eval()(images)[0]
    torch.testing.assert_close(back["boxes"], expected["boxes"], atol=1e-3, rtol=0)


def test_state_dict_alone_carries_over():
    tv = torchvision_model()
    ours = from_torchvision(tv.state_dict())
    assert ours.roi_heads.box_predictor.cls_score.out_features == 4
    torch.testing.assert_close(ours.rpn.head.conv.weight, tv.rpn.head.conv[0][0].weight)


@torch.no_grad()
def test_resnet18_fpn_with_its_own_anchors_carries_over_both_ways():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    tv = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=3, min_size=224,
                    max_size=256, rpn_anchor_generator=anchors, box_score_thresh=0.0)
    with torch.no_grad():
        for p in tv.roi_heads.box_predictor.parameters():
            p.normal_(0, 0.5)
    tv.eval()
    images = [torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(2))]
    expected = tv(images)[0]
    ours = from_torchvision(tv).eval()
    assert ours.backbone.body.layer1[0].conv1.weight.shape == (64, 64, 3, 3)  # basic blocks: ResNet-18
    torch.testing.assert_close(ours(images)[0]["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    back = to_torchvision(ours).eval()
    assert back.rpn.anchor_generator.sizes == anchors.sizes
    torch.testing.assert_close(back(images)[0]["scores"], expected["scores"], atol=1e-4, rtol=0)


def test_models_without_a_torchvision_counterpart_fail_in_one_line():
    import pytest

    from detkit.config import config_from_dict
    from detkit.errors import DetkitError
    from detkit.modeling.build import build_model

    c4 = build_model(config_from_dict({"model": {"backbone": {"name": "resnet18", "fpn": False},
                                                 "rpn": {"anchor_sizes": [[32, 64, 128]]}}}), num_classes=2)
    with pytest.raises(DetkitError, match="only a ResNet-FPN Faster R-CNN"):
        to_torchvision(c4)
    gn = build_model(config_from_dict({"model": {"backbone": {"name": "resnet18", "fpn": True, "norm": "gn"}}}),
                     num_classes=2)
    with pytest.raises(DetkitError, match="GroupNorm"):
        to_torchvision(gn)
    aligned = build_model(config_from_dict({"model": {"backbone": {"name": "resnet18", "fpn": True},
                                                      "roi_heads": {"aligned": True}}}), num_classes=2)
    with pytest.warns(UserWarning, match="aligned=True"):
        to_torchvision(aligned)
