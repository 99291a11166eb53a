"""Triton RoIAlign over one or several feature levels (one launch), forward and backward.

L levels (at most 5), N images, C channels, R RoIs, oh x ow = PH x PW bins; rois Tensor[R, 5]
(batch_idx, x1, y1, x2, y2) in input pixels; levels[r] picks the feature map (absent: level 0). One program
pools one RoI for BLOCK_C channels, a [bins x channels] tile. Sampling follows torchvision's roi_align exactly
(the same clamps at the border, the adaptive grid ceil(roi_size / bins), the average over the grid). Geometry
runs in float32 (float64 for float64 features); fp16 / bf16 features are read and accumulated in float32.
The backward pass adds d out / d features with atomics and, when asked, d out / d box corners
(x1, y1, x2, y2), summed per program and reduced on the host; the batch index gets no gradient.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from detkit.ops.kernels.layout import along_bins, along_channels, pick

# bins x channels per program (64 x 16 for 7 x 7) over 8 warps: 4 elements a thread keeps sm_90 builds under
# ~100 registers (no spills), so enough warps stay resident to hide the gathers' latency; the backward with
# the box gradient carries four more accumulators and gets half the tile
TILE = 1024
BOX_GRAD_TILE = 512


@triton.jit
def _setup(rois_ptr, levels_ptr, geom_ptr, scale_ptr, r, n_images, n_levels, sampling_ratio,
           PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, HAS_LEVELS: tl.constexpr):
    """Return the level, validity, image, start corner, bin size, grid and level geometry of RoI r."""
    if HAS_LEVELS:
        level = tl.load(levels_ptr + r).to(tl.int32)
    else:
        level = r * 0
    ok = (level >= 0) & (level < n_levels)
    level = tl.minimum(tl.maximum(level, 0), n_levels - 1)
    scale = tl.load(scale_ptr + level)
    b = tl.load(rois_ptr + r * 5).to(tl.int32)
    ok = ok & (b >= 0) & (b < n_images)
    offset = 0.5 if ALIGNED else 0.0
    x1 = tl.load(rois_ptr + r * 5 + 1) * scale - offset
    y1 = tl.load(rois_ptr + r * 5 + 2) * scale - offset
    rw = tl.load(rois_ptr + r * 5 + 3) * scale - offset - x1
    rh = tl.load(rois_ptr + r * 5 + 4) * scale - offset - y1
    free_w = rw >= 1.0
    free_h = rh >= 1.0
    if ALIGNED:
        free_w = rw == rw
        free_h = rh == rh
    else:
        rw = tl.maximum(rw, 1.0)
        rh = tl.maximum(rh, 1.0)
    bin_w = rw / PW
    bin_h = rh / PH
    gw = tl.where(sampling_ratio > 0, sampling_ratio, tl.ceil(rw / PW).to(tl.int32))
    gh = tl.where(sampling_ratio > 0, sampling_ratio, tl.ceil(rh / PH).to(tl.int32))
    return level, ok, b, scale, x1, y1, bin_w, bin_h, gw, gh, free_w, free_h


@triton.jit
def _tile(geom, level, b, ok, coord, f0, f1, f2, f3, f4, C,
          PH: tl.constexpr, PW: tl.constexpr, C_FAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Return the level's H and W, this program's bins and channels (with masks), its feature base and strides."""
    p = tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    base = pick(level, f0, f1, f2, f3, f4) + b.to(tl.int64) * tl.load(geom + 2)
    ch = along_channels(c.to(tl.int64) * tl.load(geom + 3), C_FAST)
    return (tl.load(geom + 0), tl.load(geom + 1), p, p < PH * PW, (p // PW).to(coord.dtype), (p % PW).to(coord.dtype),
            c, cm, along_channels(cm & ok, C_FAST), base, ch, tl.load(geom + 4), tl.load(geom + 5))


@triton.jit
def _axis(start, bin_size, grid, bin_index, i, size):
    """Return bilinear low / high cells, fraction, inside flag and d(position)/d(raw position) for sample i."""
    raw = start + bin_index * bin_size + (i + 0.5) * bin_size / grid
    inside = (raw >= -1.0) & (raw <= size)
    pos = tl.minimum(tl.maximum(raw, 0.0), size)
    low = pos.to(tl.int32)
    edge = low >= size - 1
    low = tl.where(edge, size - 1, low)
    high = tl.where(edge, size - 1, low + 1)
    pos = tl.where(edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    moves = (raw > 0.0) & (edge == 0)
    return low, high, frac, inside, moves


@triton.jit
def _corners(ptrs, ylo, yhi, xlo, xhi, sH, sW, m, C_FAST: tl.constexpr, ACC: tl.constexpr):
    """Load the four bilinear corners (low/high row x low/high column) of every sample in the tile, as ACC."""
    v1 = tl.load(ptrs + along_bins(ylo * sH + xlo * sW, C_FAST), mask=m, other=0).to(ACC)
    v2 = tl.load(ptrs + along_bins(ylo * sH + xhi * sW, C_FAST), mask=m, other=0).to(ACC)
    v3 = tl.load(ptrs + along_bins(yhi * sH + xlo * sW, C_FAST), mask=m, other=0).to(ACC)
    v4 = tl.load(ptrs + along_bins(yhi * sH + xhi * sW, C_FAST), mask=m, other=0).to(ACC)
    return v1, v2, v3, v4


@triton.jit
def _roi_align_fwd_kernel(
    out_ptr, rois_ptr, levels_ptr, f0, f1, f2, f3, f4, geom_ptr, scale_ptr,
    n_images, n_levels, C, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, HAS_LEVELS: tl.constexpr, C_FAST: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0)
    level, ok, b, scale, x1, y1, bin_w, bin_h, gw, gh, free_w, free_h = _setup(
        rois_ptr, levels_ptr, geom_ptr, scale_ptr, r, n_images, n_levels, sampling_ratio, PH, PW, ALIGNED, HAS_LEVELS)
    geom = geom_ptr + level * 10
    H, W, p, pm, ph, pw, c, cm, cmask, base, ch, sH, sW = _tile(
        geom, level, b, ok, x1, f0, f1, f2, f3, f4, C, PH, PW, C_FAST, BLOCK_P, BLOCK_C)
    acc = tl.zeros_like(along_bins(p, C_FAST) + along_channels(c, C_FAST)).to(ACC)
    for iy in range(0, gh):
        ylo, yhi, ly, yin, _ = _axis(y1, bin_h, gh, ph, iy, H)
        for ix in range(0, gw):
            xlo, xhi, lx, xin, _ = _axis(x1, bin_w, gw, pw, ix, W)
            m = along_bins(pm & yin & xin, C_FAST) & cmask
            v1, v2, v3, v4 = _corners(base + ch, ylo, yhi, xlo, xhi, sH, sW, m, C_FAST, ACC)
            hy = 1 - ly
            hx = 1 - lx
            acc += (along_bins((hy * hx).to(ACC), C_FAST) * v1 + along_bins((hy * lx).to(ACC), C_FAST) * v2
                    + along_bins((ly * hx).to(ACC), C_FAST) * v3 + along_bins((ly * lx).to(ACC), C_FAST) * v4)
    count = tl.maximum(gh * gw, 1).to(ACC)
    dst = (out_ptr + r.to(tl.int64) * C * PH * PW + along_channels(c.to(tl.int64) * PH * PW, C_FAST)
           + along_bins(p, C_FAST))
    tl.store(dst, (acc / count).to(out_ptr.dtype.element_ty), mask=along_bins(pm, C_FAST) & along_channels(cm, C_FAST))


@triton.jit
def _roi_align_bwd_kernel(
    grad_ptr, g_sr, g_sc, g_sh, g_sw, rois_ptr, levels_ptr, f0, f1, f2, f3, f4, d0, d1, d2, d3, d4,
    geom_ptr, scale_ptr, dbox_ptr, n_images, n_levels, C, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, HAS_LEVELS: tl.constexpr, C_FAST: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    FEATURE_GRAD: tl.constexpr, BOX_GRAD: tl.constexpr,
):
    r = tl.program_id(0)
    level, ok, b, scale, x1, y1, bin_w, bin_h, gw, gh, free_w, free_h = _setup(
        rois_ptr, levels_ptr, geom_ptr, scale_ptr, r, n_images, n_levels, sampling_ratio, PH, PW, ALIGNED, HAS_LEVELS)
    geom = geom_ptr + level * 10
    H, W, p, pm, ph, pw, c, cm, cmask, fbase, fch, fsH, fsW = _tile(
        geom, level, b, ok, x1, f0, f1, f2, f3, f4, C, PH, PW, C_FAST, BLOCK_P, BLOCK_C)
    dbase = pick(level, d0, d1, d2, d3, d4) + b.to(tl.int64) * tl.load(geom + 6)
    dch = along_channels(c.to(tl.int64) * tl.load(geom + 7), C_FAST)
    dsH = tl.load(geom + 8)
    dsW = tl.load(geom + 9)
    count = tl.maximum(gh * gw, 1).to(ACC)
    g_off = r.to(tl.int64) * g_sr + along_channels(c.to(tl.int64) * g_sc, C_FAST) + along_bins(
        (p // PW).to(tl.int64) * g_sh + (p % PW).to(tl.int64) * g_sw, C_FAST)
    g = tl.load(grad_ptr + g_off, mask=along_bins(pm, C_FAST) & cmask, other=0).to(ACC) / count
    sum_y = tl.zeros_like(g)
    sum_ty = tl.zeros_like(g)
    sum_x = tl.zeros_like(g)
    sum_tx = tl.zeros_like(g)
    for iy in range(0, gh):
        ylo, yhi, ly, yin, ymove = _axis(y1, bin_h, gh, ph, iy, H)
        ty = along_bins(((ph + (iy + 0.5) / gh) / PH).to(ACC), C_FAST)
        for ix in range(0, gw):
            xlo, xhi, lx, xin, xmove = _axis(x1, bin_w, gw, pw, ix, W)
            m = along_bins(pm & yin & xin, C_FAST) & cmask
            hy = along_bins((1 - ly).to(ACC), C_FAST)
            hx = along_bins((1 - lx).to(ACC), C_FAST)
            fy = along_bins(ly.to(ACC), C_FAST)
            fx = along_bins(lx.to(ACC), C_FAST)
            o1 = along_bins(ylo * dsH + xlo * dsW, C_FAST)
            o2 = along_bins(ylo * dsH + xhi * dsW, C_FAST)
            o3 = along_bins(yhi * dsH + xlo * dsW, C_FAST)
            o4 = along_bins(yhi * dsH + xhi * dsW, C_FAST)
            if FEATURE_GRAD:
                tl.atomic_add(dbase + dch + o1, g * hy * hx, mask=m)
                tl.atomic_add(dbase + dch + o2, g * hy * fx, mask=m)
                tl.atomic_add(dbase + dch + o3, g * fy * hx, mask=m)
                tl.atomic_add(dbase + dch + o4, g * fy * fx, mask=m)
            if BOX_GRAD:
                tx = along_bins(((pw + (ix + 0.5) / gw) / PW).to(ACC), C_FAST)
                v1, v2, v3, v4 = _corners(fbase + fch, ylo, yhi, xlo, xhi, fsH, fsW, m, C_FAST, ACC)
                gy = g * (hx * (v3 - v1) + fx * (v4 - v2)) * along_bins(ymove.to(ACC), C_FAST)
                gx = g * (hy * (v2 - v1) + fy * (v4 - v3)) * along_bins(xmove.to(ACC), C_FAST)
                sum_y += gy
                sum_ty += gy * ty
                sum_x += gx
                sum_tx += gx * tx
    if BOX_GRAD:
        # position = start + t * size, start = scale * corner1 - offset, size = scale * (corner2 - corner1)
        # (size clamped to 1 when not aligned: then the position follows corner1 alone)
        sy = tl.sum(tl.sum(sum_y, 1), 0)
        sty = tl.sum(tl.sum(sum_ty, 1), 0)
        sx = tl.sum(tl.sum(sum_x, 1), 0)
        stx = tl.sum(tl.sum(sum_tx, 1), 0)
        dst = dbox_ptr + (r.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * 4
        tl.store(dst + 0, scale * tl.where(free_w, sx - stx, sx))
        tl.store(dst + 1, scale * tl.where(free_h, sy - sty, sy))
        tl.store(dst + 2, scale * tl.where(free_w, stx, 0.0))
        tl.store(dst + 3, scale * tl.where(free_h, sty, 0.0))


def _meta(features: Sequence[Tensor], output_size: tuple[int, int], tile: int) -> dict:
    """Return the constexpr launch options (and warps) for a tile of about `tile` bins x channels."""
    ph, pw = output_size
    c = features[0].shape[1]
    block_p = triton.next_power_of_2(ph * pw)
    block_c = max(1, min(triton.next_power_of_2(c), tile // block_p))
    acc = tl.float64 if features[0].dtype == torch.float64 else tl.float32
    channels_last = c > 1 and features[0].stride(1) == 1
    warps = max(1, min(8, block_p * block_c // 64))
    return dict(PH=ph, PW=pw, C_FAST=channels_last, ACC=acc, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)


def _geometry(features: Sequence[Tensor], grads: Sequence[Tensor] | None) -> Tensor:
    """Return int64 [L, 10]: H, W, feature strides (n, c, h, w), gradient-buffer strides (n, c, h, w)."""
    rows = []
    for i, f in enumerate(features):
        g = grads[i] if grads is not None else f
        rows.append([f.shape[2], f.shape[3], *f.stride(), *g.stride()])
    return torch.tensor(rows, dtype=torch.int64, device=features[0].device)


def _pointers(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Return exactly 5 tensors, padding with the first (the kernel takes one pointer per level)."""
    return list(tensors) + [tensors[0]] * (5 - len(tensors))


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rois: Tensor, levels: Tensor | None, spec: tuple, *features: Tensor) -> Tensor:
        output_size, scales, sampling_ratio, aligned = spec
        compute = torch.float64 if features[0].dtype == torch.float64 else torch.float32
        rois_c = rois.detach().to(compute).contiguous()
        levels_c = levels.contiguous() if levels is not None else rois_c
        scale_t = torch.tensor(scales, dtype=compute, device=rois.device)
        n, c = features[0].shape[:2]
        r = rois.shape[0]
        meta = _meta(features, output_size, TILE)
        out = features[0].new_empty((r, c, *output_size))
        if r and c:
            grid = (r, triton.cdiv(c, meta["BLOCK_C"]))
            _roi_align_fwd_kernel[grid](
                out, rois_c, levels_c, *_pointers(features), _geometry(features, None), scale_t,
                n, len(features), c, int(sampling_ratio), ALIGNED=bool(aligned), HAS_LEVELS=levels is not None, **meta)
        ctx.save_for_backward(rois_c, levels_c, scale_t, *features)
        ctx.spec = spec
        ctx.has_levels = levels is not None
        ctx.rois_dtype = rois.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rois_c, levels_c, scale_t, *features = ctx.saved_tensors
        output_size, _, sampling_ratio, aligned = ctx.spec
        feature_grad = any(ctx.needs_input_grad[3:])
        box_grad = ctx.needs_input_grad[0]
        n, c = features[0].shape[:2]
        r = rois_c.shape[0]
        meta = _meta(features, output_size, BOX_GRAD_TILE if box_grad else TILE)
        acc = torch.float64 if features[0].dtype == torch.float64 else torch.float32
        grads = [torch.zeros_like(f, dtype=acc, memory_format=torch.preserve_format) for f in features]
        n_cblocks = triton.cdiv(c, meta["BLOCK_C"]) if c else 0
        dbox = torch.zeros((r, max(n_cblocks, 1), 4), dtype=rois_c.dtype, device=rois_c.device)
        if r and c and (feature_grad or box_grad):
            _roi_align_bwd_kernel[(r, n_cblocks)](
                grad_out, *grad_out.stride(), rois_c, levels_c, *_pointers(features), *_pointers(grads),
                _geometry(features, grads), scale_t, dbox, n, len(features), c, int(sampling_ratio),
                ALIGNED=bool(aligned), HAS_LEVELS=ctx.has_levels, FEATURE_GRAD=feature_grad, BOX_GRAD=box_grad, **meta)
        grad_rois = None
        if box_grad:
            grad_rois = torch.cat([torch.zeros_like(dbox[:, 0, :1]), dbox.sum(1)], dim=1).to(ctx.rois_dtype)
        needed = ctx.needs_input_grad[3:]
        grad_features = [g.to(f.dtype) if need else None for g, f, need in zip(grads, features, needed)]
        return (grad_rois, None, None, *grad_features)


def roi_align_triton(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    output_size: tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Return Tensor[R, C, oh, ow] pooled from features[levels[r]] (features[0] without levels), differentiable."""
    spec = (tuple(output_size), tuple(float(s) for s in spatial_scales), int(sampling_ratio), bool(aligned))
    return _RoIAlign.apply(rois, levels, spec, *features)
