"""The recurrent part of RNN, LSTM and GRU layers, with a fused backward through time.

Note [Fused recurrence]
~~~~~~~~~~~~~~~~~~~~~~~
A layer splits into the input projection ``gx = x @ W_ih.T + b_ih`` for all time steps at once
(one matmul, an ordinary ``linear`` op) and the recurrence, which is one op here:
``recurrence(gx, w_hh, b_hh, h0, c0, mode, mask, reverse, w_hr)``. Its forward loops over
time, one matmul of the hidden state with the fused gate weights per step, and keeps the gate
activations; its backward runs the whole backward-through-time on raw arrays: every
elementwise factor that does not depend on the incoming gradient is computed for all steps at
once before the loop, so a step costs one matmul and a few multiplies, and the weight gradient
is one matmul over all steps after it. Recording the same computation step by step in the
autograd graph makes ~15 nodes per step: for one LSTM layer (35 steps, batch 32, hidden 128,
float32, one thread) forward + backward took 60 ms that way and 12 ms fused.

The op returns the output of every step, h_n (and c_n for LSTM) as Tensors of one multi-output
node; an output that gets no gradient counts as zeros. An LSTM with ``w_hr`` (PyTorch's
proj_size) projects the hidden state, h = W_hr (o * tanh(c)), inside the same loop.

``mask`` (T, B) marks the steps that exist for each sequence (packed sequences of unequal
lengths). At a step that does not exist, the state passes through unchanged and the output is
zero; so in reverse the recurrence of a short sequence starts at its own last step, and h_n is
the state after each sequence's last step, as PyTorch's packed RNNs.

Double backward (create_graph=True) through the recurrence is not supported: the backward is on
raw arrays. Its error says so.
"""
from __future__ import annotations

from .. import backend
from .._grad_mode import state as _grad_state
from .._tensor import Node, _edge, _new
from .elementwise import _xp

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _sigmoid_(xp, a):
    """a <- sigmoid(a) in place, as 0.5 * tanh(a / 2) + 0.5 (never overflows)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def recurrence(gx, w_hh, b_hh, h0, c0=None, mode="LSTM", mask=None, reverse=False, w_hr=None):
    """Run one layer's recurrence in one direction over the projected inputs.

    Args:
        gx: (T, B, G*H) Tensor, the input projection ``x @ W_ih.T + b_ih`` of every step.
        w_hh: (G*H, P) Tensor (P = H, or proj_size); b_hh: (G*H,) Tensor or None.
        h0: (B, P) Tensor; c0: (B, H) Tensor for LSTM, else None.
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" (PyTorch's gate orders: i,f,g,o / r,z,n).
        mask: optional (T, B) boolean array: which steps exist (see Note [Fused recurrence]).
        reverse: run from the last step to the first.
        w_hr: LSTM only, optional (P, H) projection of the hidden state (PyTorch's proj_size).
    Returns:
        (output (T, B, P), h_n (B, P)), and c_n (B, H) for LSTM: Tensors of one graph node.
    """
    xp = _xp(gx)
    T, B, GH = gx.array.shape
    P = w_hh.array.shape[1]
    H = GH // GATES[mode]
    if GH % GATES[mode] or w_hh.array.shape[0] != GH or (w_hr is None and P != H) or (
            w_hr is not None and tuple(w_hr.array.shape) != (P, H)):
        raise RuntimeError(f"recurrence: gx is {list(gx.array.shape)}, w_hh "
                           f"{list(w_hh.array.shape)}" + (f" and w_hr {list(w_hr.array.shape)}"
                                                          if w_hr is not None else "") +
                           f"; expected {GATES[mode]} * hidden_size gate columns for {mode}.")
    m = None if mask is None else xp.asarray(mask)[..., None]  # (T, B, 1)
    arr = lambda t: None if t is None else t.array  # noqa: E731
    if mode == "LSTM":
        outs, saved = _lstm_forward(xp, gx.array, w_hh.array, arr(b_hh), h0.array, c0.array, m,
                                    reverse, arr(w_hr))
    else:
        fwd = _gru_forward if mode == "GRU" else _rnn_forward
        outs, saved = fwd(xp, mode, gx.array, w_hh.array, arr(b_hh), h0.array, m, reverse)

    def backward(g_out, g_hn, g_cn=None):
        if _grad_state.enabled:
            raise RuntimeError(f"recurrence ({mode}): double backward (create_graph=True) "
                               "through zgrad's fused RNN/LSTM/GRU recurrence is not supported.")
        gy = g_out.array if m is None else g_out.array * m
        if mode == "LSTM":
            dgx, dh0, dc0, gwr = _lstm_backward(xp, gy, g_hn.array, g_cn.array, w_hh.array,
                                                saved, m, reverse, arr(w_hr))
        else:
            bwd = _gru_backward if mode == "GRU" else _rnn_backward
            dgx, dh0 = bwd(xp, mode, gy, g_hn.array, w_hh.array, saved, m, reverse)
            dc0 = gwr = None
        dgh = saved.get("dgh", dgx)
        hprev = saved["hprev"]
        gw = _new(dgh.reshape(-1, GH).T @ hprev.reshape(-1, P)) if w_hh.requires_grad else None
        gb = _new(dgh.sum(axis=(0, 1))) if b_hh is not None and b_hh.requires_grad else None
        wrap = lambda a: None if a is None else _new(a)  # noqa: E731
        return _new(dgx), gw, gb, _new(dh0), wrap(dc0), wrap(gwr)
    return _multi_output(outs, (gx, w_hh, b_hh, h0, c0, w_hr), backward,
                         "recurrence_" + mode.lower(), (w_hh,) if w_hr is None else (w_hh, w_hr))


def _multi_output(arrays, parents, backward, name, saved):
    """Tensors around `arrays` sharing one graph Node (see Note [Graph] in _tensor.py);
    backward gets one gradient per output (zeros for an output that received none)."""
    outs = [_new(a) for a in arrays]
    if not (_grad_state.enabled and any(p is not None and p.requires_grad for p in parents)):
        return tuple(outs)
    meta = tuple((a.shape, a.dtype, backend.get_array_module(a)) for a in arrays)
    node = Node(backward, tuple(map(_edge, parents)), name,
                tuple((s._vbox, s._vbox[0], s) for s in saved), n_out=len(arrays),
                out_meta=meta)
    for i, t in enumerate(outs):
        t._node, t._out_idx, t.requires_grad = node, i, True
    return tuple(outs)


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _emit(xp, y, t, m, h, h_new):
    """Write step t's output h_new into y (zero where the mask m says the step does not exist)
    and return the next hidden state: h_new, or the old h where the step does not exist."""
    if m is None:
        y[t] = h_new
        return h_new
    xp.multiply(h_new, m[t], out=y[t])
    return xp.where(m[t], h_new, h)


def _lstm_forward(xp, gx, w, b, h, c, m, reverse, w_hr):
    T, B, GH = gx.shape
    H, P = GH // 4, h.shape[1]
    wt = xp.ascontiguousarray(w.T)  # OpenBLAS is faster on h @ wt than on h @ w.T
    wrt = None if w_hr is None else xp.ascontiguousarray(w_hr.T)
    acts = gx + b if b is not None else gx.copy()  # (T, B, 4H): pre-activations, then gates
    y = xp.empty((T, B, P), gx.dtype)
    hprev = xp.empty((T, B, P), gx.dtype)
    cprev = xp.empty((T, B, H), gx.dtype)
    tcs = xp.empty((T, B, H), gx.dtype)
    hfull = None if w_hr is None else xp.empty((T, B, H), gx.dtype)
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
        if wrt is not None:  # LSTM with projections: h = W_hr (o * tanh(c))
            hfull[t] = h_new
            h_new = h_new @ wrt
        h = _emit(xp, y, t, m, h, h_new)
        c = c_new if m is None else xp.where(m[t], c_new, c)
    return (y, h, c), {"acts": acts, "hprev": hprev, "cprev": cprev, "tcs": tcs, "hfull": hfull}


def _lstm_backward(xp, gy, dh, dc, w, s, m, reverse, w_hr):
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
    Pc = o * (1 - tcs * tcs)  # dc += dh * Pc
    F = f
    keep = None
    if m is not None:  # a step that does not exist passes dh, dc through unchanged
        M *= m[..., None]
        Pc = Pc * m
        F = xp.where(m, f, 1)
        keep = (~m).astype(acts.dtype)
    dA = xp.empty((T, B, 4, H), acts.dtype)
    dhs = None if w_hr is None else xp.empty((T,) + dh.shape, acts.dtype)
    dh, dc = dh.copy(), dc.copy()
    for t in reversed(_steps(T, reverse)):
        dh += gy[t]
        dhf = dh
        if w_hr is not None:  # back through the projection
            dhs[t] = dh
            dhf = dh @ w_hr
        dc += dhf * Pc[t]
        xp.multiply(M[t, :, :3], dc[:, None], out=dA[t, :, :3])
        xp.multiply(M[t, :, 3], dhf, out=dA[t, :, 3])
        dc *= F[t]
        dh_new = dA[t].reshape(B, GH) @ w
        if keep is not None:
            dh_new += dh * keep[t]
        dh = dh_new
    gwr = None
    if w_hr is not None:
        if m is not None:
            dhs *= m  # a carried gradient is not the projection's
        gwr = dhs.reshape(-1, dhs.shape[-1]).T @ s["hfull"].reshape(-1, H)
    return dA.reshape(T, B, GH), dh, dc, gwr


def _gru_forward(xp, mode, gx, w, b, h, m, reverse):
    T, B, GH = gx.shape
    H = GH // 3
    wt = xp.ascontiguousarray(w.T)
    rz = xp.empty((T, B, 2 * H), gx.dtype)
    ns = xp.empty((T, B, H), gx.dtype)
    ghn = xp.empty((T, B, H), gx.dtype)
    hprev = xp.empty((T, B, H), gx.dtype)
    y = xp.empty((T, B, H), gx.dtype)
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
        h = _emit(xp, y, t, m, h, h_new)
    return (y, h), {"rz": rz, "ns": ns, "ghn": ghn, "hprev": hprev}


def _gru_backward(xp, mode, gy, dh, w, s, m, reverse):
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
    dgh = s["dgh"] = xp.empty((T, B, 3 * H), n.dtype)  # the recurrent part's own gradient
    dh = dh.copy()
    for t in reversed(_steps(T, reverse)):
        dh += gy[t]
        dan = xp.multiply(dh, A[t], out=dgx[t, :, 2 * H:])
        xp.multiply(dan, R[t], out=dgx[t, :, :H])
        xp.multiply(dh, Z[t], out=dgx[t, :, H:2 * H])
        dgh[t, :, :2 * H] = dgx[t, :, :2 * H]
        xp.multiply(dan, r[t], out=dgh[t, :, 2 * H:])
        dh = dgh[t] @ w + dh * zc[t]
    return dgx, dh


def _rnn_forward(xp, mode, gx, w, b, h, m, reverse):
    T, B, H = gx.shape
    wt = xp.ascontiguousarray(w.T)
    pre = gx + b if b is not None else gx.copy()
    hprev = xp.empty((T, B, H), gx.dtype)
    y = xp.empty((T, B, H), gx.dtype)
    for t in _steps(T, reverse):
        hprev[t] = h
        a = pre[t]
        a += h @ wt
        if mode == "RNN_TANH":
            xp.tanh(a, out=a)
        else:
            xp.maximum(a, 0, out=a)
        h = _emit(xp, y, t, m, h, a)
    return (y, h.copy()), {"hs": pre, "hprev": hprev}


def _rnn_backward(xp, mode, gy, dh, w, s, m, reverse):
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
    return da, dh
