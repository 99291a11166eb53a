"""Evaluators: COCO box AP/AR, Pascal VOC AP and proposal recall."""

from detkit.evaluation.coco import coco_stats, detections_to_coco, evaluate_coco, format_coco_table
from detkit.evaluation.recall import proposal_recall, rpn_recall_metrics
from detkit.evaluation.voc import evaluate_voc, voc_ap

__all__ = [
    "coco_stats",
    "detections_to_coco",
    "evaluate_coco",
    "evaluate_voc",
    "format_coco_table",
    "proposal_recall",
    "rpn_recall_metrics",
    "voc_ap",
]
