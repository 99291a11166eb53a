"""Tile helpers shared by the RoI kernels: a tile is [bins, channels] or [channels, bins].

Channels go along the fastest tile axis when they are contiguous in memory (channels-last input), bins
otherwise (NCHW input, where neighbouring bins sit close together in a row), so a warp's loads coalesce.
"""
import triton
import triton.language as tl


@triton.jit
def along_bins(v, C_FAST: tl.constexpr):
    """Broadcast a per-bin vector [P] onto the tile."""
    if C_FAST:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def along_channels(v, C_FAST: tl.constexpr):
    """Broadcast a per-channel vector [C] onto the tile."""
    if C_FAST:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def pick(level, a0, a1, a2, a3, a4):
    """Return the argument chosen by level (0..4): one scalar or pointer per FPN level."""
    return tl.where(level == 0, a0, tl.where(level == 1, a1, tl.where(level == 2, a2, tl.where(level == 3, a3, a4))))
