"""The two-stage forward checks its input at entry (issue #10 items 1, 2) and resizes in one place (item 5)."""
import pytest
import torch

from detkit import build_model
from detkit.config import config_from_dict
from detkit.errors import DetkitError
from detkit.modeling.preprocess import ImagePreprocessor

TINY = {"model": {"num_classes": 2, "backbone": {"name": "resnet18", "fpn": True},
                  "rpn": {"anchor_sizes": [[16], [32], [64], [128], [256]], "pre_nms_top_n_train": 100,
                          "post_nms_top_n_train": 50, "pre_nms_top_n_test": 50, "post_nms_top_n_test": 20},
                  "roi_heads": {"batch_size_per_image": 16, "representation_size": 32}},
        "input": {"min_size": 120, "max_size": 160}}


def tiny_model():
    torch.manual_seed(0)
    return build_model(config_from_dict(TINY))


def bn_statistics(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_float_image_is_an_error_before_anything_runs(dtype):
    model = tiny_model().train()
    before = bn_statistics(model)
    images = [torch.rand(3, 120, 150), (torch.rand(3, 120, 150) * 255).to(dtype)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}] * 2
    with pytest.raises(DetkitError, match=f"image 1 has dtype {dtype}"):
        model(images, targets)
    assert all(torch.equal(before[k], v) for k, v in bn_statistics(model).items())
    with pytest.raises(DetkitError, match=f"image 1 has dtype {dtype}"):
        model.eval()(images)


def test_box_outside_the_image_is_an_error_naming_image_and_box():
    model = tiny_model().train()
    images = [torch.rand(3, 120, 150), torch.rand(3, 120, 150)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 40.0], [1000.0, 1000.0, 1050.0, 1070.0]]),
                "labels": torch.tensor([1, 2])}]
    with pytest.raises(DetkitError, match=r"target 1: box 1 \[1000.0, 1000.0, 1050.0, 1070.0\] has no area inside "
                                          r"the image \(150x120"):
        model(images, targets)


def test_box_partly_outside_is_clipped_and_losses_are_finite():
    model = tiny_model().train()
    image = torch.rand(3, 120, 150)
    torch.manual_seed(1)
    clipped = model([image], [{"boxes": torch.tensor([[100.0, 80.0, 400.0, 300.0]]), "labels": torch.tensor([1])}])
    torch.manual_seed(1)
    inside = model([image], [{"boxes": torch.tensor([[100.0, 80.0, 150.0, 120.0]]), "labels": torch.tensor([1])}])
    for key, value in clipped.items():
        assert torch.isfinite(value), key
        torch.testing.assert_close(value, inside[key], msg=key)  # the same as the box clipped by hand
    assert clipped["loss_rpn_box_reg"] < 1.0


@pytest.mark.parametrize("train", [True, False])
def test_train_and_eval_resize_alike(train):
    pre = ImagePreprocessor(800, 1333, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)).train(train)
    boxes = torch.tensor([[100.0, 200.0, 1333.0, 1000.0]])
    proposals = torch.tensor([[0.0, 0.0, 666.5, 500.0]])
    batch, targets, props = pre([torch.rand(3, 1000, 1333)], [{"boxes": boxes, "proposals": proposals}],
                                [proposals])
    assert batch.image_sizes == [(800, 1066)]
    scale = torch.tensor([1066 / 1333, 0.8, 1066 / 1333, 0.8])
    torch.testing.assert_close(targets[0]["boxes"], boxes * scale)
    torch.testing.assert_close(targets[0]["proposals"], proposals * scale)
    torch.testing.assert_close(props[0], proposals * scale)


def test_multi_scale_training_draws_min_size_reproducibly():
    pre = ImagePreprocessor((96, 128, 160), 1000, pixel_mean=(0.0,) * 3, pixel_std=(1.0,) * 3).train()
    image = torch.rand(3, 100, 120)

    def sizes(seed):
        torch.manual_seed(seed)
        return [pre([image])[0].image_sizes[0][0] for _ in range(12)]

    assert sizes(0) == sizes(0)
    assert set(sizes(0)) == {96, 128, 160}
    assert pre.eval()([image])[0].image_sizes == [(160, 192)]
