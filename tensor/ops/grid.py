"""Spatial transformer sampling: ``affine_grid`` and ``grid_sample`` (4-D, as PyTorch's).

Both are composites of differentiable ops, so autograd reaches the input, the grid and the
affine matrix: the sampling weights are functions of the grid coordinates and the corner
indices are taken from the coordinates without history (floor has zero gradient), exactly the
derivative PyTorch's bilinear kernel computes. No loops over batch, channels or positions: the
four corners are one gather each over the flattened image.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .._tensor import Tensor, _new


def _base_coords(xp, n: int, align_corners: bool, dtype):
    """Normalised pixel centres in [-1, 1] along a side of n pixels."""
    if align_corners:
        return xp.linspace(-1.0, 1.0, n, dtype=dtype) if n > 1 else xp.zeros(1, dtype)
    return ((xp.arange(n, dtype=dtype) * 2 + 1) / n - 1).astype(dtype)


def affine_grid(theta: Tensor, size, align_corners=None) -> Tensor:
    """Sampling grid (N, H, W, 2) of the affine maps theta (N, 2, 3) for output size
    (N, C, H, W): grid[n, h, w] = theta[n] @ (x_w, y_h, 1), coordinates normalised to [-1, 1]."""
    size = tuple(int(s) for s in size)
    if len(size) != 4:
        raise ValueError(f"affine_grid: only 4-D sizes (N, C, H, W) are supported, got {size}")
    n, _, h, w = size
    if theta.dim() != 3 or tuple(theta.shape) != (n, 2, 3):
        raise ValueError(f"affine_grid: expected theta of shape ({n}, 2, 3) for size {size}, "
                         f"got {list(theta.shape)}")
    if not theta.is_floating_point():
        raise ValueError(f"affine_grid: theta must be floating point, got {theta.dtype}")
    align = bool(align_corners)
    xp = backend.get_array_module(theta.array)
    dt = theta.array.dtype
    xs, ys = _base_coords(xp, w, align, dt), _base_coords(xp, h, align, dt)
    base = xp.stack([xp.broadcast_to(xs[None, :], (h, w)), xp.broadcast_to(ys[:, None], (h, w)),
                     xp.ones((h, w), dt)], axis=-1).reshape(1, h * w, 3)
    grid = _new(base) @ theta.transpose(1, 2)                 # (N, H*W, 2)
    return grid.reshape(n, h, w, 2)


def _unnormalise(coord: Tensor, n: int, align: bool, padding_mode: str) -> Tensor:
    """[-1, 1] -> pixel coordinates along a side of n pixels (border: clamped to the image)."""
    pix = (coord + 1) * ((n - 1) / 2) if align else ((coord + 1) * n - 1) / 2
    return pix.clamp(0, n - 1) if padding_mode == "border" else pix


def _corner(flat: Tensor, iy, ix, h: int, w: int):
    """Values (N, C, L) at integer pixel (iy, ix) (arrays (N, L)), zero outside the image."""
    xp = backend.get_array_module(iy)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    idx = (xp.clip(iy, 0, h - 1) * w + xp.clip(ix, 0, w - 1)).astype(np.int64)
    n, c, _ = flat.shape
    idx = xp.broadcast_to(idx[:, None, :], (n, c, idx.shape[-1]))
    vals = flat.gather(2, _new(xp.ascontiguousarray(idx)))
    return vals * _new(inside[:, None, :].astype(flat.array.dtype))


def grid_sample(input: Tensor, grid: Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners=None) -> Tensor:
    """Sample input (N, C, H, W) at grid (N, Ho, Wo, 2) (x, y in [-1, 1]) -> (N, C, Ho, Wo).

    mode: 'bilinear' or 'nearest'; padding_mode: 'zeros' or 'border' ('reflection' is not
    implemented in zgrad: it raises ValueError).
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"grid_sample: mode must be 'bilinear' or 'nearest' (4-D input), "
                         f"got {mode!r}")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"grid_sample: padding_mode {padding_mode!r} is not supported by zgrad;"
                         " use 'zeros' or 'border'")
    if input.dim() != 4 or grid.dim() != 4 or grid.shape[-1] != 2 or \
            grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid_sample: expected input (N, C, H, W) and grid (N, Ho, Wo, 2) with"
                         f" the same N, got {list(input.shape)} and {list(grid.shape)}")
    n, c, h, w = input.shape
    _, ho, wo, _ = grid.shape
    align = bool(align_corners)
    g = grid.reshape(n, ho * wo, 2).to(input.dtype)
    ix = _unnormalise(g[..., 0], w, align, padding_mode)
    iy = _unnormalise(g[..., 1], h, align, padding_mode)
    flat = input.reshape(n, c, h * w)
    xp = backend.get_array_module(input.array)
    if mode == "nearest":   # round half to even, as PyTorch's nearbyint
        out = _corner(flat, xp.rint(iy.array), xp.rint(ix.array), h, w)
        return out.reshape(n, c, ho, wo)
    x0, y0 = xp.floor(ix.array), xp.floor(iy.array)
    wx1, wy1 = ix - _new(x0), iy - _new(y0)                 # differentiable in the grid
    wx0, wy0 = 1 - wx1, 1 - wy1
    out = (_corner(flat, y0, x0, h, w) * (wy0 * wx0).unsqueeze(1)
           + _corner(flat, y0, x0 + 1, h, w) * (wy0 * wx1).unsqueeze(1)
           + _corner(flat, y0 + 1, x0, h, w) * (wy1 * wx0).unsqueeze(1)
           + _corner(flat, y0 + 1, x0 + 1, h, w) * (wy1 * wx1).unsqueeze(1))
    return out.reshape(n, c, ho, wo)
