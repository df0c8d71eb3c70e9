"""Batch normalization: per-channel statistics over the batch (and spatial dims).

Note [Batch statistics]
~~~~~~~~~~~~~~~~~~~~~~~
``batch_norm`` asks a *statistics function* for ``(mean, var, count)``: the per-channel mean
and biased variance of the batch as Tensors that autograd differentiates through, and the
number of values behind them. The default, ``batch_stats``, reduces over this process's batch.
A cross-process variant (SyncBatchNorm) replaces only this function: it all-reduces the
per-channel sums (differentiably, so the backward all-reduces the matching gradient sums)
and returns the global mean, variance and count; the normalization, the affine transform and
the running-statistics update stay here. The running variance is updated with the unbiased
estimate, var * count / (count - 1), as PyTorch does.

The normalization is composed from differentiable ops (no fused backward): it is a handful of
elementwise ops and two reductions, and composition is what lets a statistics function that
talks to other processes slot in without a hand-written backward.
"""
from __future__ import annotations

from .. import backend
from .._grad_mode import no_grad
from .._tensor import Tensor, _new


def batch_stats(input: Tensor, dims: tuple):
    """(mean, biased var, count) per channel of `input` over `dims`, differentiable."""
    count = 1
    for d in dims:
        count *= input.array.shape[d]
    mean = input.mean(dims)
    var = input.var(dims, correction=0)
    return mean, var, count


def _channel_shape(input):
    return (1, -1) + (1,) * (input.array.ndim - 2)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, stats=batch_stats):
    """Normalize each channel of (N, C, ...) by batch statistics (training) or the running ones.

    As torch.nn.functional.batch_norm; in training the running buffers (when given) are
    updated in place: running = (1 - momentum) * running + momentum * batch. `stats` is the
    statistics function (see Note [Batch statistics]).
    """
    if input.array.ndim < 2:
        raise ValueError(f"batch_norm: expected an input (N, C, ...) with at least 2 dims, got "
                         f"shape {list(input.array.shape)}.")
    C = input.array.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise RuntimeError(f"batch_norm: {name} has shape {list(t.shape)}, expected [{C}] "
                               f"for an input with {C} channels (shape {list(input.shape)}).")
    shape = _channel_shape(input)
    if training:
        dims = (0,) + tuple(range(2, input.array.ndim))
        mean, var, count = stats(input, dims)
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input "
                             f"size {list(input.shape)}")
        if running_mean is not None or running_var is not None:
            _update_running(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm: running_mean and running_var are needed when not "
                               "training; pass training=True to use batch statistics.")
        mean, var = running_mean, running_var
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    y = (input - mean.reshape(shape)) * scale.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _update_running(running_mean, running_var, mean, var, count, momentum):
    """running = (1 - momentum) * running + momentum * batch (unbiased var), in place."""
    with no_grad():
        if running_mean is not None:
            m = mean.array.astype(running_mean.array.dtype, copy=False)
            running_mean.array *= 1.0 - momentum
            running_mean.array += momentum * m
            running_mean._vbox[0] += 1
        if running_var is not None:
            v = var.array.astype(running_var.array.dtype, copy=False) * (count / (count - 1))
            running_var.array *= 1.0 - momentum
            running_var.array += momentum * v
            running_var._vbox[0] += 1


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Normalize each (sample, channel) plane by its own statistics, as
    torch.nn.functional.instance_norm: batch_norm over the input seen as (1, N*C, ...).

    Running statistics (when given and use_input_stats) are updated with the mean over the
    batch of the per-sample statistics, as PyTorch does.
    """
    if input.array.ndim < 3:
        raise ValueError(f"instance_norm: expected an input (N, C, *spatial) with at least 3 "
                         f"dims, got shape {list(input.array.shape)}.")
    shape = tuple(input.array.shape)
    N, C = shape[:2]
    xp = backend.get_array_module(input.array)
    tiled = [None if t is None else _new(xp.tile(t.array, N))
             for t in (running_mean, running_var)]
    w = None if weight is None else weight.repeat(N)
    b = None if bias is None else bias.repeat(N)
    y = batch_norm(input.reshape((1, N * C) + shape[2:]), tiled[0], tiled[1], w, b,
                   use_input_stats, momentum, eps)
    if use_input_stats:
        with no_grad():
            for t, r in zip((running_mean, running_var), tiled):
                if t is not None:
                    t.array[...] = r.array.reshape(N, C).mean(0)
                    t._vbox[0] += 1
    return y.reshape(shape)
