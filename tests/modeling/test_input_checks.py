"""The Python API's targets and proposals are checked where they enter (issue #21 item 2): one DetkitError naming
the image index and the field; empty targets train; images that require grad get their gradient."""
import pytest
import torch

from detkit import build_model, load_config
from detkit.errors import DetkitError
from tests.modeling.test_build import CONFIGS
from tests.modeling.test_two_stage import tiny_model  # num_classes=2: labels 1..2

BOX = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
GOOD = {"boxes": BOX, "labels": torch.tensor([1])}


def fast_rcnn():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "fast_rcnn_r18_fpn.yaml", ["model.num_classes=2", "input.min_size=96",
                                                           "input.max_size=128",
                                                           "model.roi_heads.batch_size_per_image=16"])
    return build_model(cfg)


@pytest.mark.parametrize("second, message", [
    ({"boxes": [[10.0, 10.0, 50.0, 60.0]], "labels": torch.tensor([1])},
     r"target 1: boxes must be a float \(M, 4\) tensor, got a list"),
    ({"boxes": torch.tensor([10.0, 10.0, 50.0, 60.0]), "labels": torch.tensor([1])},
     r"target 1: boxes must have shape \(M, 4\), got \(4,\)"),
    ({"boxes": torch.tensor([[10, 10, 50, 60]]), "labels": torch.tensor([1])},
     r"target 1: boxes have dtype torch.int64"),
    ({"boxes": torch.tensor([[10.0, 10.0, float("nan"), 60.0]]), "labels": torch.tensor([1])},
     r"target 1: boxes: row 0 \[10.0, 10.0, nan, 60.0\] is not finite"),
    ({"boxes": torch.tensor([[10.0, 10.0, float("inf"), 60.0]]), "labels": torch.tensor([1])},
     r"target 1: boxes: row 0 .* is not finite"),
    ({"boxes": BOX, "labels": torch.tensor([1, 2])},  # more labels than boxes used to train on the first
     r"target 1: labels have shape \(2,\) but there are 1 boxes"),
    ({"boxes": BOX.repeat(2, 1), "labels": torch.tensor([1])},
     r"target 1: labels have shape \(1,\) but there are 2 boxes"),
    ({"boxes": BOX, "labels": torch.tensor([3])},  # above K = 2: a bare IndexError from cross-entropy before
     r"target 1: labels: label 3 of box 0 is outside 1\.\.2 \(the model has K = 2 classes\)"),
    ({"boxes": BOX, "labels": torch.tensor([0])}, r"target 1: labels: label 0 of box 0 is outside 1\.\.2"),
    ({"boxes": BOX, "labels": torch.tensor([-1])}, r"target 1: labels: label -1 of box 0 is outside"),
    ({"boxes": BOX, "labels": torch.tensor([1.0])}, r"target 1: labels have dtype torch.float32"),
    ({"boxes": BOX, "labels": torch.tensor([True])}, r"target 1: labels have dtype torch.bool"),
    ({"boxes": BOX, "labels": [1]}, r"target 1: labels must be an int64 \(M,\) tensor, got a list"),
    ({"boxes": BOX}, r"target 1 has no 'labels'"),
    ([BOX], r"target 1 must be a dict"),
])
def test_malformed_target_field_is_an_error_naming_image_and_field(second, message):
    model = tiny_model().train()
    with pytest.raises(DetkitError, match=message):
        model([torch.rand(3, 120, 150), torch.rand(3, 120, 150)], [GOOD, second])


def test_targets_must_be_one_dict_per_image():
    model = tiny_model().train()
    with pytest.raises(DetkitError, match="got 1 images and a dict, not a list of targets"):
        model([torch.rand(3, 120, 150)], GOOD)
    with pytest.raises(DetkitError, match="got 2 images and 1 targets"):
        model([torch.rand(3, 120, 150)] * 2, [GOOD])


def test_int32_labels_train_as_int64_and_empty_targets_keep_working():
    model = tiny_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    torch.manual_seed(3)
    losses = model([torch.rand(3, 120, 150)] * 2, [{"boxes": BOX, "labels": torch.tensor([2], dtype=torch.int32)},
                                                   empty])
    assert all(torch.isfinite(v) for v in losses.values())
    only_empty = model([torch.rand(3, 120, 150)], [empty])
    assert only_empty["loss_box_reg"].item() == 0.0 and only_empty["loss_rpn_box_reg"].item() == 0.0


@pytest.mark.parametrize("proposals, message", [
    (torch.tensor([[0.0, 0.0, float("nan"), 40.0]]), r"image 1: proposals: row 0 .* is not finite"),
    (torch.tensor([0.0, 0.0, 30.0, 40.0]), r"image 1: proposals must have shape \(P, 4\), got \(4,\)"),
    (torch.tensor([[0, 0, 30, 40]]), r"image 1: proposals have dtype torch.int64"),
    ([[0.0, 0.0, 30.0, 40.0]], r"image 1: proposals must be a float \(P, 4\) tensor, got a list"),
])
def test_malformed_proposals_argument_is_an_error_naming_the_image(proposals, message):
    model = fast_rcnn().eval()
    good = torch.tensor([[0.0, 0.0, 30.0, 40.0]])
    with pytest.raises(DetkitError, match=message):
        model([torch.rand(3, 90, 120)] * 2, proposals=[good, proposals])
    train_message = message.replace("image 1: proposals", "target 1: proposals")
    with pytest.raises(DetkitError, match=train_message):
        model.train()([torch.rand(3, 90, 120)] * 2, [{**GOOD, "proposals": good}, {**GOOD, "proposals": proposals}])


def test_missing_proposals_say_where_to_pass_them():
    model = fast_rcnn()
    with pytest.raises(DetkitError, match=r"pass \(P, 4\) proposals for each of the 1 images in the proposals="):
        model.eval()([torch.rand(3, 90, 120)])
    with pytest.raises(DetkitError, match=r"in targets\[i\]\['proposals'\]"):
        model.train()([torch.rand(3, 90, 120)], [GOOD])


@pytest.mark.parametrize("build", [tiny_model, fast_rcnn])
def test_image_that_requires_grad_trains_and_evaluates_and_its_gradient_arrives(build):
    model = build().train()
    image = torch.rand(3, 90, 120, requires_grad=True)
    target = {**GOOD}
    kwargs = {}
    if model.needs_proposals:
        target["proposals"] = torch.tensor([[0.0, 0.0, 50.0, 50.0], [12.0, 8.0, 58.0, 72.0]])
        kwargs["proposals"] = [target["proposals"]]
    losses = model([image], [target])
    sum(losses.values()).backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0  # as torchvision: the gradient reaches it
    detections = model.eval()([image], **kwargs)
    assert detections[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("train", [True, False])
def test_image_with_nan_or_inf_pixels_is_an_error_naming_it(train):
    model = tiny_model().train(train)
    bad = torch.rand(3, 90, 120)
    bad[0, 5, 5], bad[1, 7, 9] = float("nan"), float("inf")
    with pytest.raises(DetkitError, match=r"image 1 has 2 NaN or infinite pixel value\(s\)"):
        model([torch.rand(3, 90, 120), bad], [GOOD, GOOD] if train else None)
