"""R-CNN's class-specific bounding-box regression (Girshick et al. 2014, appendix C).

R proposals with pool5 features (R, D5), x1, y1, x2, y2 boxes in image pixels, each matched to the ground-truth box
it overlaps most. One ridge regression per class (scikit-learn Ridge, lambda = 1000) maps the (rescaled) pool5
features of that class's proposals with IoU > 0.6 to the BoxCoder deltas that move each proposal onto its box.
"""
from __future__ import annotations

import numpy as np
import torch

from detkit.box_ops import BoxCoder, box_iou


def fit_box_regressor(features: np.ndarray, proposals: np.ndarray, gt_boxes: np.ndarray, box_coder: BoxCoder, *,
                      alpha: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Weight (4, D5) and bias (4,) of one class's ridge regressor from proposals (R, 4) to their gt boxes (R, 4)."""
    from sklearn.linear_model import Ridge

    targets = box_coder.encode(torch.as_tensor(gt_boxes, dtype=torch.float32),
                               torch.as_tensor(proposals, dtype=torch.float32)).numpy()
    ridge = Ridge(alpha=alpha, fit_intercept=True).fit(np.asarray(features, dtype=np.float64), targets)
    return ridge.coef_.astype(np.float32), ridge.intercept_.astype(np.float32)


def apply_box_regressor(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, proposals: np.ndarray,
                        box_coder: BoxCoder) -> np.ndarray:
    """Regressed boxes (R, 4) for proposals (R, 4) with features (R, D5)."""
    deltas = torch.as_tensor(np.asarray(features, dtype=np.float32) @ weight.T + bias)
    return box_coder.decode(deltas, torch.as_tensor(proposals, dtype=torch.float32)).numpy()


def mean_box_error(boxes: np.ndarray, gt_boxes: np.ndarray) -> float:
    """Mean of 1 - IoU between each box (R, 4) and its ground-truth box (R, 4); 0 for no boxes."""
    if len(boxes) == 0:
        return 0.0
    iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(gt_boxes, dtype=torch.float32))
    return float((1.0 - iou.diagonal()).mean())
