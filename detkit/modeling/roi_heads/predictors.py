"""Box predictors: each owns its scores, its training losses and its inference (the RoI heads only route to it).

R regions, K + 1 classes (0 = background); boxes x1, y1, x2, y2 in pixels of the resized batch image. The interface
(what RoIHeads calls, with the box head's output as ``box_features``):

    losses(box_features, labels (R,), regression_targets (R, 4))      -> dict of losses (loss_classifier, ...)
    inference(box_features, proposals, image_sizes, box_coder, *, score_thresh, nms_thresh, detections_per_img,
              min_box_size)                                           -> per image {boxes (D, 4), labels, scores}
    class_logits(box_features)                                        -> (R, K + 1) softmax logits

FastRCNNPredictor (softmax over K + 1, class-specific deltas) is Fast / Faster R-CNN's; R-CNN's SVM margins are
detkit.modeling.roi_heads.svm.SVMPredictor.
"""
from __future__ import annotations

from torch import Tensor, nn

from detkit.box_ops import BoxCoder
from detkit.modeling.roi_heads.fast_rcnn import fast_rcnn_inference, fast_rcnn_losses


class FastRCNNPredictor(nn.Module):
    """A linear classifier and a linear class-specific box regressor; softmax scores (Girshick 2015, §2.2)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K + 1) and box deltas (R, 4 (K + 1)) for features (R, D)."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def class_logits(self, box_features: Tensor) -> Tensor:
        """Class logits (R, K + 1)."""
        return self.cls_score(box_features.flatten(start_dim=1))

    def losses(self, box_features: Tensor, labels: Tensor, regression_targets: Tensor) -> dict[str, Tensor]:
        """loss_classifier and loss_box_reg (detkit.modeling.roi_heads.fast_rcnn.fast_rcnn_losses)."""
        class_logits, box_deltas = self(box_features)
        return fast_rcnn_losses(class_logits.float(), box_deltas.float(), labels, regression_targets)

    def inference(self, box_features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                  box_coder: BoxCoder, *, score_thresh: float, nms_thresh: float, detections_per_img: int,
                  min_box_size: float) -> list[dict[str, Tensor]]:
        """Softmax scores, decoded class-specific boxes, per-class NMS (fast_rcnn_inference)."""
        class_logits, box_deltas = self(box_features)
        return fast_rcnn_inference(class_logits.float(), box_deltas.float(), proposals, image_sizes, box_coder,
                                   score_thresh=score_thresh, nms_thresh=nms_thresh,
                                   detections_per_img=detections_per_img, min_box_size=min_box_size)
