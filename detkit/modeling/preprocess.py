"""Input side of every detector: check, normalise, resize, batch; and map detections back to the input images.

The one place images are resized, for training and test alike (the data pipeline only flips and jitters).
Images come in as a list of (3, H, W) float tensors in [0, 1] of any size (torchvision's contract); targets hold
boxes (M, 4) x1, y1, x2, y2 in input pixels, labels (M,) and, for detectors without a proposal generator,
proposals (P, 4) in input pixels; eval-time proposals come as a list of (P_i, 4). Everything with boxes is scaled
by the image's own resize factors. Detections go out in input pixels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.errors import DetkitError
from detkit.structures import ImageList

BOX_KEYS = ("boxes", "proposals")  # target entries in image pixels, resized with the image


def check_images(images: Sequence[Tensor]) -> None:
    """Raises DetkitError naming the image when one is not a (3, H, W) floating-point tensor with H, W >= 1."""
    if len(images) == 0:
        raise DetkitError("the detector was given no images")
    for i, im in enumerate(images):
        if not torch.is_tensor(im) or im.dim() != 3 or im.shape[0] != 3:
            shape = tuple(im.shape) if torch.is_tensor(im) else type(im).__name__
            hint = {1: ": repeat a grayscale image with image.expand(3, -1, -1)",
                    4: ": drop the alpha channel with image[:3]"}.get(im.shape[0] if torch.is_tensor(im) and
                                                                      im.dim() == 3 else 0, "")
            raise DetkitError(f"image {i} must be a (3, H, W) RGB tensor, got {shape}{hint}")
        if not im.is_floating_point():
            raise DetkitError(f"image {i} has dtype {im.dtype}; detectors take float images in [0, 1] "
                              f"(torchvision's contract): convert with image.float() / 255")
        if im.numel() == 0:
            raise DetkitError(f"image {i} is empty: {im.shape[-1]}x{im.shape[-2]} pixels (W x H)")


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[float, tuple[int, int]]:
    """Scale = min(min_size / shorter side, max_size / longer side) and the (h, w) it gives, as torchvision (floor)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return scale, (max(1, int(height * scale)), max(1, int(width * scale)))


class ImagePreprocessor(nn.Module):
    """Normalises, resizes the shorter side to min_size (longer side at most max_size) and pads into a batch.

    Training draws min_size from ``min_size`` (a list: one per image, uniformly, from torch's global generator,
    which seeds and checkpoints make reproducible); test uses ``test_min_size`` (default: the last min_size).
    """

    def __init__(self, min_size: int | Sequence[int], max_size: int, *, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], size_divisible: int = 32, test_min_size: int | None = None) -> None:
        super().__init__()
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.test_min_size = test_min_size or self.min_sizes[-1]
        self.size_divisible = size_divisible
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: list[Tensor] | None = None
                ) -> tuple[ImageList, list[dict[str, Tensor]] | None, list[Tensor] | None]:
        """The padded batch, and targets and proposals with boxes in batch pixels."""
        check_images(images)
        out_images, out_targets, out_proposals = [], [], []
        for i, im in enumerate(images):
            im = (im - self.pixel_mean.to(im.dtype)) / self.pixel_std.to(im.dtype)
            im, (sy, sx) = self.resize(im)
            out_images.append(im)
            factors = scale_vector(sx, sy, im.device)
            scaled = torch.jit.is_tracing() or (sy, sx) != (1.0, 1.0)  # a traced graph scales at every size
            if targets is not None:
                target = dict(targets[i])
                for key in BOX_KEYS:
                    if key in target and scaled:
                        target[key] = target[key] * factors
                out_targets.append(target)
            if proposals is not None:
                out_proposals.append(proposals[i] * factors if scaled else proposals[i])
        return (ImageList.from_tensors(out_images, self.size_divisible), out_targets if targets is not None else None,
                out_proposals if proposals is not None else None)

    def _target_min_size(self) -> int:
        if not self.training:
            return self.test_min_size
        if len(self.min_sizes) == 1:
            return self.min_sizes[0]
        return self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]

    def resize(self, image: Tensor) -> tuple[Tensor, tuple[float, float]]:
        """The resized image and the (y, x) scale factors (bilinear; an image at its target size is kept as is)."""
        h, w = image.shape[-2:]
        if torch.jit.is_tracing():
            return self._resize_traced(image)
        scale, size = resized_size(h, w, self._target_min_size(), self.max_size)
        if size == (h, w):
            return image, (1.0, 1.0)
        if min(int(h * scale), int(w * scale)) >= 1:
            resized = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                                    align_corners=False)[0]
        else:  # an extreme aspect ratio (10000 x 20): the short side would round to 0 pixels; it keeps 1
            resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return resized, (resized.shape[-2] / h, resized.shape[-1] / w)

    def _resize_traced(self, image: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """resize() for ONNX export: the size from the image's traced shape, in float64 as resized_size's Python
        floats, so the graph resizes every image size exactly as eager mode does (an image already at its target
        size is resampled at scale 1, which bilinear interpolation leaves unchanged)."""
        hw = torch._shape_as_tensor(image)[-2:]
        # min(min_size / shorter side, max_size / longer side) in float64 on 1-d tensors: the exporter would make a
        # 0-dim float64 (a "scalar") float32, which floors 300 * (192 / 300) to 191
        limits = torch.tensor([float(self._target_min_size()), float(self.max_size)], dtype=torch.float64)
        scale = (limits / hw.sort().values.double()).min(0, keepdim=True).values
        size = torch.floor(hw.double() * scale).clamp(min=1).long()
        resized = F.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]
        return resized, (size[0] / hw[0], size[1] / hw[1])

    @staticmethod
    def postprocess(detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections with boxes scaled from resized-image pixels back to input pixels."""
        for det, size, original in zip(detections, image_sizes, original_sizes):
            det["boxes"] = to_input_pixels(det["boxes"], size, original)
        return detections


def to_input_pixels(boxes: Tensor, image_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Boxes (K, 4) x1, y1, x2, y2 in the pixels of the resized image (h, w) scaled back to the input image's (h, w)."""
    (h, w), (oh, ow) = image_size, original_size
    return boxes * scale_vector(ow / w, oh / h, boxes.device)


def scale_vector(sx: float | Tensor, sy: float | Tensor, device: torch.device) -> Tensor:
    """(sx, sy, sx, sy) float32, from Python numbers or (while tracing for ONNX) from 0-dim tensors."""
    if torch.jit.is_tracing():
        return torch.stack([torch.as_tensor(v).float() for v in (sx, sy, sx, sy)]).to(device)
    return torch.tensor([sx, sy, sx, sy], device=device)
