"""The only door to NMS and RoI pooling: one face per op, Triton kernels or torchvision.ops behind it."""
from detkit.ops.dispatch import get_backend, set_backend
from detkit.ops.multilevel import multi_level_roi_align
from detkit.ops.nms import batched_nms, nms
from detkit.ops.roi_align import roi_align
from detkit.ops.roi_pool import roi_pool

__all__ = ["nms", "batched_nms", "roi_align", "roi_pool", "multi_level_roi_align", "set_backend", "get_backend"]
