"""``tensor.save`` / ``tensor.load``: checkpoints without pickle, in one safetensors file.

Note [Checkpoint format]
~~~~~~~~~~~~~~~~~~~~~~~~
A checkpoint is one standard safetensors file (loadable by safetensors in any framework):

- every Tensor (and numpy array) in the saved object is a safetensors entry named by its
  dotted key path (``fc.weight`` for ``save(model.state_dict())``, ``model.fc.weight`` inside
  ``{"model": ...}``, list and tuple positions as numbers), so ``safetensors.torch.load_file``
  hands PyTorch a state_dict it loads; a name already taken gets ``#<n>`` appended. The same
  Tensor object met twice (tied weights) is stored once, under the first path, and comes
  back as one Tensor; distinct Tensors that view one array are stored separately
  (safetensors has no aliasing).
- the object's structure is JSON in the safetensors header's ``__metadata__`` (a str -> str
  map): ``{"format": "zgrad", "version": "1", "structure": "<json>"}``. The JSON encodes
    * None, bools, ints, strs, lists: as themselves; floats as numbers, except nan/inf as
      ``{"$float": "nan" | "inf" | "-inf"}``;
    * a tuple: ``{"$tuple": [...]}``;
    * a dict whose keys are all strs not starting with "$": a JSON object (order kept);
      any other dict (int keys, as in an optimizer's state): ``{"$dict": [[key, value], ...]}``.
      Dict subclasses (OrderedDict, Counter) load as plain dicts, in the same order;
    * a Tensor: ``{"$tensor": "t.3"}`` plus ``"requires_grad": true``, ``"parameter": true``
      (an nn.Parameter) and ``"device": "cuda:0"`` when they apply; a numpy array:
      ``{"$ndarray": "t.4"}``.
  Anything else (arbitrary objects, functions) is refused at save time with the path to it.
- Loading parses JSON and reads raw tensor bytes; nothing is unpickled or evaluated, so an
  untrusted checkpoint cannot run code. A safetensors file without zgrad's metadata (e.g.
  written by another framework) loads as a flat ``{name: Tensor}`` dict.
- Writes are atomic: the bytes go to a temporary file ``<name>.<pid>.<random>.tmp`` in the
  target's directory, which is fsynced and then renamed over the target (and the directory
  fsynced), so a crash leaves either the old checkpoint or the new one, never half of one.
  The next save to the same path removes temporaries whose writer process is dead.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile

import numpy as np
from shm import pid_alive

from . import backend
from ._tensor import Tensor, _new

_DEVICE_RE = re.compile(r"^(cpu|cuda)(:[0-9]{1,4})?$")
FORMAT = "zgrad"
VERSION = "1"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


# -- save ------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.by_id: dict[int, str] = {}
        self.keep = []  # keeps encoded objects alive so ids stay unique during the walk

    def _add(self, obj, arr, name: str) -> str:
        key = self.by_id.get(id(obj))
        if key is None:
            key = name if name and name not in self.arrays and name != "__metadata__" \
                else f"{name}#{len(self.arrays)}"
            a = backend.to_numpy(arr)
            # (not np.ascontiguousarray, which turns a 0-d array into a 1-d one)
            self.arrays[key] = a if a.flags.c_contiguous else a.copy(order="C")
            self.by_id[id(obj)] = key
            self.keep.append(obj)
        return key

    def encode(self, obj, path: str, name: str = ""):
        """The JSON record of obj; `name` is its dotted key path (the safetensors entry name
        of a tensor: a state_dict's own keys at the top level)."""
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            f = float(obj)
            if math.isfinite(f):
                return f
            return {"$float": "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")}
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, Tensor):
            if obj.grad_fn is not None:
                raise RuntimeError(f"tensor.save: the tensor at {path} is part of an autograd "
                                   "graph; save t.detach() (state_dict() already does).")
            rec = {"$tensor": self._add(obj, obj.array, name)}
            if obj.requires_grad:
                rec["requires_grad"] = True
            if getattr(obj, "_is_param", False):
                rec["parameter"] = True
            if obj.device.type != "cpu":
                rec["device"] = str(obj.device)
            return rec
        if backend.is_array(obj):
            return {"$ndarray": self._add(obj, obj, name)}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}[{i}]", _join(name, i)) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"$tuple": [self.encode(v, f"{path}[{i}]", _join(name, i))
                               for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: self.encode(v, f"{path}[{k!r}]", _join(name, k))
                        for k, v in obj.items()}
            return {"$dict": [[self._key(k, path), self.encode(v, f"{path}[{k!r}]",
                                                                _join(name, k))]
                              for k, v in obj.items()]}
        raise TypeError(f"tensor.save: cannot save a {type(obj).__name__} at {path}; expected "
                        "Tensors, numpy arrays, numbers, strings, bools, None, and lists, tuples "
                        "and dicts of them. Convert it (e.g. to a dict) before saving.")

    def _key(self, k, path):
        if k is None or isinstance(k, (bool, str, int, float, np.integer, np.floating, tuple)):
            return self.encode(k, f"{path} key")
        raise TypeError(f"tensor.save: cannot save a dict key of type {type(k).__name__} at "
                        f"{path}; keys must be strs, numbers, bools, None or tuples of them.")


def _join(name: str, key) -> str:
    return f"{name}.{key}" if name else str(key)


def _encode(obj):
    """(arrays by key, safetensors metadata) for obj."""
    enc = _Encoder()
    structure = enc.encode(obj, "obj")
    meta = {"format": FORMAT, "version": VERSION,
            "structure": json.dumps(structure, separators=(",", ":"), allow_nan=False)}
    return enc.arrays, meta


def _file_mode(path: str) -> int:
    """The mode a plain open() would give: the old file's, else 0666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    umask = 0o022
    try:  # read, not set: os.umask() would change it for every thread for a moment
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
    except OSError:
        pass
    return 0o666 & ~umask


def save(obj, f) -> None:
    """Save obj (a state dict: nested dicts/lists/tuples of Tensors, numbers, strings, None,
    bools) to the path `f` atomically, or write it to a binary file object. No pickle: see
    Note [Checkpoint format]."""
    import safetensors.numpy
    arrays, meta = _encode(obj)  # refuses unsupported values before touching the file
    if hasattr(f, "write"):
        f.write(safetensors.numpy.save(arrays, metadata=meta))
        return
    path = os.fspath(f)
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temporaries(d, base)
    fd, tmp = tempfile.mkstemp(prefix=f"{base}.{os.getpid()}.", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        # written straight to the file (no whole-checkpoint bytes object in memory)
        safetensors.numpy.save_file(arrays, tmp, metadata=meta)
        os.chmod(tmp, _file_mode(path))  # mkstemp's file is 0600; give the usual mode
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _remove_stale_temporaries(d: str, base: str) -> None:
    """Unlink ``<base>.<pid>.<random>.tmp`` files of earlier saves to this path whose writer
    is dead (a save killed mid-write leaves one, up to the checkpoint's size)."""
    pat = re.compile(re.escape(base) + r"\.([0-9]{1,9})\.[A-Za-z0-9_]+\.tmp$")  # pids fit 9 digits
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        m = pat.match(n)
        if m is None or pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(d, n))
        except OSError:
            pass



# -- load ------------------------------------------------------------------------------------
def _foreign_hint(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return ("it is a zip archive, likely a PyTorch torch.save() checkpoint; zgrad never "
                "unpickles (that can run code). Re-save it with safetensors "
                "(safetensors.torch.save_file(state_dict, path)) and load that")
    if head[:1] == b"\x80":
        return "it looks like a pickle; zgrad never unpickles (that can run code)"
    if head.startswith(b"\x93NUMPY"):
        return "it is a numpy .npy file; load it with numpy.load"
    return "it does not start with a safetensors header"


def _read_header(name: str, head: bytes, size: int) -> dict:
    """Parse and check the safetensors header (lengths against the file size)."""
    if size < 8:
        raise RuntimeError(f"tensor.load: {name} is not a checkpoint: it is {size} bytes long, "
                           f"shorter than a safetensors header; {_foreign_hint(head)}.")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _HEADER_LIMIT or not head[8:9] == b"{":
        raise RuntimeError(f"tensor.load: {name} is not a safetensors checkpoint: "
                           f"{_foreign_hint(head)}.")
    if 8 + n > size:
        raise RuntimeError(f"tensor.load: {name} is truncated: its header claims {n} bytes "
                           f"but the file has {size - 8} after the length prefix. The file was "
                           "probably cut short by an interrupted copy or write.")
    try:
        header = json.loads(head[8:8 + n])
    except (ValueError, RecursionError) as e:
        raise RuntimeError(f"tensor.load: {name} has a corrupted safetensors header ({e}).") \
            from None
    if not isinstance(header, dict):
        raise RuntimeError(f"tensor.load: {name} has a corrupted safetensors header (not a "
                           "JSON object).")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise RuntimeError(f"tensor.load: {name} has a corrupted safetensors header "
                               f"(entry {k!r} has no valid data_offsets: expected two "
                               f"integers 0 <= begin <= end, got {offsets!r:.60}).")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise RuntimeError(f"tensor.load: {name} is truncated: its tensors need {8 + n + end} "
                           f"bytes but the file has {size}. The file was probably cut short by "
                           "an interrupted copy or write; use an earlier checkpoint.")
    return header


def _map_device(rec_device: str | None, map_location):
    if map_location is None:
        return rec_device or "cpu"
    if isinstance(map_location, dict):
        src = rec_device or "cpu"
        return str(map_location.get(src, src))
    if isinstance(map_location, (str, backend.device)):
        return str(map_location)
    raise TypeError(f"tensor.load: map_location must be None, a device, a str or a dict "
                    f"{{saved device: target}}, got {type(map_location).__name__}")


class _Decoder:
    def __init__(self, name, get_array, map_location):
        self.name, self.get_array, self.map_location = name, get_array, map_location
        self.cache: dict[str, Tensor] = {}

    def _bad(self, what: str):
        return RuntimeError(f"tensor.load: {self.name} has a corrupted structure: {what}.")

    def decode(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict):
            raise self._bad(f"unexpected JSON value of type {type(v).__name__}")
        if len(v) >= 1:
            tag = next(iter(v))
            if tag == "$tensor":
                return self._tensor(v)
            if tag == "$ndarray":
                return self.get_array(self._of(v, tag, str)).copy()
            if tag == "$tuple":
                return tuple(self.decode(x) for x in self._of(v, tag, list))
            if tag == "$dict":
                pairs = self._of(v, tag, list)
                if not all(isinstance(kv, list) and len(kv) == 2 for kv in pairs):
                    raise self._bad("a $dict entry is not a [key, value] pair")
                try:
                    return {self._hashable(self.decode(k)): self.decode(x) for k, x in pairs}
                except TypeError as e:
                    raise self._bad(f"bad $dict key ({e})") from None
            if tag == "$float":
                if self._of(v, tag, str) not in ("nan", "inf", "-inf"):
                    raise self._bad(f"unknown $float {v['$float']!r}")
                return float(v["$float"])
            if tag.startswith("$"):
                raise self._bad(f"unknown tag {tag!r} (written by a newer zgrad?)")
        return {k: self.decode(x) for k, x in v.items()}

    def _of(self, rec, tag, kind):
        """rec[tag], checked to be of JSON type `kind`."""
        val = rec[tag]
        if not isinstance(val, kind) or isinstance(val, bool):
            raise self._bad(f"{tag} expects a {kind.__name__}, got {type(val).__name__}")
        return val

    @staticmethod
    def _hashable(k):
        return tuple(_Decoder._hashable(x) for x in k) if isinstance(k, (tuple, list)) else k

    def _tensor(self, rec):
        key = self._of(rec, "$tensor", str)
        t = self.cache.get(key)
        if t is not None:
            return t
        arr = self.get_array(key)
        saved = rec.get("device")
        if saved is not None and not (isinstance(saved, str) and _DEVICE_RE.match(saved)):
            raise self._bad(f"tensor {key!r} has device {saved!r:.40}; expected 'cpu', "
                            "'cuda' or 'cuda:<n>'")
        dev = _map_device(saved, self.map_location)
        if backend.device(dev).type != "cpu":
            if not backend.cuda_is_available():
                raise RuntimeError(f"tensor.load: {self.name} holds a tensor saved on {dev}, but "
                                   "CUDA is not available here. Pass map_location='cpu' to load "
                                   "it on the CPU.")
            arr = backend.to_device(arr, backend.device(dev))
        if rec.get("parameter"):
            from .nn.parameter import Parameter
            t = Parameter(arr, requires_grad=bool(rec.get("requires_grad")))
        else:
            t = _new(arr)
            if rec.get("requires_grad"):
                t.requires_grad_(True)
        self.cache[key] = t
        return t


def load(f, map_location=None, weights_only: bool = True):
    """Load what save() wrote: from a path or a binary file object.

    map_location: None restores each tensor on the device it was saved from; 'cpu' (or a
    device) puts them all there; a dict maps saved device names to targets.
    weights_only is accepted for PyTorch compatibility: zgrad checkpoints never hold code.

    Raises:
        RuntimeError: the file is truncated, corrupted, or not a safetensors file (the
            message names the file and what was wrong).
    """
    import safetensors
    import safetensors.numpy
    if hasattr(f, "read"):
        data = f.read()
        name = repr(getattr(f, "name", "<file object>"))
        header = _read_header(name, data[:8 + min(len(data), _HEADER_LIMIT)], len(data))
        try:
            arrays = safetensors.numpy.load(data)
        except Exception as e:
            raise RuntimeError(f"tensor.load: {name} could not be read as safetensors: {e}") \
                from None
        return _decode(name, header, arrays.__getitem__, map_location)
    path = os.fspath(f)
    name = repr(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n <= _HEADER_LIMIT:
                head += fh.read(n)
    header = _read_header(name, head, size)
    try:
        with safetensors.safe_open(path, framework="np") as st:
            return _decode(name, header, st.get_tensor, map_location)
    except safetensors.SafetensorError as e:
        raise RuntimeError(f"tensor.load: {name} could not be read as safetensors: {e}") \
            from None


def _decode(name, header, get_tensor, map_location):
    meta = header.get("__metadata__") or {}
    keys = [k for k in header if k != "__metadata__"]

    def get_array(key):
        if key not in header or key == "__metadata__":
            raise RuntimeError(f"tensor.load: {name} has a corrupted structure: it refers to "
                               f"tensor {key!r}, which the file does not contain.")
        a = get_tensor(key)
        return a if a.flags.writeable else a.copy()

    dec = _Decoder(name, get_array, map_location)
    if meta.get("format") != FORMAT:
        # a plain safetensors file from another framework: a flat dict of its tensors
        return {k: dec._tensor({"$tensor": k}) for k in keys}
    if meta.get("version") != VERSION:
        raise RuntimeError(f"tensor.load: {name} is a zgrad checkpoint of format version "
                           f"{meta.get('version')!r}; this zgrad reads version {VERSION}. "
                           "Upgrade zgrad to load it.")
    try:
        structure = json.loads(meta["structure"])
    except (KeyError, ValueError, RecursionError) as e:
        raise RuntimeError(f"tensor.load: {name} has a corrupted structure record "
                           f"({type(e).__name__}: {e}).") from None
    try:
        return dec.decode(structure)
    except RecursionError:
        raise dec._bad("it is nested too deeply") from None
