"""A seeded tiny Faster R-CNN's eval detections and train losses, pinned before the two-stage refactor.

Run as a script to (re)write tests/modeling/data/pinned_faster_rcnn.pt; tests/modeling/test_pinned.py compares.
Train images are already at the target size (128 x 128 with min_size = max_size = 128), so the pin holds across
the move of training resize from the data pipeline into the model (issue #10 item 5), which changed the rule
only for images that are not at the target size. Eval images (100 x 140) go through the model's resize.
"""
from __future__ import annotations

from pathlib import Path

import torch

from detkit.config import config_from_dict
from detkit.modeling.build import build_model

PIN_FILE = Path(__file__).parent / "data" / "pinned_faster_rcnn.pt"


def pinned_outputs() -> dict[str, object]:
    """Detections and losses of the seeded model (float32, CPU)."""
    cfg = config_from_dict({
        "model": {"num_classes": 2, "backbone": {"name": "resnet18", "fpn": True},
                  "rpn": {"anchor_sizes": [[16], [32], [64], [128], [256]], "pre_nms_top_n_train": 200,
                          "post_nms_top_n_train": 100, "pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
                  "roi_heads": {"batch_size_per_image": 32, "representation_size": 64}},
        "input": {"min_size": 128, "max_size": 128}})
    torch.manual_seed(0)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(1)
    eval_images = [torch.rand(3, 100, 140, generator=gen), torch.rand(3, 120, 90, generator=gen)]
    train_images = [torch.rand(3, 128, 128, generator=gen), torch.rand(3, 128, 128, generator=gen)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [50.0, 40.0, 120.0, 100.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[30.0, 20.0, 100.0, 60.0]]), "labels": torch.tensor([2])}]
    model.eval()
    with torch.no_grad():
        detections = model(eval_images)
    model.train()
    torch.manual_seed(2)
    losses = model(train_images, targets)
    return {"detections": [{k: v.detach() for k, v in d.items()} for d in detections],
            "losses": {k: v.detach() for k, v in losses.items()}}


if __name__ == "__main__":
    PIN_FILE.parent.mkdir(parents=True, exist_ok=True)
    out = pinned_outputs()
    torch.save(out, PIN_FILE)
    print({k: v.item() for k, v in out["losses"].items()}, [len(d["boxes"]) for d in out["detections"]])
