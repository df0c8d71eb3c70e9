"""Run a PyTorch script on zgrad through a rename-only import alias.

    python -m tests.tutorials._alias SCRIPT.py [ARGS...]

runs SCRIPT in a fresh interpreter whose start-up (tests/tutorials/_site/sitecustomize.py, on
PYTHONPATH with ZGRAD_TORCH_ALIAS=1) installs ``torch`` and its submodules as *aliases* of
zgrad's modules in ``sys.modules`` (the table below, the one ARCHITECTURE.md gives); processes
the script starts get it too. Nothing is
adapted or patched: the script sees zgrad under PyTorch's names, exactly as a user who only
renamed imports would. A ``torch.*`` name that is not in the table fails to import with
ModuleNotFoundError, so a gap shows up as the error a user would get.

install() is only ever called in that subprocess: real torch is installed and other tests
import it in the pytest process.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
_SITE = Path(__file__).resolve().parent / "_site"

# torch module name -> zgrad module name (None: a synthesized package holding only submodules)
ALIASES = {
    "torch": "tensor",
    "torch.nn": "tensor.nn",
    "torch.nn.functional": "tensor.nn.functional",
    "torch.nn.init": "tensor.nn.init",
    "torch.nn.utils": "tensor.nn.utils",
    "torch.nn.utils.rnn": "tensor.nn.utils.rnn",
    "torch.nn.parameter": "tensor.nn.parameter",
    "torch.optim": "tensor.optim",
    "torch.optim.lr_scheduler": "tensor.optim.lr_scheduler",
    "torch.autograd": "tensor.autograd",
    "torch.amp": "tensor.amp",
    "torch.distributions": "tensor.distributions",
    "torch.utils": None,
    "torch.utils.data": "runtime.data",
    "torch.utils.checkpoint": "tensor.autograd._checkpoint",
    "torch.distributed": "runtime.distributed",
    "torch.nn.parallel": "runtime.distributed",     # DistributedDataParallel
    "torch.multiprocessing": "shm.multiprocessing",
}

# what `import torch` imports along with itself (torch.distributed is left to its own import:
# it costs zgrad ~0.4 s of start-up, and scripts using it import it by name)
EAGER = ("torch.nn", "torch.optim", "torch.autograd", "torch.utils.data",
         "torch.multiprocessing")


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``torch.*`` imports to zgrad modules; refuses every other ``torch.*`` name."""

    def __init__(self):
        self._specs = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch" and not fullname.startswith("torch."):
            return None
        if fullname not in ALIASES:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not aliased to zgrad)",
                                      name=fullname)
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        target = ALIASES[spec.name]
        if target is None:
            module = types.ModuleType(spec.name)
            module.__path__ = []
            return module
        module = importlib.import_module(target)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # An alias: the zgrad module already ran. Python set __spec__ to the torch.* spec;
        # put zgrad's back so the module's own relative imports and pickling stay right.
        name = module.__spec__.name
        original = self._specs.pop(name, None)
        if original is not None:
            module.__spec__ = original
        if name == "torch":
            # `import torch` alone makes torch.utils.data, torch.nn, ... reachable as
            # attributes (torch/__init__ imports them); scripts rely on it.
            for sub in EAGER:
                importlib.import_module(sub)


def install() -> None:
    """Put the finder first on sys.meta_path and drop any torch already imported."""
    for name in [n for n in sys.modules if n == "torch" or n.startswith("torch.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _AliasFinder())


def alias_env(base: dict | None = None) -> dict:
    """The environment that makes a fresh interpreter see zgrad as ``torch``."""
    env = dict(os.environ if base is None else base)
    paths = [str(_SITE), str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["ZGRAD_TORCH_ALIAS"] = "1"
    return env


def run(script, args=(), timeout_s: float = 60.0, cwd=None) -> subprocess.CompletedProcess:
    """Run `script` with `args` on zgrad under the alias; return the finished process."""
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=alias_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout_s)


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: python -m tests.tutorials._alias SCRIPT.py [ARGS...]")
    return subprocess.call([sys.executable, *argv], env=alias_env())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
