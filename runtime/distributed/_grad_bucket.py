"""How DDP cuts parameters into buckets, and the bucket a communication hook receives."""
from __future__ import annotations

from tensor import backend
from tensor._tensor import Tensor, _new

DEFAULT_FIRST_BUCKET_BYTES = 1 << 20   # the first bucket's limit, as c10d's


def compute_bucket_assignment_by_size(tensors, bucket_size_limits, order=None):
    """Group tensor indices into buckets of one dtype/device, as c10d's function of that name.

    `order` is the order to fill buckets in (default: as given). A bucket closes once its size
    reaches its limit; the limits are used in turn, the last one repeatedly.
    Returns (bucket index lists, per-bucket size limits), in fill order.
    """
    order = list(range(len(tensors))) if order is None else list(order)
    open_: dict = {}   # (dtype, device) -> [indices, bytes, limit index]
    result = []
    for i in order:
        a = tensors[i]
        key = (str(a.dtype), str(backend.device_of(a)))
        b = open_.setdefault(key, [[], 0, 0])
        b[0].append(i)
        b[1] += a.size * a.dtype.itemsize
        limit = bucket_size_limits[b[2]]
        if b[1] >= limit:
            result.append((b[0], limit))
            open_[key] = [[], 0, min(b[2] + 1, len(bucket_size_limits) - 1)]
    for b in open_.values():
        if b[0]:
            result.append((b[0], bucket_size_limits[b[2]]))
    # buckets of several dtypes interleave: keep them in the order their first gradient comes
    pos = {i: k for k, i in enumerate(order)}
    result.sort(key=lambda r: pos[r[0][0]])
    return [r[0] for r in result], [r[1] for r in result]


class GradBucket:
    """What a comm hook receives (as torch.distributed.GradBucket): one flat bucket of grads."""

    def __init__(self, index: int, buffer: Tensor, params: list, views: list, is_last: bool):
        self._index, self._buffer, self._params = index, buffer, params
        self._views, self._is_last = views, is_last

    def index(self) -> int:
        """The bucket's position in launch order (0 is reduced first)."""
        return self._index

    def buffer(self) -> Tensor:
        """The flat gradients of the bucket (a Tensor over the bucket's array)."""
        return self._buffer

    def gradients(self) -> list:
        """Each parameter's gradient as a view into buffer()."""
        return [_new(v) for v in self._views]

    def parameters(self) -> list:
        return list(self._params)

    def is_last(self) -> bool:
        """True for the last bucket of the step."""
        return self._is_last

    def set_buffer(self, buffer: Tensor) -> None:
        """Replace the bucket's contents with `buffer` (same number of elements)."""
        self._buffer.array[...] = buffer.array.reshape(self._buffer.array.shape)
