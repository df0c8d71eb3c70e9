"""Registries: what a config's ``name:`` fields select (optimizers, schedulers, losses,
data sets with their train/test splits; models are in ``runtime.models``).

A registry maps a short name to a target: an object, or an import string
``"package.module:Name"`` resolved on first use, so that a name can be registered before the
module that defines it exists (``runtime.models`` registers ``cnn`` this way). Any name that
contains a colon is a user's own ``package.module:Name`` and is imported directly.

    optimizers   sgd, adam, adamw, rmsprop (or any tensor.optim class by its own name)
    schedulers   cosine, step, multistep, exponential, linear, lambda (or any class of
                 tensor.optim.lr_scheduler by its own name), with an optional linear warmup
    losses       cross_entropy, nll (both flatten sequence logits (B, T, V)), mse, l1,
                 bce_with_logits
    data sets    digits, mnist, fashion_mnist, cifar10, char (= shakespeare), npy_folder
"""
from __future__ import annotations

import importlib


def import_object(spec: str, what: str = "object"):
    """The object named by ``"package.module:Name"`` (``Name`` may be dotted: ``A.b``).

    Raises:
        ValueError: `spec` is not of that form.
        ImportError: the module cannot be imported or has no such attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what}: expected a registered name or 'package.module:Name', got "
                         f"{spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"{what}: cannot import module {module_name!r} for {spec!r} ({e}). "
                          "Check the spelling and that its package is on PYTHONPATH.") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{what}: module {module_name!r} has no attribute {attr!r} (for "
                              f"{spec!r})") from None
    return obj


class Registry:
    """Names to objects (or lazy ``"module:Name"`` strings), with helpful lookup errors."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, object] = {}

    def register(self, name: str, target=None):
        """Register `target` under `name`; without a target, a decorator."""
        if target is None:
            return lambda obj: self.register(name, obj) or obj
        key = name.lower()
        self._entries[key] = target
        return target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries

    def get(self, name: str):
        """The object for a registered `name` or a ``package.module:Name`` string."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.what}: expected a name, got {name!r}; known: "
                             f"{', '.join(self.names())}")
        target = self._entries.get(name.lower())
        if target is None:
            if ":" in name:
                return import_object(name, self.what)
            raise ValueError(f"{self.what} {name!r} is not registered; expected one of "
                             f"{', '.join(self.names())}, or your own as 'package.module:Name'")
        if isinstance(target, str):
            target = import_object(target, f"{self.what} {name!r}")
            self._entries[name.lower()] = target
        return target


# -- optimizers ------------------------------------------------------------------------------
OPTIMIZERS = Registry("optimizer")
for _name, _cls in (("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW"),
                    ("rmsprop", "RMSprop")):
    OPTIMIZERS.register(_name, f"tensor.optim:{_cls}")


def optimizer_class(name: str):
    """The optimizer class for `name`: sgd, adam, adamw, rmsprop, any class of tensor.optim by
    its own name (``AdamW``), or ``package.module:Name``."""
    if name not in OPTIMIZERS and ":" not in name:
        import tensor.optim
        cls = getattr(tensor.optim, name, None)
        if isinstance(cls, type) and issubclass(cls, tensor.optim.Optimizer):
            return cls
    return OPTIMIZERS.get(name)


# -- losses ----------------------------------------------------------------------------------
LOSSES = Registry("loss")


def _flat_logits(fn):
    """A classification loss that also takes sequence logits (B, T, V) with targets (B, T):
    both are flattened to (B*T, V) and (B*T,), as a language model's loss is."""
    def loss(logits, target, reduction: str = "mean"):
        if logits.ndim == target.ndim + 1 and logits.ndim > 2:
            logits = logits.reshape(-1, logits.shape[-1])
            target = target.reshape(-1)
        return fn(logits, target, reduction=reduction)
    loss.__name__ = fn.__name__
    loss.classification = True   # accuracy = argmax over the last dim vs. the target
    return loss


def _register_losses():
    import tensor.nn.functional as F
    LOSSES.register("cross_entropy", _flat_logits(F.cross_entropy))
    LOSSES.register("nll", _flat_logits(F.nll_loss))
    LOSSES.register("nll_loss", LOSSES.get("nll"))
    LOSSES.register("mse", F.mse_loss)
    LOSSES.register("mse_loss", F.mse_loss)
    LOSSES.register("l1", F.l1_loss)
    LOSSES.register("bce_with_logits", F.binary_cross_entropy_with_logits)


def loss_function(name: str):
    """The loss for `name` (cross_entropy, nll, mse, l1, bce_with_logits or
    ``package.module:fn``): a function ``loss(output, target, reduction="mean")``."""
    if not LOSSES.names():
        _register_losses()
    return LOSSES.get(name)


# -- schedulers ------------------------------------------------------------------------------
SCHEDULERS = Registry("scheduler")
for _name, _cls in (("cosine", "CosineAnnealingLR"), ("step", "StepLR"),
                    ("multistep", "MultiStepLR"), ("exponential", "ExponentialLR"),
                    ("linear", "LinearLR"), ("lambda", "LambdaLR")):
    SCHEDULERS.register(_name, f"tensor.optim.lr_scheduler:{_cls}")


def build_scheduler(name, optimizer, args: dict, total_steps: int, warmup_steps: int = 0):
    """A learning-rate scheduler from a config.

    Args:
        name: cosine, step, multistep, exponential, linear, constant/None, a class of
            tensor.optim.lr_scheduler by its own name, or ``package.module:Name``.
        args: the scheduler's keyword arguments. ``cosine`` defaults T_max to the steps after
            warmup; ``linear`` decays to 0 over them (start_factor 1, end_factor 0) unless given.
        total_steps: scheduler steps in the whole run (of its interval: steps or epochs).
        warmup_steps: a linear warmup from lr/warmup_steps (LinearLR) before the schedule,
            joined with SequentialLR; with no schedule, warmup then constant.
    Returns:
        the scheduler, or None for a constant lr without warmup.
    """
    from tensor.optim import lr_scheduler as lrs
    args = dict(args or {})
    main_steps = max(1, total_steps - warmup_steps)
    if name is None or str(name).lower() in ("none", "constant"):
        if not warmup_steps:
            return None
        cls = None
    elif name not in SCHEDULERS and ":" not in name and isinstance(getattr(lrs, name, None), type):
        cls = getattr(lrs, name)
    else:
        cls = SCHEDULERS.get(name)
    if cls is lrs.CosineAnnealingLR:
        args.setdefault("T_max", main_steps)
    elif cls is lrs.LinearLR:
        args.setdefault("start_factor", 1.0)
        args.setdefault("end_factor", 0.0)
        args.setdefault("total_iters", main_steps)
    main = None
    if cls is not None:
        try:
            main = cls(optimizer, **args)
        except TypeError as e:
            raise ValueError(f"scheduler {name!r}: bad scheduler.args {args}: {e}") from None
    if not warmup_steps:
        return main
    warm = lrs.LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0,
                        total_iters=warmup_steps)
    if main is None:
        return warm
    return lrs.SequentialLR(optimizer, [warm, main], milestones=[warmup_steps])


# -- data sets -------------------------------------------------------------------------------
DATASETS = Registry("data set")


def _split_indices(n: int, test_fraction: float, seed: int, what: str):
    """(train, test) index lists: a seeded permutation, the first `test_fraction` for test."""
    import numpy as np
    if not 0 < test_fraction < 1:
        raise ValueError(f"data set {what}: test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


class Standardize:
    """x -> (x - mean) / std, a transform with statistics fixed at construction."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return (x - self.mean) / self.std


@DATASETS.register("digits")
def _digits(test_fraction: float = 0.25, split_seed: int = 0, normalize: bool = True,
            **kwargs):
    """scikit-learn's digits; it has no test split, so a fixed seeded 25% is held out.
    With `normalize`, pixels are standardised with the training split's mean and std (std at
    least 1/16, one grey level, so a pixel blank in training does not blow up)."""
    import numpy as np
    from .data import Subset
    from .data.datasets import Digits
    ds = Digits(**kwargs)
    train, test = _split_indices(len(ds), test_fraction, split_seed, "digits")
    if normalize:
        x = ds.data[train].astype(np.float32) / np.float32(16)
        ds.transform = Standardize(x.mean(0)[None], np.maximum(x.std(0), 1 / 16)[None]
                                   .astype(np.float32))
    return Subset(ds, train), Subset(ds, test)


def _train_test(cls_name):
    def build(**kwargs):
        from .data import datasets
        cls = getattr(datasets, cls_name)
        return cls(train=True, **kwargs), cls(train=False, **kwargs)
    build.__name__ = cls_name
    return build


DATASETS.register("mnist", _train_test("MNIST"))
DATASETS.register("fashion_mnist", _train_test("FashionMNIST"))
DATASETS.register("cifar10", _train_test("CIFAR10"))


@DATASETS.register("char")
def _char(path=None, block_size: int = 128, test_fraction: float = 0.1, text=None):
    """A character-level text (default: Shakespeare). Training samples are the windows at
    every offset of the first 1 - `test_fraction` of the text; the test split is the rest,
    cut into non-overlapping windows (each character predicted once, as a language model is
    evaluated), and no training window reaches into it."""
    from .data import Subset
    from .data.datasets import CharDataset
    ds = CharDataset(path, block_size=block_size, text=text)
    n_text = len(ds.data)
    cut = int(n_text * (1 - test_fraction))
    if cut - block_size < 1 or n_text - cut <= block_size:
        raise ValueError(f"data set char: a text of {n_text} characters is too short for "
                         f"block_size={block_size} and test_fraction={test_fraction}")
    # window i covers text[i : i + block_size + 1]
    return Subset(ds, range(0, cut - block_size)), Subset(ds, range(cut, len(ds), block_size))


DATASETS.register("shakespeare", _char)


@DATASETS.register("npy_folder")
def _npy_folder(root, test_root=None, test_fraction: float = 0.2, split_seed: int = 0,
                mmap: bool = False):
    """NpyFolder(root); the test split is NpyFolder(test_root), or a seeded share of root."""
    from .data import Subset
    from .data.datasets import NpyFolder
    ds = NpyFolder(root, mmap=mmap)
    if test_root is not None:
        return ds, NpyFolder(test_root, mmap=mmap)
    train, test = _split_indices(len(ds), test_fraction, split_seed, "npy_folder")
    return Subset(ds, train), Subset(ds, test)


def build_datasets(name: str, args: dict):
    """(train, test) data sets for a config's ``data.name`` and ``data.args``.

    A registered name builds both splits. A user's ``package.module:Name`` is called as
    ``Name(train=True, **args)`` and ``Name(train=False, **args)`` when it takes `train`;
    otherwise ``Name(**args)`` must return a data set (then there is no test split: None) or
    a (train, test) pair.
    """
    import inspect
    args = dict(args or {})
    target = DATASETS.get(name)
    if name.lower() in DATASETS:
        try:
            return target(**args)
        except TypeError as e:
            raise ValueError(f"data set {name!r}: bad data.args {args}: {e}") from None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    if "train" in params and "train" not in args:
        return target(train=True, **args), target(train=False, **args)
    out = target(**args)
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError(f"data set {name!r}: expected a data set or a (train, test) pair, "
                             f"got a tuple of {len(out)}")
        return out
    return out, None


def _base_dataset(ds):
    """The data set under Subsets (and other wrappers with a `.dataset`)."""
    while hasattr(ds, "dataset") and not hasattr(ds, "classes"):
        ds = ds.dataset
    return ds


def dataset_info(ds) -> dict:
    """What a model constructor may need from the data (``runtime.models.INFERRED_ARGS``):
    in_features, in_channels, image_size (square images), num_classes, vocab_size,
    block_size (None where unknown)."""
    import numpy as np
    sample = ds[0]
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    x = np.asarray(getattr(x, "array", x))
    base = _base_dataset(ds)
    classes = getattr(base, "classes", None)
    return {"in_features": int(np.prod(x.shape)) if x.ndim else 1,
            "in_channels": int(x.shape[0]) if x.ndim >= 3 else None,
            "image_size": int(x.shape[-1]) if x.ndim >= 3 and x.shape[-1] == x.shape[-2]
            else None,
            "num_classes": len(classes) if classes else None,
            "vocab_size": getattr(base, "vocab_size", None),
            "block_size": getattr(base, "block_size", None)}
