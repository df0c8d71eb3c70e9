"""PyTorch's own tutorials and examples, ported by renaming imports only, run on zgrad.

Each script in tests/tutorials/scripts keeps its tutorial's model, training step and API calls
as the tutorial writes them (see its docstring for what had to be replaced: datasets and
torchvision, sizes) and ends with its own check: "TRAINED <first> -> <last>" after asserting
that the loss fell (or PSNR rose), or "OK" where the tutorial does not train. Each runs in a
fresh interpreter where ``import torch`` gives zgrad (tests/tutorials/_alias.py), never in
this process (real torch is installed and other tests import it).
"""
import re
from pathlib import Path

import pytest

from tests.tutorials._alias import run

SCRIPTS = Path(__file__).parent / "scripts"

CASES = [
    # (script, args): source tutorial in each script's docstring
    ("basics_quickstart.py", ()),
    ("basics_tensors.py", ()),
    ("basics_autograd.py", ()),
    ("basics_buildmodel.py", ()),
    ("basics_optimization.py", ()),
    ("poly_autograd.py", ()),
    ("poly_custom_function.py", ()),
    ("poly_nn.py", ()),
    ("poly_optim.py", ()),
    ("dynamic_net.py", ()),
    ("nn_tutorial.py", ()),
    ("blitz_neural_networks.py", ()),
    ("blitz_cifar10.py", ()),
    ("examples_mnist.py", ()),
    ("examples_mnist_rnn.py", ()),
    ("examples_regression.py", ()),
    ("examples_time_sequence.py", ()),
    ("examples_super_resolution.py", ()),
    ("examples_vae.py", ()),
    ("examples_dcgan.py", ()),
    ("examples_word_language_model.py", ()),
    ("examples_word_language_model.py", ("--model", "Transformer", "--lr", "5")),
    ("examples_mnist_hogwild.py", ()),
    ("ddp_tutorial.py", ()),
    ("char_rnn_classification.py", ()),
    ("char_rnn_generation.py", ()),
    ("seq2seq_translation.py", ()),
    ("examples_forward_forward.py", ()),
    ("examples_reinforce.py", ()),
    ("examples_siamese_network.py", ()),
    ("spatial_transformer.py", ()),
    ("recipe_amp.py", ()),
    ("recipe_saving_loading.py", ()),
]


def _id(case):
    script, args = case
    return script[:-3] + ("-" + "-".join(a.strip("-") for a in args) if args else "")


@pytest.mark.parametrize("script, args", CASES, ids=[_id(c) for c in CASES])
def test_tutorial_runs_and_trains(script, args, tmp_path):
    proc = run(SCRIPTS / script, args, timeout_s=120, cwd=tmp_path)
    tail = (proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-3000:])
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{tail}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "OK" or re.match(r"TRAINED ", last), f"{script}: no trained check:\n{tail}"


def test_every_script_is_listed():
    listed = {s for s, _ in CASES}
    assert listed == {p.name for p in SCRIPTS.glob("*.py")}


def test_the_alias_gives_zgrad_and_refuses_unknown_torch_modules(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch, torch.nn as nn, torch.utils.data as data\n"
        "import torch.multiprocessing as mp\n"
        "from torch.utils.checkpoint import checkpoint\n"
        "import tensor, runtime.data, shm.multiprocessing\n"
        "assert torch is tensor and nn is tensor.nn and data is runtime.data\n"
        "assert mp is shm.multiprocessing and torch.utils.data is runtime.data\n"
        "assert tensor.nn.__spec__.name == 'tensor.nn'\n"
        "try:\n    import torchvision\nexcept ImportError:\n    pass\n"
        "try:\n    import torch.fx\nexcept ModuleNotFoundError as e:\n    print('refused', e.name)\n")
    proc = run(probe, cwd=tmp_path, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused torch.fx"
