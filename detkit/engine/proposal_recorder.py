"""The RPN's proposals of an ordinary evaluation pass, recorded by forward hooks (no second pass over the images).

N images per forward. Proposals (P_i, 4) come per image, x1, y1, x2, y2 float32 in input pixels (the pixels of the
image handed to the detector), best objectness first, at most the RPN's post_nms_top_n["testing"]
(model.rpn.post_nms_top_n_test); the RPN itself gives them in resized-batch pixels, so they are scaled back with
the same per-axis factors as the detections (ImagePreprocessor.postprocess) and as tools/propose.py --from-rpn.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from detkit.modeling.preprocess import to_input_pixels


def find_rpn_detector(model: nn.Module) -> nn.Module | None:
    """The detector with an RPN inside wrappers that keep it as ``.module`` (AutocastDetector, DDP), or None."""
    while not hasattr(model, "rpn") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model if getattr(model, "rpn", None) is not None else None


class ProposalRecorder:
    """Context manager: while active, every forward of ``model``'s detector records its RPN's proposals.

    A model without an RPN (Fast R-CNN, R-CNN) records nothing (``active`` is False). ``take()`` hands back the
    proposals recorded since the last call, one (P_i, 4) CPU tensor per image, in input order.
    """

    def __init__(self, model: nn.Module) -> None:
        self.detector = find_rpn_detector(model)
        self._original_sizes: list[tuple[int, int]] = []
        self._recorded: list[Tensor] = []
        self._handles: list[Any] = []

    @property
    def active(self) -> bool:
        """True when the model has an RPN whose proposals are recorded."""
        return self.detector is not None

    def __enter__(self) -> ProposalRecorder:
        if self.detector is not None:
            self._handles = [self.detector.register_forward_pre_hook(self._image_sizes, with_kwargs=True),
                             self.detector.rpn.register_forward_hook(self._proposals, with_kwargs=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> list[Tensor]:
        """The proposals recorded since the last take(), one tensor per image."""
        recorded, self._recorded = self._recorded, []
        return recorded

    def _image_sizes(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        images = args[0] if args else kwargs["images"]
        self._original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]

    def _proposals(self, module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        image_sizes = args[1] if len(args) > 1 else kwargs["image_sizes"]
        for boxes, size, original in zip(output[0], image_sizes, self._original_sizes):
            self._recorded.append(to_input_pixels(boxes.detach().float(), size, original).cpu())
