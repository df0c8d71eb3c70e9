"""A Python process that a `pytest --fake-gpu` GPU test starts (the launcher and its workers)
installs the fake CuPy for its whole life: the test's fixture puts this folder first on
PYTHONPATH and sets ZGRAD_FAKE_GPU=1 (Note [Fake GPU runs] in tests/conftest.py). Python
imports sitecustomize at startup; without the variable this does nothing."""
import os

if os.environ.get("ZGRAD_FAKE_GPU") == "1":
    from tests import fakecuda

    fakecuda.install(fused=True)
