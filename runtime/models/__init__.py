"""Models selectable by name in a config (``model.name``).

    mlp                 runtime.models.mlp:MLP
    cnn                 runtime.models.cnn:CNN
    char_lstm           runtime.models.charlm:CharLSTM
    char_transformer    runtime.models.charlm:CharTransformer

Entries are import strings, resolved on first use. A user's own model is named as
``package.module:Name``; ``register_model(name, cls_or_import_string)`` adds a name.
"""
from __future__ import annotations

import inspect

from ..registry import Registry

MODELS = Registry("model")
MODELS.register("mlp", "runtime.models.mlp:MLP")
MODELS.register("cnn", "runtime.models.cnn:CNN")
MODELS.register("char_lstm", "runtime.models.charlm:CharLSTM")
MODELS.register("char_transformer", "runtime.models.charlm:CharTransformer")

# constructor arguments the trainer fills in from the data set when a config leaves them out
INFERRED_ARGS = ("in_features", "in_channels", "image_size", "num_classes", "vocab_size",
                 "block_size")


def register_model(name: str, target) -> None:
    """Make `target` (a class, a factory, or ``"package.module:Name"``) selectable as `name`."""
    MODELS.register(name, target)


def get_model_class(name: str):
    """The class (or factory) registered as `name`, or a user's ``package.module:Name``."""
    return MODELS.get(name)


def build_model(name: str, args: dict | None = None, inferred: dict | None = None):
    """Construct model `name` with `args`; entries of `inferred` (from the data set) are added
    for the constructor parameters of INFERRED_ARGS that `args` does not give.

    Raises:
        ValueError: the constructor refuses the arguments (the message lists them).
    """
    cls = get_model_class(name)
    kwargs = dict(args or {})
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (inferred or {}).items():
        if key in INFERRED_ARGS and key in params and key not in kwargs and value is not None:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"model {name!r}: cannot construct {getattr(cls, '__name__', cls)} "
                         f"with {kwargs}: {e}. Check model.args in the config.") from None
