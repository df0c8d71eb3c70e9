"""Convolution: conv2d and conv_transpose2d with fused backward, unfold/fold, and 1-d forms.

Note [im2col layout]
~~~~~~~~~~~~~~~~~~~~
A convolution is a matrix product over "columns": every output position's receptive field
laid out as a column. The columns are built from a strided *view* of the padded input
(``as_strided``: no Python loop over batch, channel or pixel) and one contiguous copy.

conv2d builds them per sample, (N, C*kh*kw, OH*OW): with the weight as (C_out, C*kh*kw), a
batched GEMM writes the output straight into NCHW (no transpose of input or output), the
weight gradient is a batched GEMM summed over the batch, and the input gradient a GEMM
followed by col2im, a scatter-add that loops only over the kh*kw kernel offsets (each offset
adds a shifted block at once; overlapping windows accumulate correctly; see _input_grad for
the contiguous variant used when the width stride is 1). Measured on
LeNet's shapes (C_out of 6 and 16), these per-sample GEMMs ran 1.5-3x faster in OpenBLAS than
one large skinny GEMM over channel-major columns, and they avoid two transposes.

unfold/fold, conv_transpose2d and pooling's col2im use channel-major columns
(C*kh*kw, N*OH*OW) (``im2col``/``col2im``). ConvTranspose is conv2d's adjoint: its forward is
GEMM + col2im, its backward im2col + GEMM.

The backward of conv2d and conv_transpose2d is fused on raw arrays (for speed; it reuses the
forward's columns). Under create_graph it is built from differentiable ops instead
(``_unfold``/``_fold``, which are each other's adjoint, and matmul), so higher-order
gradients work.
"""
from __future__ import annotations

from collections import namedtuple

from .._autocast import policy as _policy
from .._grad_mode import state as _grad_state
from .._tensor import Tensor, _new, from_op
from .elementwise import _xp

# One convolution's geometry: channels C and spatial size (H, W) of the side that is
# unfolded, kernel, stride, dilation, padding (top, bottom, left, right) and output (OH, OW).
Geom = namedtuple("Geom", "C H W kh kw sh sw dh dw pt pb pl pr OH OW")


def _tuple(v, n, name, op):
    """An int or an n-sequence of ints as an n-tuple (PyTorch's _pair / _single)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * n
    t = tuple(v)
    if len(t) == 1 and n > 1:
        t = t * n
    if len(t) != n or not all(isinstance(i, int) for i in t):
        raise ValueError(f"{op}: {name} must be an int or a tuple of {n} ints, got {v!r}")
    return t


def _out_size(op, size, k, s, d, p0, p1):
    n = (size + p0 + p1 - d * (k - 1) - 1) // s + 1
    if n <= 0:
        raise RuntimeError(f"{op}: input size {size} with padding ({p0}, {p1}) is smaller than "
                           f"the effective kernel size {d * (k - 1) + 1}; the output would be "
                           f"empty. Use a smaller kernel or dilation, or pad the input.")
    return n


def _padding4(op, padding, k, s, d):
    """(top, bottom, left, right) from an int, a pair, 'valid' or 'same' (as PyTorch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{op}: padding must be an int, a tuple, 'valid' or 'same', got "
                             f"{padding!r}")
        if s != (1, 1):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions "
                             f"(stride={s}); use an explicit padding.")
        # an even effective kernel pads one more at the end, as PyTorch does
        tot = [dd * (kk - 1) for kk, dd in zip(k, d)]
        return (tot[0] // 2, tot[0] - tot[0] // 2, tot[1] // 2, tot[1] - tot[1] // 2)
    ph, pw = _tuple(padding, 2, "padding", op)
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {padding!r}")
    return (ph, ph, pw, pw)


def make_geom(op, C, H, W, kernel, stride, dilation, pads) -> Geom:
    """The geometry of sliding a kernel over a (C, H, W) input padded by `pads`."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    if min(sh, sw) <= 0 or min(dh, dw) <= 0:
        raise ValueError(f"{op}: stride and dilation must be positive, got stride={stride}, "
                         f"dilation={dilation}")
    OH = _out_size(op, H, kh, sh, dh, pads[0], pads[1])
    OW = _out_size(op, W, kw, sw, dw, pads[2], pads[3])
    return Geom(C, H, W, kh, kw, sh, sw, dh, dw, *pads, OH, OW)


def _windows(xp, xpad, g: Geom):
    """A strided view (N, C, kh, kw, OH, OW) of every window of a padded input (no copy)."""
    sN, sC, sH, sW = xpad.strides
    shape = xpad.shape[:2] + (g.kh, g.kw, g.OH, g.OW)
    return xp.lib.stride_tricks.as_strided(
        xpad, shape, (sN, sC, sH * g.dh, sW * g.dw, sH * g.sh, sW * g.sw))


def padded_hw(g: Geom):
    """The padded input's (height, width): the far sides grow when needed so the last
    window fits (pooling's ceil_mode)."""
    return (max(g.H + g.pt + g.pb, (g.OH - 1) * g.sh + g.dh * (g.kh - 1) + 1),
            max(g.W + g.pl + g.pr, (g.OW - 1) * g.sw + g.dw * (g.kw - 1) + 1))


def _padded(xp, x, g: Geom, fill=0):
    """x inside a (N, C) + padded_hw(g) array filled with `fill`."""
    hp, wp = padded_hw(g)
    if (hp, wp) == x.shape[2:] and not (g.pt or g.pl):
        return x
    out = xp.full(x.shape[:2] + (hp, wp), fill, x.dtype)
    out[:, :, g.pt:g.pt + g.H, g.pl:g.pl + g.W] = x
    return out


def im2col(xp, x, g: Geom):
    """Columns (C*kh*kw, N*OH*OW) of x (N, C, H, W); see Note [im2col layout]."""
    win = _windows(xp, _padded(xp, x, g), g)
    return xp.ascontiguousarray(win.transpose(1, 2, 3, 0, 4, 5)).reshape(
        g.C * g.kh * g.kw, -1)


def offset_slices(g: Geom, i: int, j: int):
    """The index of kernel offset (i, j)'s inputs in the padded array, for every window."""
    h0, w0 = i * g.dh, j * g.dw
    return (slice(None), slice(None), slice(h0, h0 + g.sh * (g.OH - 1) + 1, g.sh),
            slice(w0, w0 + g.sw * (g.OW - 1) + 1, g.sw))


def col2im(xp, cols, g: Geom, N: int):
    """The adjoint of im2col: sum columns (C*kh*kw, N*OH*OW) back into (N, C, H, W)."""
    c6 = cols.reshape(g.C, g.kh, g.kw, N, g.OH, g.OW)
    hp, wp = padded_hw(g)
    # accumulate channel-major so each strided add runs over aligned (N, OH, OW) blocks
    acc = xp.zeros((g.C, N, hp, wp), cols.dtype)
    for i in range(g.kh):      # a loop over kernel offsets, never over pixels
        for j in range(g.kw):
            acc[offset_slices(g, i, j)] += c6[:, i, j]
    return xp.ascontiguousarray(
        acc[:, :, g.pt:g.pt + g.H, g.pl:g.pl + g.W].transpose(1, 0, 2, 3))


def _unfold(t, g: Geom):
    """im2col as a differentiable op (its backward is _fold): (N,C,H,W) -> (C*kh*kw, N*L)."""
    xp = _xp(t)
    n = t.array.shape[0]
    return from_op(im2col(xp, t.array, g), (t,), lambda gy: (_fold(gy, g, n),), "im2col")


def _fold(t, g: Geom, n: int):
    """col2im as a differentiable op (its backward is _unfold): (C*kh*kw, N*L) -> (N,C,H,W)."""
    xp = _xp(t)
    return from_op(col2im(xp, t.array, g, n), (t,), lambda gy: (_unfold(gy, g),), "col2im")


def _check(op, x, w, bias, groups, c_axis):
    """Shape, dtype and groups checks shared by conv2d and conv_transpose2d."""
    if x.ndim != 4 or w.ndim != 4:
        raise RuntimeError(f"{op}: expected a 4-D input (N, C, H, W) and a 4-D weight, got "
                           f"input {list(x.shape)} and weight {list(w.shape)}.")
    if x.dtype != w.dtype or (bias is not None and bias.array.dtype != x.dtype):
        raise RuntimeError(f"{op}: input ({x.dtype}), weight ({w.dtype})"
                           + (f" and bias ({bias.array.dtype})" if bias is not None else "")
                           + " should have the same dtype; cast with .to(dtype).")
    if x.dtype.kind != "f":
        raise RuntimeError(f"{op}: expected a floating point input, got {x.dtype}.")
    if not isinstance(groups, int) or groups <= 0 or w.shape[0] % groups:
        raise ValueError(f"{op}: groups must be a positive int dividing weight.shape[0] "
                         f"({w.shape[0]}), got {groups!r}.")
    cin = w.shape[1] * groups if c_axis == 1 else w.shape[0]
    if x.shape[1] != cin:
        raise RuntimeError(f"{op}: input has {x.shape[1]} channels (shape {list(x.shape)}) but "
                           f"weight {list(w.shape)} with groups={groups} expects {cin}. Check "
                           f"in_channels.")


def _gemm(a, b):
    """Grouped a @ b over a leading group axis; plain 2-D GEMM when there is one group."""
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    return a @ b


@_policy("conv2d")  # lower precision under autocast (Note [Autocast])
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d (NCHW; weight (C_out, C/g, kh, kw)).

    padding is an int, a pair, 'valid' or 'same'. The backward is fused (Note [im2col layout]).
    """
    if input.array.ndim == 3:  # unbatched (C, H, W), as PyTorch
        return conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation,
                      groups).squeeze(0)
    op = "conv2d"
    xp = _xp(input)
    x, w = input.array, weight.array
    _check(op, x, w, bias, groups, 1)
    N, C, H, W = x.shape
    Co, G = w.shape[0], groups
    k, s, d = w.shape[2:], _tuple(stride, 2, "stride", op), _tuple(dilation, 2, "dilation", op)
    g = make_geom(op, C, H, W, k, s, d, _padding4(op, padding, k, s, d))
    L = g.OH * g.OW
    cols = im2col_batched(xp, x, g).reshape(N, G, C // G * g.kh * g.kw, L)
    wg = w.reshape(G, Co // G, -1)
    y = wg @ cols  # (N, G, Co/G, L): already NCHW
    if bias is not None:
        y += bias.array.reshape(G, -1, 1)
    y = y.reshape(N, Co, g.OH, g.OW)

    def backward(gy):
        if _grad_state.enabled:
            return _conv2d_graph_backward(gy, input, weight, bias, g, G)
        gy4 = gy.array.reshape(N, G, Co // G, L)
        gx = gw = gb = None
        if input.requires_grad:
            gx = _new(_input_grad(xp, gy.array, wg, g))
        if weight.requires_grad:
            gw = _new((gy4 @ cols.transpose(0, 1, 3, 2)).sum(0).reshape(w.shape))
        if bias is not None and bias.requires_grad:
            gb = _new(gy4.sum((0, 3)).reshape(Co))
        return gx, gw, gb
    return from_op(y, (input, weight, bias), backward, "convolution", saved=(input, weight))


def im2col_batched(xp, x, g: Geom):
    """Columns per sample, (N, C*kh*kw, OH*OW): a GEMM per sample writes NCHW directly."""
    win = _windows(xp, _padded(xp, x, g), g)
    return xp.ascontiguousarray(win).reshape(x.shape[0], g.C * g.kh * g.kw, g.OH * g.OW)


def _input_grad(xp, gy, wg, g: Geom):
    """conv2d's input gradient: W^T @ gy, then the scatter-add of col2im.

    With unit width stride the columns are computed on the padded input's grid, channel-major
    (gy placed at each window's top-left corner, zeros elsewhere), so each kernel offset's
    scatter-add is one contiguous shifted add over the whole flattened batch, not N*OH short
    rows (strided adds of short rows ran several times slower). The GEMM grows by the
    padded/output area ratio; measured on LeNet's second layer the whole input gradient took
    1.2 ms against 1.9 ms for batch-major columns.
    """
    N, Co = gy.shape[:2]
    G = wg.shape[0]
    wt = wg.transpose(0, 2, 1)
    if g.sw != 1:
        cols = wt @ gy.reshape(N, G, Co // G, g.OH * g.OW)  # (N, G, Kg, L) -> channel-major
        cols = cols.reshape(N, g.C * g.kh * g.kw, g.OH * g.OW).transpose(1, 0, 2)
        return col2im(xp, xp.ascontiguousarray(cols), g, N)
    hp, wp = padded_hw(g)
    grid = xp.zeros((Co, N, hp, wp), gy.dtype)
    grid[:, :, 0:(g.OH - 1) * g.sh + 1:g.sh, :g.OW] = gy.transpose(1, 0, 2, 3)
    n = N * hp * wp
    cols = _gemm(wt, grid.reshape(G, Co // G, n)).reshape(g.C, g.kh * g.kw, n)
    acc = xp.zeros((g.C, n + (g.kh - 1) * g.dh * wp + (g.kw - 1) * g.dw), gy.dtype)
    for i in range(g.kh):      # a loop over kernel offsets, never over pixels
        for j in range(g.kw):
            s = i * g.dh * wp + j * g.dw
            acc[:, s:s + n] += cols[:, i * g.kw + j]
    gx = acc[:, :n].reshape(g.C, N, hp, wp)[:, :, g.pt:g.pt + g.H, g.pl:g.pl + g.W]
    return xp.ascontiguousarray(gx.transpose(1, 0, 2, 3))


def _conv2d_graph_backward(gy, input, weight, bias, g, G):
    """conv2d's backward from differentiable ops, for create_graph=True."""
    N, Co = gy.shape[0], gy.shape[1]
    NL = N * g.OH * g.OW  # explicit sizes: an empty batch (N = 0) has no -1 to infer
    gy2 = gy.permute(1, 0, 2, 3).reshape(G, Co // G, NL)
    wg = weight.reshape(G, Co // G, -1)
    gx = gw = gb = None
    if input.requires_grad:
        gx = _fold((wg.mT @ gy2).reshape(g.C * g.kh * g.kw, NL), g, N)
    if weight.requires_grad:
        cols = _unfold(input, g)
        gw = (gy2 @ cols.reshape(G, g.C * g.kh * g.kw // G, NL).mT).reshape(weight.shape)
    if bias is not None and bias.requires_grad:
        gb = gy2.sum(-1).reshape(Co)
    return gx, gw, gb


@_policy("conv_transpose2d")  # lower precision under autocast (Note [Autocast])
def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1):
    """The transpose (adjoint) of conv2d, as torch.nn.functional.conv_transpose2d.

    weight is (C_in, C_out/groups, kh, kw); the output is
    (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1 high (likewise wide).
    """
    if input.array.ndim == 3:
        return conv_transpose2d(input.unsqueeze(0), weight, bias, stride, padding,
                                output_padding, groups, dilation).squeeze(0)
    op = "conv_transpose2d"
    xp = _xp(input)
    x, w = input.array, weight.array
    _check(op, x, w, bias, groups, 0)
    N, Ci, H, W = x.shape
    G = groups
    Co = w.shape[1] * G
    k = w.shape[2:]
    s, d = _tuple(stride, 2, "stride", op), _tuple(dilation, 2, "dilation", op)
    p, op_ = _tuple(padding, 2, "padding", op), _tuple(output_padding, 2, "output_padding", op)
    for a in range(2):
        if not 0 <= op_[a] < max(s[a], d[a]):
            raise ValueError(f"{op}: output_padding must be smaller than either stride or "
                             f"dilation, got output_padding={op_}, stride={s}, dilation={d}.")
    Ho = (H - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + op_[0] + 1
    Wo = (W - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + op_[1] + 1
    if Ho <= 0 or Wo <= 0:
        raise RuntimeError(f"{op}: the output size ({Ho}, {Wo}) is not positive; reduce "
                           f"padding (got {p}).")
    # the conv whose adjoint this is: it slides over the (Co, Ho, Wo) output, OH x OW = H x W
    g = Geom(Co, Ho, Wo, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[0] + op_[0],
             p[1], p[1] + op_[1], H, W)
    x2 = xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(G, Ci // G, N * H * W)
    wg = w.reshape(G, Ci // G, -1)
    y = col2im(xp, _gemm(wg.transpose(0, 2, 1), x2).reshape(Co * k[0] * k[1], N * H * W),
               g, N)
    if bias is not None:
        y += bias.array[:, None, None]

    def backward(gy):
        if _grad_state.enabled:
            return _conv_transpose2d_graph_backward(gy, input, weight, bias, g, G)
        cols = im2col(xp, gy.array, g).reshape(G, Co * k[0] * k[1] // G, N * H * W)
        gx = gw = gb = None
        if input.requires_grad:
            gx = _new(xp.ascontiguousarray(
                _gemm(wg, cols).reshape(Ci, N, H, W).transpose(1, 0, 2, 3)))
        if weight.requires_grad:
            gw = _new(_gemm(x2, cols.transpose(0, 2, 1)).reshape(w.shape))
        if bias is not None and bias.requires_grad:
            gb = _new(gy.array.sum((0, 2, 3)))
        return gx, gw, gb
    return from_op(y, (input, weight, bias), backward, "convolution_transpose",
                   saved=(input, weight))


def _conv_transpose2d_graph_backward(gy, input, weight, bias, g, G):
    """conv_transpose2d's backward from differentiable ops, for create_graph=True."""
    N, Ci = input.shape[0], input.shape[1]
    cols = _unfold(gy, g)
    cols = cols.reshape(G, cols.shape[0] // G, cols.shape[1])
    gx = gw = gb = None
    if input.requires_grad:
        gx = (weight.reshape(G, Ci // G, -1) @ cols).reshape(Ci, N, g.OH, g.OW).permute(
            1, 0, 2, 3)
    if weight.requires_grad:
        x2 = input.permute(1, 0, 2, 3).reshape(G, Ci // G, N * g.OH * g.OW)
        gw = (x2 @ cols.mT).reshape(weight.shape)
    if bias is not None and bias.requires_grad:
        gb = gy.sum((0, 2, 3))
    return gx, gw, gb


def _to_2d(op, name, v, fill):
    """A 1-d conv argument as its 2-d form over a height-1 image."""
    if isinstance(v, str):
        return v
    (a,) = _tuple(v, 1, name, op)
    return (fill, a)


@_policy("conv1d")  # lower precision under autocast (Note [Autocast])
def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation (N, C, L), as torch.nn.functional.conv1d: conv2d over height 1."""
    op = "conv1d"
    if weight.array.ndim != 3 or input.array.ndim not in (2, 3):
        raise RuntimeError(f"{op}: expected input (N, C, L) or (C, L) and a 3-D weight, got "
                           f"input {list(input.array.shape)}, weight {list(weight.array.shape)}.")
    y = conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias,
               _to_2d(op, "stride", stride, 1), _to_2d(op, "padding", padding, 0),
               _to_2d(op, "dilation", dilation, 1), groups)
    return y.squeeze(-2)


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """Sliding local blocks (N, C*kh*kw, L), as torch.nn.functional.unfold."""
    op = "unfold"
    if input.array.ndim != 4:
        raise RuntimeError(f"{op}: expected a 4-D input (N, C, H, W), got "
                           f"{list(input.array.shape)}.")
    N, C, H, W = input.array.shape
    k, d = _tuple(kernel_size, 2, "kernel_size", op), _tuple(dilation, 2, "dilation", op)
    s = _tuple(stride, 2, "stride", op)
    g = make_geom(op, C, H, W, k, s, d, _padding4(op, padding, k, s, d))
    K = C * g.kh * g.kw
    return _unfold(input, g).reshape(K, N, g.OH * g.OW).permute(1, 0, 2)


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sum sliding blocks (N, C*kh*kw, L) into (N, C, H, W), as torch.nn.functional.fold."""
    op = "fold"
    if input.array.ndim != 3:
        raise RuntimeError(f"{op}: expected a 3-D input (N, C*kh*kw, L), got "
                           f"{list(input.array.shape)}.")
    N, K, L = input.array.shape
    H, W = _tuple(output_size, 2, "output_size", op)
    k, d = _tuple(kernel_size, 2, "kernel_size", op), _tuple(dilation, 2, "dilation", op)
    s = _tuple(stride, 2, "stride", op)
    if K % (k[0] * k[1]):
        raise RuntimeError(f"{op}: input.shape[1] ({K}) must be divisible by the kernel size "
                           f"product {k[0] * k[1]}.")
    g = make_geom(op, K // (k[0] * k[1]), H, W, k, s, d, _padding4(op, padding, k, s, d))
    if g.OH * g.OW != L:
        raise RuntimeError(f"{op}: expected {g.OH * g.OW} blocks for output_size {(H, W)}, "
                           f"got {L}.")
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(input).__name__}")
    return _fold(input.permute(1, 0, 2).reshape(K, N * L), g, N)


@_policy("conv_transpose1d")  # lower precision under autocast (Note [Autocast])
def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1):
    """Transposed 1-D convolution, as torch.nn.functional.conv_transpose1d (height-1 2-d)."""
    op = "conv_transpose1d"
    if weight.array.ndim != 3 or input.array.ndim not in (2, 3):
        raise RuntimeError(f"{op}: expected input (N, C, L) or (C, L) and a 3-D weight, got "
                           f"input {list(input.array.shape)}, weight {list(weight.array.shape)}.")
    y = conv_transpose2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias,
                         _to_2d(op, "stride", stride, 1),
                         _to_2d(op, "padding", padding, 0),
                         _to_2d(op, "output_padding", output_padding, 0), groups,
                         _to_2d(op, "dilation", dilation, 1))
    return y.squeeze(-2)
