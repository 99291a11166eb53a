"""R-CNN's predictor: a K + 1-way softmax for fine-tuning, then per-class linear SVMs and ridge box regressors.

R regions, K foreground classes (labels 1..K, 0 = background). fc7 features (R, D) score as
``svm_weight @ (fc7 * svm_feature_scale) + svm_bias`` (K margins, §2.3); pool5 features (R, D5) give class-specific
deltas ``reg_weight[k] @ (pool5 * reg_feature_scale) + reg_bias[k]`` in detkit.box_ops.BoxCoder's units (§C).
The SVM and regressor tensors are buffers, so they travel in the state_dict (model_final.pth) with the CNN; they
are fitted outside SGD (R-CNN's recipe stages) and set with ``set_svms`` / ``set_regressors``. Its box features
are the region CNN's pair (fc7, pool5); the interface is detkit.modeling.roi_heads.predictors'. Test time (§2.2):
margins above score_thresh, class-specific regression, clipping, per-class NMS.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.box_ops import BoxCoder, clip_boxes_to_image, remove_small_boxes
from detkit.ranks import global_mean_count
from detkit.ops import batched_nms


class SVMPredictor(nn.Module):
    """Fine-tuning classifier (softmax over K + 1) and the fitted SVMs and box regressors (buffers)."""

    def __init__(self, in_channels: int, pool5_channels: int, num_classes: int) -> None:
        super().__init__()
        k = num_classes - 1  # foreground classes
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.register_buffer("svm_weight", torch.zeros(k, in_channels))
        self.register_buffer("svm_bias", torch.zeros(k))
        self.register_buffer("svm_feature_scale", torch.ones(()))
        self.register_buffer("reg_weight", torch.zeros(k, 4, pool5_channels))
        self.register_buffer("reg_bias", torch.zeros(k, 4))
        self.register_buffer("reg_feature_scale", torch.ones(()))
        self.register_buffer("use_regression", torch.ones((), dtype=torch.bool))

    def forward(self, fc7: Tensor) -> Tensor:
        """Softmax logits (R, K + 1) of the fine-tuning classifier."""
        return self.cls_score(fc7)

    def class_logits(self, box_features: tuple[Tensor, Tensor]) -> Tensor:
        """The fine-tuning classifier's logits (R, K + 1) from (fc7, pool5)."""
        return self(box_features[0])

    def losses(self, box_features: tuple[Tensor, Tensor], labels: Tensor,
               regression_targets: Tensor | None = None) -> dict[str, Tensor]:
        """Fine-tuning's loss_classifier: cross-entropy summed over this process's R regions divided by
        global_mean_count(R), as fast_rcnn_losses (alone: cross_entropy's mean). No box loss: R-CNN's box
        regressors are fitted after SGD (regression_targets is unused)."""
        logits = self.class_logits(box_features).float()
        normalizer = global_mean_count(labels.new_tensor(labels.numel()))  # a collective: before any early return
        if labels.numel() == 0:
            return {"loss_classifier": logits.sum() * 0}
        return {"loss_classifier": F.cross_entropy(logits, labels, reduction="sum") / normalizer}

    def inference(self, box_features: tuple[Tensor, Tensor], proposals: list[Tensor],
                  image_sizes: list[tuple[int, int]], box_coder: BoxCoder, *, score_thresh: float,
                  nms_thresh: float, detections_per_img: int, min_box_size: float) -> list[dict[str, Tensor]]:
        """Per image: regressed, clipped boxes with SVM margins above score_thresh, per-class NMS, top margins."""
        fc7, pool5 = box_features
        return rcnn_inference(self.svm_scores(fc7), self.box_deltas(pool5), proposals, image_sizes, box_coder,
                              score_thresh=score_thresh, nms_thresh=nms_thresh,
                              detections_per_img=detections_per_img, min_box_size=min_box_size)

    def svm_scores(self, fc7: Tensor) -> Tensor:
        """SVM margins (R, K): column k - 1 scores class k."""
        return (fc7.float() * self.svm_feature_scale) @ self.svm_weight.t() + self.svm_bias

    def box_deltas(self, pool5: Tensor) -> Tensor:
        """Class-specific deltas (R, 4 K), zero when regression is off."""
        deltas = torch.einsum("rd,kcd->rkc", pool5.float() * self.reg_feature_scale, self.reg_weight) + self.reg_bias
        return deltas.flatten(1) * self.use_regression

    @torch.no_grad()
    def set_svms(self, weight: Tensor, bias: Tensor, feature_scale: float) -> None:
        """Installs the fitted SVMs: weight (K, D), bias (K,), the fc7 scale they were fitted on."""
        self.svm_weight.copy_(weight)
        self.svm_bias.copy_(bias)
        self.svm_feature_scale.fill_(feature_scale)

    @torch.no_grad()
    def set_regressors(self, weight: Tensor, bias: Tensor, feature_scale: float) -> None:
        """Installs the fitted ridge regressors: weight (K, 4, D5), bias (K, 4), the pool5 scale they were fitted on."""
        self.reg_weight.copy_(weight)
        self.reg_bias.copy_(bias)
        self.reg_feature_scale.fill_(feature_scale)


def rcnn_inference(scores: Tensor, box_deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                   box_coder: BoxCoder, *, score_thresh: float, nms_thresh: float, detections_per_img: int,
                   min_box_size: float) -> list[dict[str, Tensor]]:
    """Per image: regressed, clipped boxes with SVM margins (R, K) above score_thresh, per-class NMS, top scores."""
    num_fg = scores.shape[1]
    counts = [p.shape[0] for p in proposals]
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals).float()).view(-1, num_fg, 4)
    detections = []
    for i, (boxes, margins) in enumerate(zip(boxes_all.split(counts), scores.split(counts))):
        boxes = clip_boxes_to_image(boxes, image_sizes[i]).reshape(-1, 4)
        labels = torch.arange(1, num_fg + 1, device=scores.device).expand(margins.shape[0], -1).reshape(-1)
        margins = margins.reshape(-1)
        keep = torch.nonzero(margins > score_thresh).squeeze(1)
        keep = keep[remove_small_boxes(boxes[keep], min_box_size)]
        boxes, margins, labels = boxes[keep], margins[keep], labels[keep]
        keep = batched_nms(boxes, margins, labels, nms_thresh)[:detections_per_img]
        detections.append({"boxes": boxes[keep], "labels": labels[keep], "scores": margins[keep]})
    return detections
