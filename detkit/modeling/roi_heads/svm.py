"""R-CNN's predictor: a K + 1-way softmax for fine-tuning, then per-class linear SVMs and ridge box regressors.

R regions, K foreground classes (labels 1..K, 0 = background). fc7 features (R, D) score as
``svm_weight @ (fc7 * svm_feature_scale) + svm_bias`` (K margins, §2.3); pool5 features (R, D5) give class-specific
deltas ``reg_weight[k] @ (pool5 * reg_feature_scale) + reg_bias[k]`` in detkit.box_ops.BoxCoder's units (§C).
The SVM and regressor tensors are buffers, so they travel in the state_dict (model_final.pth) with the CNN; they
are fitted outside SGD (detkit.engine.rcnn_schedule) and set with ``set_svms`` / ``set_regressors``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


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
