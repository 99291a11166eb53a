"""The dataset browser: a split's ground truth drawn on every image (optionally after the training augmentation and
the model's resize, or with a proposal store's boxes), one file per image plus a contact sheet.

Boxes are x1, y1, x2, y2 in absolute pixels of the image drawn (original, or augmented and resized). Ground truth is
drawn in its class colour (detkit.visualize.class_color) and captioned with the class name ("ignored" for a
difficult / crowd box); proposals in thin grey, the store's best `max_proposals` first.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes
from detkit.progress import progress_bar

from detkit.errors import DetkitError
from detkit.visualize import class_color, draw_grid, save_image, to_uint8

SHEET_IMAGES = 48  # images on the contact sheet
THUMB_SIDE = 192  # longest side of a contact-sheet tile, pixels


def browse_split(dataset: Any, out_dir: str | Path, *, resize: tuple[int, int] | None = None, limit: int | None = None,
                 proposals: bool = False, max_proposals: int = 50, progress: bool = True) -> dict[str, Any]:
    """Draw each image of `dataset` (a detkit dataset; its transforms, if any, are applied with the image's index as
    seed) into <out_dir>/images/ and the first SHEET_IMAGES into <out_dir>/contact_sheet.png.

    resize: (min_size, max_size) of the model's preprocessor, applied after the transforms (None: original size);
    proposals: draw target["proposals"] (the dataset must carry a store). Returns {"images", "boxes": Counter per
    class, "sheet": path}. Raises DetkitError for limit < 1 or proposals without a store.
    """
    from detkit.modeling.preprocess import resized_size
    from detkit.report.images import caption_font

    if limit is not None and limit < 1:
        raise DetkitError(f"--limit must be at least 1, got {limit}.")
    if proposals and getattr(dataset, "proposals", None) is None:
        raise DetkitError("proposals were asked for but the dataset has no proposal store.")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    tiles, boxes_per_class = [], Counter()
    for index in progress_bar(range(count), desc="browse", disable=not progress):
        image, target = dataset.get(index, seed=index)
        boxes = target["boxes"].float()
        props = target.get("proposals", torch.zeros(0, 4))[:max_proposals].float() if proposals else None
        if resize is not None:
            scale, size = resized_size(image.shape[-2], image.shape[-1], *resize)
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            boxes = boxes * scale
            props = props * scale if props is not None else None
        canvas = to_uint8(image)
        canvas = canvas.expand(3, -1, -1).contiguous() if canvas.shape[0] == 1 else canvas
        side = max(canvas.shape[1:])
        if props is not None and len(props):
            canvas = draw_bounding_boxes(canvas, props, colors=(160, 160, 160), width=1)
        labels, ignore = target["labels"].tolist(), target["ignore"].tolist()
        names = [dataset.classes[label - 1] + (" ignored" if ign else "") for label, ign in zip(labels, ignore)]
        boxes_per_class.update(dataset.classes[label - 1] for label in labels)
        if len(boxes):
            canvas = draw_bounding_boxes(canvas, boxes, labels=names, colors=[class_color(lb) for lb in labels],
                                         width=max(2, side // 250), font=caption_font(),
                                         font_size=max(10, side // 40))
        save_image(canvas, out / "images" / f"{index:05d}_{target['image_id']}.jpg")
        if len(tiles) < SHEET_IMAGES:
            tiles.append(_thumbnail(canvas))
    if not tiles:
        raise DetkitError("the split holds no images to draw.")
    sheet = out / "contact_sheet.png"
    save_image(draw_grid(tiles, nrow=min(8, len(tiles))), sheet)
    return {"images": count, "boxes": boxes_per_class, "sheet": sheet}


def _thumbnail(image: torch.Tensor) -> torch.Tensor:
    scale = THUMB_SIDE / max(image.shape[1:])
    size = (max(1, math.floor(image.shape[1] * scale)), max(1, math.floor(image.shape[2] * scale)))
    return F.interpolate(image[None].float(), size=size, mode="area")[0].round().clamp(0, 255).to(torch.uint8)


def browse_config(cfg: Any, split: str, out_dir: str | Path, *, augment: bool = False, proposals: bool = False,
                  limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """browse_split over a config's data.<split> (the edge: reads data.*, input.* and proposals keys).

    augment: the training transforms (input.flip_prob, input.color_jitter) and the model's training resize
    (input.min_size's smallest value, input.max_size); proposals: the boxes in data.<split>.proposals. Raises
    DetkitError for an unknown split or a split without a proposal store when proposals are asked for.
    """
    from detkit.data import build_dataset
    from detkit.data.transforms import build_transforms

    if split not in ("train", "test"):
        raise DetkitError(f"--split must be train or test, got {split!r}.")
    d = getattr(cfg.data, split)
    transforms = build_transforms(train=True, flip_prob=cfg.input.flip_prob,
                                  color_jitter=cfg.input.color_jitter) if augment else None
    dataset = build_dataset(d.format, d.root, d.split, d.ann_file, train=split == "train", transforms=transforms,
                            skip_corrupt=cfg.data.skip_corrupt, demo_cache=cfg.data.demo_cache)
    if proposals:
        if not d.proposals:
            raise DetkitError(f"--proposals needs a proposal store: set data.{split}.proposals (tools/propose.py "
                              "fills it)")
        from detkit.data.proposals import ProposalStore

        if not Path(d.proposals).is_dir():
            raise DetkitError(f"data.{split}.proposals {d.proposals} does not exist: run tools/propose.py first")
        dataset.proposals = ProposalStore(d.proposals)
    resize = None
    if augment:
        min_size = cfg.input.min_size if isinstance(cfg.input.min_size, int) else min(cfg.input.min_size)
        resize = (int(min_size), int(cfg.input.max_size))
    return browse_split(dataset, out_dir, resize=resize, limit=limit, proposals=proposals, progress=progress)
