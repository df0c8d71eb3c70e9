"""Matrix products: matmul with batch broadcasting (and its 1-D cases), dot, outer, bmm."""
from __future__ import annotations

from .._autocast import policy as _policy
from .._tensor import from_op
from .elementwise import _operands, _wrap, sum_to


@_policy("matmul")
def matmul(a, b):
    """a @ b with numpy/PyTorch semantics: 1-D operands are promoted and the batch dims
    broadcast; gradients are summed back to each input's shape."""
    a, b = _wrap(a), _wrap(b)
    x, z, _ = _operands("matmul", a, b)
    if x.ndim == 0 or z.ndim == 0:
        raise RuntimeError("matmul: both arguments need at least 1 dimension; use * for scalars.")
    if x.shape[-1] != z.shape[-2 if z.ndim > 1 else 0]:
        raise RuntimeError(f"matmul: a is {tuple(x.shape)}, b is {tuple(z.shape)}; expected "
                           f"a.shape[-1] == b.shape[-2]. Check the layer sizes or transpose b.")
    y = x @ z
    sa, sb = x.shape, z.shape

    def backward(gy):
        if len(sa) == 1 and len(sb) == 1:
            return gy * b, gy * a
        a2 = a.unsqueeze(0) if len(sa) == 1 else a
        b2 = b.unsqueeze(-1) if len(sb) == 1 else b
        g2 = gy
        if len(sa) == 1:
            g2 = g2.unsqueeze(-2)
        if len(sb) == 1:
            g2 = g2.unsqueeze(-1)
        ga = gb = None
        if a.requires_grad:
            ga = g2 @ b2.mT
            ga = sum_to(ga, a2.array.shape)
            if len(sa) == 1:
                ga = ga.squeeze(0)
        if b.requires_grad:
            gb = a2.mT @ g2
            gb = sum_to(gb, b2.array.shape)
            if len(sb) == 1:
                gb = gb.squeeze(-1)
        return ga, gb
    return from_op(y, (a, b), backward, "matmul")


def dot(a, b):
    if a.array.ndim != 1 or b.array.ndim != 1:
        raise RuntimeError(f"dot: expected 1-D tensors, got {a.array.ndim}-D and {b.array.ndim}-D")
    return matmul(a, b)


def mm(a, b):
    if a.array.ndim != 2 or b.array.ndim != 2:
        raise RuntimeError(f"mm: expected 2-D tensors, got shapes {list(a.array.shape)} and "
                           f"{list(b.array.shape)}")
    return matmul(a, b)


def bmm(a, b):
    if a.array.ndim != 3 or b.array.ndim != 3:
        raise RuntimeError(f"bmm: expected 3-D tensors, got shapes {list(a.array.shape)} and "
                           f"{list(b.array.shape)}")
    return matmul(a, b)


def outer(a, b):
    return a.reshape(-1, 1) * b.reshape(1, -1)
