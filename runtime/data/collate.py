"""Collation, as ``torch.utils.data``: ``default_collate`` turns a list of samples into a batch.

Rules (PyTorch's): Tensors and numeric numpy arrays are stacked into a Tensor with a new
leading dimension; Python floats become a float64 Tensor, ints int64, bools bool; numpy scalars
keep their dtype; strings and bytes stay a list; dicts, named tuples and lists are collated
field by field (a tuple of fields comes back as a list, as PyTorch does).

The traversal is written once (`_collate`) with the leaf builder passed in: in the main process
a leaf is stacked into a new Tensor at once, while a loader worker records the leaves first,
sizes one shared-memory block for all of them and stacks each straight into it
(see Note [Loader protocol] in _multiprocess_iter.py).
"""
from __future__ import annotations

import collections.abc as cabc

import numpy as np

_NOT_NUMERIC = frozenset("SaUO")
_NUMBER_DTYPES = {bool: np.dtype(np.bool_), int: np.dtype(np.int64), float: np.dtype(np.float64)}

_COLLATE_TYPE_ERROR = ("default_collate: batch must contain tensors, numpy arrays, numbers, "
                       "dicts or lists; found {}. Convert it in the dataset, or pass a "
                       "collate_fn to the DataLoader.")


def _tensor_type():
    import tensor
    return tensor.Tensor


def _stack_now(items, shape, dtype, requires_grad):
    """Leaf builder for the main process: stack into a fresh Tensor."""
    import tensor
    elem = items[0]
    if isinstance(elem, np.ndarray) or not hasattr(elem, "shape"):
        out = np.empty(shape, dtype)
        _fill(out, items)
    else:  # an array of another module (CuPy): stack with that module
        xp = tensor.backend.get_array_module(elem)
        out = xp.stack(items)
    t = tensor.from_numpy(out) if isinstance(out, np.ndarray) else tensor.Tensor(out)
    return t.requires_grad_() if requires_grad else t


def _fill(out, items):
    """Stack `items` (arrays or numbers) into the preallocated `out`."""
    if out.ndim > 1 or (items and isinstance(items[0], np.ndarray)):
        try:
            if out.ndim > 1 and len({np.shape(x) for x in items}) == 1:
                # same as stack (equal shapes checked), without a per-item expand_dims
                np.concatenate(items, out=out.reshape((-1,) + out.shape[2:]))
            else:
                np.stack(items, out=out)
        except ValueError as e:
            shapes = sorted({tuple(np.shape(x)) for x in items})
            raise RuntimeError(f"default_collate: cannot stack samples of different shapes "
                               f"{shapes[:4]}; make them equal in the dataset (crop, pad) or "
                               "pass a collate_fn") from e
    else:
        out[...] = items


def _collate(batch, leaf):
    """Collate `batch` (a list of samples); array leaves are built by `leaf(items, shape,
    dtype, requires_grad)`."""
    elem = batch[0]
    Tensor = _tensor_type()
    if isinstance(elem, Tensor):
        items = [t.array for t in batch]
        return leaf(items, (len(batch),) + tuple(elem.shape), elem.dtype, False)
    if isinstance(elem, (np.ndarray, np.generic)) and not isinstance(elem, (np.str_, np.bytes_)):
        if elem.dtype.char in _NOT_NUMERIC:
            raise TypeError(_COLLATE_TYPE_ERROR.format(f"a numpy array of dtype {elem.dtype}"))
        return leaf(batch, (len(batch),) + elem.shape, elem.dtype, False)
    if isinstance(elem, (bool, int, float)) and not isinstance(elem, np.generic):
        dtype = _NUMBER_DTYPES.get(type(elem))
        if dtype is None:  # a subclass of int/float (IntEnum, ...)
            dtype = _NUMBER_DTYPES[float if isinstance(elem, float) else int]
        if dtype.kind != "f" and float in set(map(type, batch)):
            dtype = _NUMBER_DTYPES[float]
        return leaf(batch, (len(batch),), dtype, False)
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, cabc.Mapping):
        out = {key: _collate([d[key] for d in batch], leaf) for key in elem}
        if type(elem) is dict:
            return out
        try:
            return type(elem)(out)
        except TypeError:  # a Mapping that cannot be built from a dict
            return out
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(_collate(list(s), leaf) for s in zip(*batch)))
    if isinstance(elem, cabc.Sequence):
        if len(set(map(len, batch))) != 1:
            raise RuntimeError("default_collate: each element in list of batch should be of "
                               f"equal size; got sizes {sorted({len(x) for x in batch})}")
        out = [_collate(list(s), leaf) for s in zip(*batch)]
        if isinstance(elem, tuple) or type(elem) is list:
            return out
        try:
            return type(elem)(out)
        except TypeError:
            return out
    raise TypeError(_COLLATE_TYPE_ERROR.format(type(elem)))


def default_collate(batch):
    """Collate a list of samples into a batch (see the module docstring for the rules).

    >>> default_collate([(np.zeros(3), 1), (np.ones(3), 2)])   # [Tensor (2, 3), Tensor([1, 2])]
    """
    if not isinstance(batch, cabc.Sequence) or isinstance(batch, (str, bytes)) or not batch:
        raise TypeError(f"default_collate: expected a non-empty list of samples, got "
                        f"{type(batch).__name__}{'' if batch else ' (empty)'}")
    return _collate(batch, _stack_now)


def default_convert(data):
    """Turn numpy arrays inside `data` into Tensors (without copying), keeping the structure.

    The loader uses it when automatic batching is off (``batch_size=None``).
    """
    import tensor
    if isinstance(data, tensor.Tensor):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype.char in _NOT_NUMERIC:
            return data
        return tensor.from_numpy(data)
    if isinstance(data, np.generic) and data.dtype.char not in _NOT_NUMERIC:
        return tensor.from_numpy(np.asarray(data))
    if isinstance(data, (str, bytes)):
        return data
    if isinstance(data, cabc.Mapping):
        out = {k: default_convert(v) for k, v in data.items()}
        try:
            return out if type(data) is dict else type(data)(out)
        except TypeError:
            return out
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, cabc.Sequence):
        out = [default_convert(d) for d in data]
        try:
            return out if type(data) is list else type(data)(out)
        except TypeError:
            return out
    return data
