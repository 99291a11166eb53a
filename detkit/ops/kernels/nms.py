"""Triton NMS: an IoU bitmask computed in parallel, then a keep-scan on the device with no host sync.

N boxes (x1, y1, x2, y2, absolute pixels), sorted by decreasing score (stable); W = ceil(N / 64) mask words
per row. mask[i, w] bit k is set when box i suppresses box 64 * w + k (IoU > threshold, later in the order,
same class). Batched NMS sorts boxes class-major (score order within a class), so the mask is block diagonal:
each row block only computes and scans the words up to the end of its class segment.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

WORD = 64  # bits per mask word: one int64, one row block of boxes
MAX_SPLIT = 64  # programs per row block in the mask kernel (columns interleaved between them)
MASK_WARPS = 16  # a [64, 64] IoU tile at 8 elements a thread: ~90-130 registers on sm_90, no spills (fp32)
SCAN_CHUNK = 128  # mask words OR-ed per step of the keep-scan: fewer dependent round trips per row block
SCAN_WARPS = 16  # the scan is one program; 512 threads hold its [64, SCAN_CHUNK] tile without spills


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _load_boxes(boxes_ptr, idx, mask):
    """Corners and area of boxes[idx]; masked lanes read a unit box (area 1, so no division by zero)."""
    x1 = tl.load(boxes_ptr + idx * 4 + 0, mask=mask, other=0)
    y1 = tl.load(boxes_ptr + idx * 4 + 1, mask=mask, other=0)
    x2 = tl.load(boxes_ptr + idx * 4 + 2, mask=mask, other=1)
    y2 = tl.load(boxes_ptr + idx * 4 + 3, mask=mask, other=1)
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


@triton.jit
def _iou_mask_kernel(
    boxes_ptr, labels_ptr, seg_end_ptr, mask_ptr, n, n_words, iou_threshold, HAS_LABELS: tl.constexpr
):
    rb = tl.program_id(0)
    lanes = tl.arange(0, 64)
    rows = rb * 64 + lanes
    rmask = rows < n
    rx1, ry1, rx2, ry2, rarea = _load_boxes(boxes_ptr, rows, rmask)
    hi = n_words
    if HAS_LABELS:
        rlab = tl.load(labels_ptr + rows, mask=rmask, other=-1)
        last = tl.minimum(rb * 64 + 63, n - 1)
        hi = (tl.load(seg_end_ptr + last) + 63) // 64
    bit = tl.full([64], 1, tl.int64) << lanes.to(tl.int64)
    for cb in range(rb + tl.program_id(1), hi, tl.num_programs(1)):
        cols = cb * 64 + lanes
        cmask = cols < n
        cx1, cy1, cx2, cy2, carea = _load_boxes(boxes_ptr, cols, cmask)
        iw = tl.maximum(tl.minimum(rx2[:, None], cx2[None, :]) - tl.maximum(rx1[:, None], cx1[None, :]), 0)
        ih = tl.maximum(tl.minimum(ry2[:, None], cy2[None, :]) - tl.maximum(ry1[:, None], cy1[None, :]), 0)
        inter = iw * ih
        # torchvision's formula and operation order, so threshold ties resolve the same way
        iou = inter / (rarea[:, None] + carea[None, :] - inter)
        hit = (iou > iou_threshold) & (cols[None, :] > rows[:, None]) & cmask[None, :]
        if HAS_LABELS:
            clab = tl.load(labels_ptr + cols, mask=cmask, other=-2)
            hit = hit & (rlab[:, None] == clab[None, :])
        words = tl.reduce(tl.where(hit, bit[None, :], 0), 1, _or)
        tl.store(mask_ptr + rows.to(tl.int64) * n_words + cb, words, mask=rmask)


@triton.jit
def _keep_scan_kernel(
    mask_ptr, seg_end_ptr, removed_ptr, keep_ptr, n, n_words, HAS_LABELS: tl.constexpr, CHUNK: tl.constexpr
):
    lanes = tl.arange(0, 64)
    lanes64 = lanes.to(tl.int64)
    for b in range(0, n_words):
        rows = b * 64 + lanes
        rmask = rows < n
        row_off = rows.to(tl.int64) * n_words
        diag = tl.load(mask_ptr + row_off + b, mask=rmask, other=0)
        gone = tl.load(removed_ptr + b)
        alive = (((gone >> lanes64) & 1) == 0) & rmask
        # inside the block, greedy keep is the fixed point of keep[k] = alive[k] and no kept i < k suppresses k;
        # Jacobi iteration reaches it in (longest suppression chain) steps, usually two or three.
        hits = ((diag[:, None] >> lanes64[None, :]) & 1) != 0
        keep = alive
        nxt = alive & (tl.max(tl.where(hits & keep[:, None], 1, 0), 0) == 0)
        while tl.max(tl.where(nxt != keep, 1, 0), 0) > 0:
            keep = nxt
            nxt = alive & (tl.max(tl.where(hits & keep[:, None], 1, 0), 0) == 0)
        tl.store(keep_ptr + rows, keep.to(tl.int8), mask=rmask)
        hi = n_words
        if HAS_LABELS:
            hi = (tl.load(seg_end_ptr + tl.minimum(b * 64 + 63, n - 1)) + 63) // 64
        for c0 in range(b + 1, hi, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            cmask = cols < hi
            tile = tl.load(mask_ptr + row_off[:, None] + cols[None, :], mask=keep[:, None] & cmask[None, :], other=0)
            sup = tl.reduce(tile, 0, _or)
            old = tl.load(removed_ptr + cols, mask=cmask, other=0)
            tl.store(removed_ptr + cols, old | sup, mask=cmask)
        # the next block reads words other threads just wrote
        tl.debug_barrier()


def _sorted_keep(boxes: Tensor, labels: Tensor | None, seg_end: Tensor | None, iou_threshold: float) -> Tensor:
    """Return a bool keep flag per box for boxes already in scan order (class-major when labels are given)."""
    n = boxes.shape[0]
    n_words = triton.cdiv(n, WORD)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    boxes = boxes.contiguous()
    mask = torch.empty((n, n_words), dtype=torch.int64, device=boxes.device)
    has_labels = labels is not None
    labels_arg = labels if has_labels else mask
    seg_arg = seg_end if has_labels else mask
    split = min(n_words, MAX_SPLIT)
    _iou_mask_kernel[(n_words, split)](
        boxes, labels_arg, seg_arg, mask, n, n_words, float(iou_threshold), HAS_LABELS=has_labels, num_warps=MASK_WARPS)
    removed = torch.zeros(n_words, dtype=torch.int64, device=boxes.device)
    keep = torch.empty(n, dtype=torch.int8, device=boxes.device)
    _keep_scan_kernel[(1,)](
        mask, seg_arg, removed, keep, n, n_words, HAS_LABELS=has_labels, CHUNK=SCAN_CHUNK, num_warps=SCAN_WARPS)
    return keep.bool()


def nms_triton(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Return kept int64 indices by decreasing score (torchvision.ops.nms semantics) using the Triton kernels."""
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = _sorted_keep(boxes[order], None, None, iou_threshold)
    return order[keep]


def batched_nms_triton(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Return kept int64 indices of per-class NMS by decreasing score (torchvision.ops.batched_nms semantics)."""
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    by_score = torch.sort(scores, descending=True, stable=True).indices
    labels = idxs[by_score]
    by_class = torch.sort(labels, stable=True).indices
    labels = labels[by_class].contiguous()
    seg_end = torch.searchsorted(labels, labels, right=True).to(torch.int32)
    keep = _sorted_keep(boxes[by_score[by_class]], labels, seg_end, iou_threshold)
    ranks = torch.sort(by_class[keep]).values
    return by_score[ranks]
