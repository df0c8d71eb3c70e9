"""tensor.save / tensor.load: round trips, the on-disk format, atomic writes, and clear errors
for truncated, foreign and hostile files (Note [Checkpoint format])."""
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy

import tensor
import tensor.nn as nn
from tensor import optim


def _eq(a, b):
    # dict subclasses (OrderedDict from state_dict()) come back as plain, ordered dicts
    assert type(a) is type(b) or (isinstance(a, dict) and type(b) is dict), (type(a), type(b))
    if isinstance(a, tensor.Tensor):
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
        assert a.requires_grad == b.requires_grad
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _eq(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _eq(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def test_round_trip_nested_structure_of_every_supported_type(tmp_path):
    rng = np.random.default_rng(0)
    obj = {
        "tensors": [tensor.tensor(rng.normal(size=(2, 3)).astype(dt))
                    for dt in ("float16", "float32", "float64")]
        + [tensor.tensor(rng.integers(-5, 5, size=4).astype(dt))
           for dt in ("int8", "int16", "int32", "int64", "uint8")]
        + [tensor.tensor([True, False]), tensor.tensor(3.5), tensor.zeros(0, 4)],
        "noncontig": tensor.tensor(np.arange(12.0).reshape(3, 4)).T,
        "grad": tensor.ones(2, requires_grad=True),
        "param": nn.Parameter(tensor.ones(3)),
        "arr": np.arange(5, dtype=np.int32),
        "nums": (1, -2.5, float("inf"), float("-inf"), float("nan"), True, None, "text"),
        "int_keys": {0: "a", 7: {"x": [1, 2]}, (1, "b"): 3},
        "dollar": {"$tensor": "not a ref", "$$": 1},
        "empty": {"d": {}, "l": [], "t": ()},
        "unicode": "naïve ✓",
        "big": 2 ** 62,
    }
    tensor.save(obj, tmp_path / "a.safetensors")
    back = tensor.load(tmp_path / "a.safetensors")
    _eq(obj, back)
    assert isinstance(back["param"], nn.Parameter) and back["param"].requires_grad
    assert back["tensors"][0].array.flags.writeable


def test_same_tensor_twice_is_stored_once_and_stays_shared(tmp_path):
    t = tensor.arange(4.0)
    tensor.save({"a": t, "b": [t], "c": t.clone()}, tmp_path / "x")
    with open(tmp_path / "x", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert sorted(k for k in header if k != "__metadata__") == ["a", "c"]
    back = tensor.load(tmp_path / "x")
    assert back["a"] is back["b"][0] and back["c"] is not back["a"]


def test_model_and_optimizer_state_dicts_round_trip(tmp_path):
    tensor.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    model(tensor.randn(3, 4)).sum().backward()
    opt.step()
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4}
    tensor.save(ck, tmp_path / "ck")
    back = tensor.load(tmp_path / "ck")
    _eq(ck, back)
    assert list(back["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys survive
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples too
    model2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model2.load_state_dict(back["model"])
    optim.Adam(model2.parameters()).load_state_dict(back["optimizer"])


def test_file_objects_and_pathlike(tmp_path):
    buf = io.BytesIO()
    tensor.save({"w": tensor.ones(2)}, buf)
    buf.seek(0)
    _eq(tensor.load(buf), {"w": tensor.ones(2)})
    tensor.save([1, 2], str(tmp_path / "s"))
    assert tensor.load(str(tmp_path / "s")) == [1, 2]


def test_checkpoint_is_a_standard_safetensors_file(tmp_path):
    tensor.save({"model": {"w": tensor.ones(2, 3)}, "step": 3}, tmp_path / "c")
    arrays = safetensors.numpy.load_file(tmp_path / "c")
    np.testing.assert_array_equal(arrays["model.w"], np.ones((2, 3), np.float32))
    # and a plain safetensors file from elsewhere loads as a flat dict of tensors
    safetensors.numpy.save_file({"layer.weight": np.eye(2, dtype=np.float32)}, tmp_path / "p")
    back = tensor.load(tmp_path / "p")
    assert list(back) == ["layer.weight"]
    np.testing.assert_array_equal(back["layer.weight"].numpy(), np.eye(2))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "ck"
    tensor.save({"v": 1}, path)
    with pytest.raises(TypeError, match=r"cannot save a object at obj\['bad'\]\[1\]"):
        tensor.save({"v": 2, "bad": [1, object()]}, path)
    assert tensor.load(path) == {"v": 1}  # the old checkpoint is intact
    tensor.save({"v": 3}, path)
    assert tensor.load(path) == {"v": 3}
    assert os.listdir(tmp_path) == ["ck"]
    # the file gets an ordinary mode (not the temporary file's 0600)
    os.chmod(path, 0o640)
    tensor.save({"v": 4}, path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    tensor.save({"v": 5}, tmp_path / "new")
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o666 & ~umask


def test_save_refuses_unsupported_values_with_a_path():
    with pytest.raises(TypeError, match=r"obj\['f'\]"):
        tensor.save({"f": lambda: 0}, io.BytesIO())
    with pytest.raises(TypeError, match="dict key of type"):
        tensor.save({frozenset(): 1}, io.BytesIO())
    y = tensor.ones(2, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="detach"):
        tensor.save([y], io.BytesIO())


@pytest.mark.parametrize("cut", [0, 5, 8, 20, -1, -9])
def test_truncated_file_gives_clear_error(tmp_path, cut):
    tensor.save({"w": tensor.ones(64), "b": tensor.zeros(3)}, tmp_path / "full")
    data = (tmp_path / "full").read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(RuntimeError) as e:
        tensor.load(bad)
    msg = str(e.value)
    assert "bad.ckpt" in msg and ("truncated" in msg or "shorter" in msg)


def test_foreign_files_give_clear_errors(tmp_path):
    z = tmp_path / "model.pt"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(RuntimeError, match="model.pt.*zip archive.*never unpickles"):
        tensor.load(z)
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(RuntimeError, match="obj.pkl.*pickle"):
        tensor.load(p)
    t = tmp_path / "notes.txt"
    t.write_text("hello, this is not a checkpoint at all\n")
    with pytest.raises(RuntimeError, match="notes.txt.*not a safetensors checkpoint"):
        tensor.load(t)
    with pytest.raises(FileNotFoundError):
        tensor.load(tmp_path / "missing")


def _write_with_metadata(path, structure, arrays=None, version="1"):
    meta = {"format": "zgrad", "version": version,
            "structure": structure if isinstance(structure, str) else json.dumps(structure)}
    safetensors.numpy.save_file(arrays or {"t.0": np.ones(2, np.float32)}, path, metadata=meta)


def test_hostile_or_corrupted_structure_cannot_run_code(tmp_path):
    p = tmp_path / "evil"
    # a pickle payload in the structure is just an unknown tag: never executed
    _write_with_metadata(p, {"x": {"$pickle": "gASVIQAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOU"}})
    with pytest.raises(RuntimeError, match="unknown tag '\\$pickle'"):
        tensor.load(p)
    _write_with_metadata(p, {"x": {"$tensor": "t.9"}})
    with pytest.raises(RuntimeError, match="refers to tensor 't.9'"):
        tensor.load(p)
    _write_with_metadata(p, "{not json")
    with pytest.raises(RuntimeError, match="corrupted structure record"):
        tensor.load(p)
    _write_with_metadata(p, [1], version="99")
    with pytest.raises(RuntimeError, match="format version '99'"):
        tensor.load(p)


def test_map_location_and_cuda_tensors_without_cuda(tmp_path):
    p = tmp_path / "gpu"
    _write_with_metadata(p, {"w": {"$tensor": "t.0", "device": "cuda:0"}})
    if not tensor.cuda.is_available():
        with pytest.raises(RuntimeError, match="map_location='cpu'"):
            tensor.load(p)
    back = tensor.load(p, map_location="cpu")
    assert back["w"].device == tensor.device("cpu")
    back = tensor.load(p, map_location={"cuda:0": "cpu"})
    assert back["w"].device == tensor.device("cpu")
    with pytest.raises(TypeError, match="map_location"):
        tensor.load(p, map_location=3.5)


from tests.helpers import requires_cupy  # noqa: E402


@requires_cupy
def test_cuda_tensors_round_trip_on_their_device(tmp_path):
    t = tensor.arange(6.0, device="cuda").reshape(2, 3)
    tensor.save({"t": t, "c": tensor.ones(2)}, tmp_path / "g")
    back = tensor.load(tmp_path / "g")
    assert back["t"].device.type == "cuda" and back["c"].device.type == "cpu"
    np.testing.assert_array_equal(back["t"].cpu().numpy(), t.cpu().numpy())
    assert tensor.load(tmp_path / "g", map_location="cpu")["t"].device.type == "cpu"
    assert tensor.load(tmp_path / "g", map_location="cuda")["c"].device.type == "cuda"


def test_state_dict_entries_are_named_by_their_keys_and_load_into_pytorch(tmp_path):
    """tensor.save(model.state_dict()) is what safetensors.torch.load_file hands PyTorch."""
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tensor.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    tensor.save(model.state_dict(), tmp_path / "m.safetensors")
    sd = st_torch.load_file(str(tmp_path / "m.safetensors"))
    assert sorted(sd) == sorted(model.state_dict())
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ref.load_state_dict(sd)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(ref(torch.from_numpy(x)).detach().numpy(),
                               model(tensor.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    # and the reverse: PyTorch's safetensors state_dict loads into the zgrad model
    ref2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    st_torch.save_file(ref2.state_dict(), str(tmp_path / "t.safetensors"))
    model.load_state_dict(tensor.load(tmp_path / "t.safetensors"))
    np.testing.assert_allclose(ref2(torch.from_numpy(x)).detach().numpy(),
                               model(tensor.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def _raw_safetensors(path, header: bytes, body: bytes = b"\0" * 8):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + body)


CRAFTED = {
    "offset_1e999": lambda p: _raw_safetensors(
        p, b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,1e999]}}'),
    "offset_negative": lambda p: _raw_safetensors(
        p, b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,8]}}'),
    "nested_header": lambda p: _raw_safetensors(p, b'{"a":' + b"[" * 100_000 + b"]" * 100_000
                                                + b"}"),
    "nested_structure": lambda p: _write_with_metadata(p, "[" * 100_000 + "]" * 100_000),
    "tensor_key_list": lambda p: _write_with_metadata(p, {"x": {"$tensor": [1, 2]}}),
    "tuple_of_int": lambda p: _write_with_metadata(p, {"x": {"$tuple": 5}}),
    "dict_of_int": lambda p: _write_with_metadata(p, {"x": {"$dict": 5}}),
    "dict_bad_pair": lambda p: _write_with_metadata(p, {"x": {"$dict": [[1]]}}),
    "float_list": lambda p: _write_with_metadata(p, {"x": {"$float": ["nan"]}}),
    "device_tpu": lambda p: _write_with_metadata(p, {"w": {"$tensor": "t.0", "device": "tpu:9"}}),
    "device_int": lambda p: _write_with_metadata(p, {"w": {"$tensor": "t.0", "device": 3}}),
    "ndarray_key_dict": lambda p: _write_with_metadata(p, {"w": {"$ndarray": {"a": 1}}}),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_files_raise_the_documented_error_naming_the_file(tmp_path, case):
    p = tmp_path / f"crafted_{case}.safetensors"
    CRAFTED[case](p)
    with pytest.raises(RuntimeError, match=f"tensor.load: .*crafted_{case}"):
        tensor.load(p)


def test_stale_temporary_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    import subprocess
    import sys
    target = tmp_path / "ck.safetensors"
    code = ("import os, signal, safetensors.numpy as sn\n"
            "real = sn.save_file\n"
            "def dying(arrays, path, metadata=None):\n"
            "    real(arrays, path, metadata=metadata)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "sn.save_file = dying\n"
            "import tensor\n"
            f"tensor.save({{'w': tensor.ones(1000)}}, {str(target)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == -9, r.stderr
    stale = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert stale and not target.exists()
    tensor.save({"w": tensor.zeros(3)}, target)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    assert tensor.load(target)["w"].shape == (3,)
