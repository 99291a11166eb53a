"""Triton RoIPool (Fast R-CNN), forward with argmax and backward by scattering to the argmax.

N images, C channels, R RoIs, PH x PW bins; rois Tensor[R, 5] (batch_idx, x1, y1, x2, y2) in input pixels.
Follows torchvision's roi_pool exactly: corners rounded half away from zero after scaling, bins
[floor(i * size / PH), ceil((i + 1) * size / PH)) clipped to the map, empty bins give 0, ties keep the first
maximum in row-major order. One program pools one RoI for BLOCK_C channels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from detkit.ops.kernels.layout import along_bins, along_channels

TILE = 1024  # bins x channels per program over 8 warps (see kernels/roi_align.py)


@triton.jit
def _round(v):
    """C's round(): halves away from zero."""
    return tl.where(v >= 0, tl.floor(v + 0.5), tl.ceil(v - 0.5))


@triton.jit
def _bin_range(bin_index, bin_size, roi_start, size):
    start = tl.floor(bin_index * bin_size).to(tl.int32) + roi_start
    end = tl.ceil((bin_index + 1) * bin_size).to(tl.int32) + roi_start
    return tl.minimum(tl.maximum(start, 0), size), tl.minimum(tl.maximum(end, 0), size)


@triton.jit
def _roi_pool_fwd_kernel(
    out_ptr, argmax_ptr, rois_ptr, f_ptr, n_images, C, H, W, s_n, s_c, s_h, s_w, scale_ptr,
    PH: tl.constexpr, PW: tl.constexpr, C_FAST: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0)
    b = tl.load(rois_ptr + r * 5).to(tl.int32)
    ok = (b >= 0) & (b < n_images)
    spatial_scale = tl.load(scale_ptr)
    x1 = _round(tl.load(rois_ptr + r * 5 + 1) * spatial_scale).to(tl.int32)
    y1 = _round(tl.load(rois_ptr + r * 5 + 2) * spatial_scale).to(tl.int32)
    x2 = _round(tl.load(rois_ptr + r * 5 + 3) * spatial_scale).to(tl.int32)
    y2 = _round(tl.load(rois_ptr + r * 5 + 4) * spatial_scale).to(tl.int32)
    bin_w = tl.maximum(x2 - x1 + 1, 1).to(ACC) / PW
    bin_h = tl.maximum(y2 - y1 + 1, 1).to(ACC) / PH
    p = tl.arange(0, BLOCK_P)
    pm = p < PH * PW
    hstart, hend = _bin_range((p // PW).to(ACC), bin_h, y1, H)
    wstart, wend = _bin_range((p % PW).to(ACC), bin_w, x1, W)
    empty = (hend <= hstart) | (wend <= wstart)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    base = f_ptr + b.to(tl.int64) * s_n + along_channels(c.to(tl.int64) * s_c, C_FAST)
    cmask = along_channels(cm & ok, C_FAST)
    best = tl.zeros_like(along_bins(p, C_FAST) + along_channels(c, C_FAST)).to(ACC) - 3.4028234663852886e38
    arg = tl.zeros_like(along_bins(p, C_FAST) + along_channels(c, C_FAST)) - 1
    # no bin spans more than ceil(bin size) + 1 cells
    for dh in range(0, tl.ceil(bin_h).to(tl.int32) + 1):
        h = hstart + dh
        for dw in range(0, tl.ceil(bin_w).to(tl.int32) + 1):
            w = wstart + dw
            m = along_bins(pm & (h < hend) & (w < wend), C_FAST) & cmask
            v = tl.load(base + along_bins(h.to(tl.int64) * s_h + w.to(tl.int64) * s_w, C_FAST), mask=m, other=0).to(ACC)
            take = m & (v > best)
            best = tl.where(take, v, best)
            arg = tl.where(take, along_bins(h * W + w, C_FAST), arg)
    best = tl.where(along_bins(empty, C_FAST) | (cmask == 0), 0.0, best)
    arg = tl.where(cmask, arg, -1)
    off = r.to(tl.int64) * C * PH * PW + along_channels(c.to(tl.int64) * PH * PW, C_FAST) + along_bins(p, C_FAST)
    store_mask = along_bins(pm, C_FAST) & along_channels(cm, C_FAST)
    tl.store(out_ptr + off, best.to(out_ptr.dtype.element_ty), mask=store_mask)
    tl.store(argmax_ptr + off, arg, mask=store_mask)


@triton.jit
def _roi_pool_bwd_kernel(
    grad_ptr, g_sr, g_sc, g_sh, g_sw, argmax_ptr, rois_ptr, d_ptr, C, W, s_n, s_c, s_h, s_w,
    PH: tl.constexpr, PW: tl.constexpr, C_FAST: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0)
    b = tl.load(rois_ptr + r * 5).to(tl.int64)
    p = tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = along_bins(p < PH * PW, C_FAST) & along_channels(c < C, C_FAST)
    off = r.to(tl.int64) * C * PH * PW + along_channels(c.to(tl.int64) * PH * PW, C_FAST) + along_bins(p, C_FAST)
    arg = tl.load(argmax_ptr + off, mask=m, other=-1)
    m = m & (arg >= 0)
    g_off = r.to(tl.int64) * g_sr + along_channels(c.to(tl.int64) * g_sc, C_FAST) + along_bins(
        (p // PW).to(tl.int64) * g_sh + (p % PW).to(tl.int64) * g_sw, C_FAST)
    g = tl.load(grad_ptr + g_off, mask=m, other=0).to(ACC)
    cell = (arg // W).to(tl.int64) * s_h + (arg % W).to(tl.int64) * s_w
    dst = d_ptr + b * s_n + along_channels(c.to(tl.int64) * s_c, C_FAST) + cell
    tl.atomic_add(dst, g, mask=m)


def _meta(features: Tensor, output_size: tuple[int, int]) -> dict:
    ph, pw = output_size
    c = features.shape[1]
    block_p = triton.next_power_of_2(ph * pw)
    block_c = max(1, min(triton.next_power_of_2(c), TILE // block_p))
    acc = tl.float64 if features.dtype == torch.float64 else tl.float32
    warps = max(1, min(8, block_p * block_c // 64))
    return dict(PH=ph, PW=pw, C_FAST=c > 1 and features.stride(1) == 1, ACC=acc, BLOCK_P=block_p, BLOCK_C=block_c,
                num_warps=warps)


class _RoIPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
        n, c, h, w = features.shape
        r = rois.shape[0]
        rois_c = rois.detach().to(torch.float64 if features.dtype == torch.float64 else torch.float32).contiguous()
        scale = torch.full((1,), spatial_scale, dtype=rois_c.dtype, device=rois_c.device)
        meta = _meta(features, output_size)
        out = features.new_empty((r, c, *output_size))
        argmax = torch.empty((r, c, *output_size), dtype=torch.int32, device=features.device)
        if r and c:
            _roi_pool_fwd_kernel[(r, triton.cdiv(c, meta["BLOCK_C"]))](
                out, argmax, rois_c, features, n, c, h, w, *features.stride(), scale, **meta)
        ctx.save_for_backward(argmax, rois_c)
        ctx.shape = features.shape
        ctx.meta = meta
        ctx.dtype = features.dtype
        ctx.channels_last = meta["C_FAST"]
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        argmax, rois_c = ctx.saved_tensors
        n, c, h, w = ctx.shape
        r = rois_c.shape[0]
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        acc = torch.float64 if ctx.dtype == torch.float64 else torch.float32
        grad = torch.empty(ctx.shape, dtype=acc, device=grad_out.device, memory_format=fmt).zero_()
        if r and c:
            _roi_pool_bwd_kernel[(r, triton.cdiv(c, ctx.meta["BLOCK_C"]))](
                grad_out, *grad_out.stride(), argmax, rois_c, grad, c, w, *grad.stride(), **ctx.meta)
        return grad.to(ctx.dtype), None, None, None


def roi_pool_triton(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
    """Return RoIPool Tensor[R, C, oh, ow] (torchvision.ops.roi_pool semantics), differentiable w.r.t. features."""
    return _RoIPool.apply(features, rois, tuple(output_size), float(spatial_scale))
