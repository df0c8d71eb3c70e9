"""DDP's built-in communication hooks, as torch.distributed.algorithms.ddp_comm_hooks.default_hooks.

    model.register_comm_hook(None, default_hooks.fp16_compress_hook)   # None: the world

A hook takes (state, bucket: GradBucket) and returns a tensor.futures.Future whose value is the
bucket's reduced flat tensor. ``state`` is the process group here (None for the world).

bf16 on numpy: numpy has no bfloat16 dtype (and ``ml_dtypes`` is not installed here), so
bf16_compress_hook emulates it: values are rounded to bfloat16 precision (round to nearest
even on the top 16 bits of float32) before and after the all-reduce, which runs in float32.
The numerics are bf16's; the bytes on the wire are not halved (fp16_compress_hook's are).
"""
from __future__ import annotations

from tensor import backend
from tensor._tensor import Tensor
from tensor.futures import Future

from ... import api
from ...collectives import all_reduce
from ...work import ReduceOp, WorkFuture

__all__ = ["allreduce_hook", "fp16_compress_hook", "bf16_compress_hook",
           "fp16_compress_wrapper", "bf16_compress_wrapper"]


def work_future(work, value) -> Future:
    """A Future completed with `value` when `work` (from async_op=True) finishes."""
    return WorkFuture(work, value)


def _group(process_group):
    return api._group(process_group, "ddp comm hook")


def _allreduce_fut(process_group, tensor: Tensor) -> Future:
    """Average `tensor` over the group in place; a Future of it."""
    pg = _group(process_group)
    tensor.array /= pg.size()
    return work_future(all_reduce(tensor.array, ReduceOp.SUM, group=pg, async_op=True), tensor)


def allreduce_hook(process_group, bucket) -> Future:
    """The average of the bucket over the group (what DDP does without a hook)."""
    return _allreduce_fut(process_group, bucket.buffer())


def _compress_hook(process_group, bucket, compress, decompress) -> Future:
    pg = _group(process_group)
    buffer = bucket.buffer()
    small = compress(buffer.array)
    small /= small.dtype.type(pg.size())
    work = all_reduce(small, ReduceOp.SUM, group=pg, async_op=True)

    def unpack(fut):
        buffer.array[...] = decompress(fut.value())
        return buffer
    return work_future(work, small).then(unpack)


def fp16_compress_hook(process_group, bucket) -> Future:
    """Cast the bucket to float16, divide by the world size, all-reduce, cast back."""
    xp = backend.get_array_module(bucket.buffer().array)
    return _compress_hook(process_group, bucket, lambda a: a.astype(xp.float16),
                          lambda a: a)


def round_to_bf16(a):
    """float32 array rounded to bfloat16 precision (nearest even), still float32."""
    xp = backend.get_array_module(a)
    a = xp.ascontiguousarray(a, dtype=xp.float32)
    bits = a.view(xp.uint32)
    rounded = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    out = rounded.view(xp.float32)
    return xp.where(xp.isnan(a), a, out)


def bf16_compress_hook(process_group, bucket) -> Future:
    """As fp16_compress_hook with bfloat16 (emulated on numpy: see the module docstring)."""
    return _compress_hook(process_group, bucket, round_to_bf16, round_to_bf16)


def _wrapper(hook, compress):
    def wrapped(state, bucket):
        buffer = bucket.buffer()
        buffer.array[...] = compress(buffer.array)   # assigning casts back to the bucket dtype

        def back(f):
            v = f.value()
            arr = v.array if isinstance(v, Tensor) else v
            buffer.array[...] = compress(arr.reshape(buffer.array.shape))
            return buffer
        return hook(state, bucket).then(back)
    return wrapped


def fp16_compress_wrapper(hook):
    """Wrap a hook so that its input and output are rounded to float16 (as PyTorch's)."""
    return _wrapper(hook, lambda a: a.astype(backend.get_array_module(a).float16))


def bf16_compress_wrapper(hook):
    """Wrap a hook so that its input and output are rounded to bfloat16 (emulated)."""
    return _wrapper(hook, round_to_bf16)
