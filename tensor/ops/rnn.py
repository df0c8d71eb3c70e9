"""The recurrent part of RNN, LSTM and GRU layers, with a fused backward through time.

Note [Fused recurrence]
~~~~~~~~~~~~~~~~~~~~~~~
A layer splits into the input projection ``gx = x @ W_ih.T + b_ih`` for all time steps at once
(one matmul, an ordinary ``linear`` op) and the recurrence, which is one op here:
``recurrence(gx, w_hh, b_hh, h0, c0, mode, mask, reverse)``. Its forward loops over time, one
matmul of the hidden state with the fused gate weights per step, and keeps the gate
activations; its backward runs the whole backward-through-time on raw arrays: every
elementwise factor that does not depend on the incoming gradient is computed for all steps at
once before the loop, so a step costs one matmul and a few multiplies, and the weight gradient
is one matmul over all steps after it. Recording the same computation step by step in the
autograd graph makes ~15 nodes per step: for one LSTM layer (35 steps, batch 32, hidden 128,
float32, one thread) forward + backward took 60 ms that way and 12 ms fused.

The op returns one array ``(T + 1, B, H)`` (``(T + 2, B, H)`` for LSTM): the output at every
step, then h_n (then c_n), so that it is a single-output node; the layer slices it.

``mask`` (T, B) marks the steps that exist for each sequence (packed sequences of unequal
lengths). At a step that does not exist, the state passes through unchanged and the output is
zero; so in reverse the recurrence of a short sequence starts at its own last step, and h_n is
the state after each sequence's last step, as PyTorch's packed RNNs.

Double backward (create_graph=True) through the recurrence is not supported: the backward is on
raw arrays. Its error says so.
"""
from __future__ import annotations

from .._grad_mode import state as _grad_state
from .._tensor import _new, from_op
from .elementwise import _xp

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _sigmoid_(xp, a):
    """a <- sigmoid(a) in place, as 0.5 * tanh(a / 2) + 0.5 (never overflows)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def recurrence(gx, w_hh, b_hh, h0, c0=None, mode="LSTM", mask=None, reverse=False):
    """Run one layer's recurrence in one direction over the projected inputs.

    Args:
        gx: (T, B, G*H) Tensor, the input projection ``x @ W_ih.T + b_ih`` of every step.
        w_hh: (G*H, H) Tensor; b_hh: (G*H,) Tensor or None.
        h0: (B, H) Tensor; c0: (B, H) Tensor for LSTM, else None.
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" (PyTorch's gate orders: i,f,g,o / r,z,n).
        mask: optional (T, B) boolean array: which steps exist (see Note [Fused recurrence]).
        reverse: run from the last step to the first.
    Returns:
        (T + 1, B, H) Tensor (outputs, h_n), or (T + 2, B, H) for LSTM (outputs, h_n, c_n).
    """
    xp = _xp(gx)
    T, B, GH = gx.array.shape
    H = w_hh.array.shape[1]
    if GH != GATES[mode] * H or w_hh.array.shape[0] != GH:
        raise RuntimeError(f"recurrence: gx is {list(gx.array.shape)} and w_hh "
                           f"{list(w_hh.array.shape)}; expected {GATES[mode]} * hidden_size "
                           f"gate columns for mode {mode}.")
    m = None if mask is None else xp.asarray(mask)[..., None]  # (T, B, 1)
    fwd = {"LSTM": _lstm_forward, "GRU": _gru_forward}.get(mode, _rnn_forward)
    y, saved = fwd(xp, mode, gx.array, w_hh.array, None if b_hh is None else b_hh.array,
                   h0.array, None if c0 is None else c0.array, m, reverse)
    bwd = {"LSTM": _lstm_backward, "GRU": _gru_backward}.get(mode, _rnn_backward)

    def backward(gy):
        if _grad_state.enabled:
            raise RuntimeError(f"recurrence ({mode}): double backward (create_graph=True) "
                               "through zgrad's fused RNN/LSTM/GRU recurrence is not supported.")
        g = gy.array
        g_out = g[:T] if m is None else g[:T] * m
        dgx, dgh, dh0, dc0 = bwd(xp, mode, g_out, g[T], g[T + 1] if mode == "LSTM" else None,
                                 w_hh.array, saved, m, reverse)
        hprev = saved["hprev"]
        gw = _new(dgh.reshape(-1, GH).T @ hprev.reshape(-1, H)) if w_hh.requires_grad else None
        gb = _new(dgh.sum(axis=(0, 1))) if b_hh is not None and b_hh.requires_grad else None
        return (_new(dgx), gw, gb, _new(dh0),
                None if c0 is None else _new(dc0))
    return from_op(y, (gx, w_hh, b_hh, h0, c0), backward, "recurrence_" + mode.lower(),
                   saved=(w_hh,))


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _lstm_forward(xp, mode, gx, w, b, h, c, m, reverse):
    T, B, GH = gx.shape
    H = GH // 4
    wt = xp.ascontiguousarray(w.T)  # OpenBLAS is ~1.5x faster on h @ wt than on h @ w.T
    acts = gx + b if b is not None else gx.copy()  # (T, B, 4H): pre-activations, then gates
    y = xp.empty((T + 2, B, H), gx.dtype)
    hprev = xp.empty((T, B, H), gx.dtype)
    cprev = xp.empty((T, B, H), gx.dtype)
    tcs = xp.empty((T, B, H), gx.dtype)
    for t in _steps(T, reverse):
        hprev[t], cprev[t] = h, c
        a = acts[t]
        a += h @ wt
        g = xp.tanh(a[:, 2 * H:3 * H])
        _sigmoid_(xp, a)
        a[:, 2 * H:3 * H] = g
        c_new = a[:, H:2 * H] * c + a[:, :H] * g
        tc = xp.tanh(c_new, out=tcs[t])
        h_new = a[:, 3 * H:] * tc
        if m is None:
            h, c = h_new, c_new
            y[t] = h_new
        else:
            h, c = xp.where(m[t], h_new, h), xp.where(m[t], c_new, c)
            xp.multiply(h_new, m[t], out=y[t])
    y[T], y[T + 1] = h, c
    return y, {"acts": acts, "hprev": hprev, "cprev": cprev, "tcs": tcs}


def _lstm_backward(xp, mode, gy, dh, dc, w, s, m, reverse):
    acts, cprev, tcs = s["acts"], s["cprev"], s["tcs"]
    T, B, GH = acts.shape
    H = GH // 4
    i, f, g, o = (acts[..., k * H:(k + 1) * H] for k in range(4))
    # the factors of every gate gradient that do not depend on dh, dc: all steps at once
    M = xp.empty_like(acts).reshape(T, B, 4, H)
    M[:, :, 0] = g * i * (1 - i)
    M[:, :, 1] = cprev * f * (1 - f)
    M[:, :, 2] = i * (1 - g * g)
    M[:, :, 3] = tcs * o * (1 - o)
    P = o * (1 - tcs * tcs)  # dc += dh * P
    F = f
    keep = None
    if m is not None:  # a step that does not exist passes dh, dc through unchanged
        M *= m[..., None]
        P = P * m
        F = xp.where(m, f, 1)
        keep = (~m).astype(acts.dtype)
    dA = xp.empty((T, B, 4, H), acts.dtype)
    dh, dc = dh.copy(), dc.copy()
    for t in reversed(_steps(T, reverse)):
        dh += gy[t]
        dc += dh * P[t]
        xp.multiply(M[t, :, :3], dc[:, None], out=dA[t, :, :3])
        xp.multiply(M[t, :, 3], dh, out=dA[t, :, 3])
        dc *= F[t]
        dh_new = dA[t].reshape(B, GH) @ w
        if keep is not None:
            dh_new += dh * keep[t]
        dh = dh_new
    dA = dA.reshape(T, B, GH)
    return dA, dA, dh, dc


def _gru_forward(xp, mode, gx, w, b, h, c, m, reverse):
    T, B, GH = gx.shape
    H = GH // 3
    wt = xp.ascontiguousarray(w.T)  # OpenBLAS is ~1.5x faster on h @ wt than on h @ w.T
    rz = xp.empty((T, B, 2 * H), gx.dtype)
    ns = xp.empty((T, B, H), gx.dtype)
    ghn = xp.empty((T, B, H), gx.dtype)
    hprev = xp.empty((T, B, H), gx.dtype)
    y = xp.empty((T + 1, B, H), gx.dtype)
    for t in _steps(T, reverse):
        hprev[t] = h
        gh = h @ wt
        if b is not None:
            gh += b
        a = rz[t]
        xp.add(gx[t, :, :2 * H], gh[:, :2 * H], out=a)
        _sigmoid_(xp, a)
        ghn[t] = gh[:, 2 * H:]
        n = xp.tanh(gx[t, :, 2 * H:] + a[:, :H] * gh[:, 2 * H:], out=ns[t])
        h_new = n + a[:, H:] * (h - n)
        if m is None:
            h = h_new
            y[t] = h_new
        else:
            h = xp.where(m[t], h_new, h)
            xp.multiply(h_new, m[t], out=y[t])
    y[T] = h
    return y, {"rz": rz, "ns": ns, "ghn": ghn, "hprev": hprev}


def _gru_backward(xp, mode, gy, dh, dc, w, s, m, reverse):
    rz, n, ghn, hprev = s["rz"], s["ns"], s["ghn"], s["hprev"]
    T, B, H = n.shape
    r, z = rz[..., :H], rz[..., H:]
    A = (1 - z) * (1 - n * n)        # dan = dh * A   (pre-activation of n)
    R = ghn * r * (1 - r)            # dar = dan * R
    Z = (hprev - n) * z * (1 - z)    # daz = dh * Z
    zc = z
    if m is not None:
        A, Z = A * m, Z * m
        zc = xp.where(m, z, 1)  # dh passes through a step that does not exist
    dgx = xp.empty((T, B, 3 * H), n.dtype)
    dgh = xp.empty((T, B, 3 * H), n.dtype)
    dh = dh.copy()
    for t in reversed(_steps(T, reverse)):
        dh += gy[t]
        dan = xp.multiply(dh, A[t], out=dgx[t, :, 2 * H:])
        xp.multiply(dan, R[t], out=dgx[t, :, :H])
        xp.multiply(dh, Z[t], out=dgx[t, :, H:2 * H])
        dgh[t, :, :2 * H] = dgx[t, :, :2 * H]
        xp.multiply(dan, r[t], out=dgh[t, :, 2 * H:])
        dh = dgh[t] @ w + dh * zc[t]
    return dgx, dgh, dh, None


def _rnn_forward(xp, mode, gx, w, b, h, c, m, reverse):
    T, B, H = gx.shape
    wt = xp.ascontiguousarray(w.T)  # OpenBLAS is ~1.5x faster on h @ wt than on h @ w.T
    pre = gx + b if b is not None else gx.copy()
    hprev = xp.empty((T, B, H), gx.dtype)
    y = xp.empty((T + 1, B, H), gx.dtype)
    for t in _steps(T, reverse):
        hprev[t] = h
        a = pre[t]
        a += h @ wt
        if mode == "RNN_TANH":
            xp.tanh(a, out=a)
        else:
            xp.maximum(a, 0, out=a)
        if m is None:
            h = a
            y[t] = a
        else:
            h = xp.where(m[t], a, h)
            xp.multiply(a, m[t], out=y[t])
    y[T] = h
    return y, {"hs": pre, "hprev": hprev}


def _rnn_backward(xp, mode, gy, dh, dc, w, s, m, reverse):
    hs = s["hs"]
    T, B, H = hs.shape
    D = 1 - hs * hs if mode == "RNN_TANH" else (hs > 0).astype(hs.dtype)
    keep = None
    if m is not None:
        D = D * m
        keep = (~m).astype(hs.dtype)
    da = xp.empty_like(hs)
    dh = dh.copy()
    for t in reversed(_steps(T, reverse)):
        dh += gy[t]
        xp.multiply(dh, D[t], out=da[t])
        dh_new = da[t] @ w
        if keep is not None:
            dh_new += dh * keep[t]
        dh = dh_new
    return da, da, dh, None
