"""Installs the torch -> zgrad import alias at interpreter start when ZGRAD_TORCH_ALIAS is set.

Python imports ``sitecustomize`` from sys.path at start-up, so a script run through
tests/tutorials/_alias.py and every process it starts (multiprocessing spawn/forkserver
children re-import the script) see the alias. See tests/tutorials/_alias.py.
"""
import os

if os.environ.get("ZGRAD_TORCH_ALIAS") == "1":
    from tests.tutorials._alias import install

    install()
