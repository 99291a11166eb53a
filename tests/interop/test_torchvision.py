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
