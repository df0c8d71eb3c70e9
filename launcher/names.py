"""Check a config's registry names (model, data set, optimizer, scheduler, loss) before any
worker starts, with the config's file:line and the closest registered name."""
from __future__ import annotations

import difflib


def _lookups():
    """(key path, lookup(name), registered names) for every name a config gives."""
    from runtime import registry
    from runtime.models import MODELS, get_model_class
    registry.loss_function("cross_entropy")     # fills LOSSES on first use
    return [(("model", "name"), get_model_class, MODELS.names()),
            (("data", "name"), registry.DATASETS.get, registry.DATASETS.names()),
            (("optim", "name"), registry.optimizer_class, registry.OPTIMIZERS.names()),
            (("scheduler", "name"), registry.SCHEDULERS.get, registry.SCHEDULERS.names()),
            (("train", "loss"), registry.loss_function, registry.LOSSES.names())]


def check_names(cfg, config_path: str, overrides=(), import_user_code: bool = False) -> None:
    """Raise ConfigError for a name no registry knows.

    ``package.module:Name`` entries are imported only with `import_user_code` (``zgrad check``);
    ``zgrad run`` leaves user code to the workers, as torchrun does.
    """
    from runtime.config import ConfigError, locate
    try:
        lookups = _lookups()
    except ImportError:   # no trainer in this install: the workers will say what is missing
        return
    for path, lookup, known in lookups:
        name = getattr(getattr(cfg, path[0]), path[1])
        if name is None or (":" in name and not import_user_code):
            continue
        try:
            lookup(name)
        except (ValueError, ImportError) as e:
            close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = locate(config_path, overrides, path)
            raise ConfigError(f"{where}: {'.'.join(path)}: {str(e).rstrip('.')}.{hint}") from None
