"""Random helpers shared by samplers and the loader: which generator to draw from, and seeds.

Samplers accept a ``tensor.Generator`` (PyTorch's type) or a ``numpy.random.Generator``; None
means zgrad's default generator, so ``tensor.manual_seed(s)`` makes shuffling reproducible.
"""
from __future__ import annotations

import numpy as np

_SEED_HIGH = 2 ** 63 - 1


def resolve_generator(generator):
    """`generator`, or zgrad's default generator when it is None."""
    if generator is None:
        import tensor
        return tensor.default_generator
    return generator


def np_rng(generator) -> np.random.Generator:
    """The numpy Generator behind a tensor.Generator (or the numpy Generator itself)."""
    if isinstance(generator, np.random.Generator):
        return generator
    rng = getattr(generator, "np_rng", None)
    if rng is None:
        raise TypeError("expected generator to be a tensor.Generator or numpy.random.Generator, "
                        f"got {type(generator).__name__}")
    return rng


def draw_seed(generator=None) -> int:
    """A fresh 63-bit seed drawn from `generator` (default: zgrad's default generator)."""
    return int(np_rng(resolve_generator(generator)).integers(0, _SEED_HIGH))


def rng_from_seed(seed: int) -> np.random.Generator:
    """A numpy Generator for one epoch's permutation, rebuilt exactly from its seed."""
    return np.random.Generator(np.random.PCG64(int(seed)))


def generator_state(generator):
    """A picklable snapshot of a generator (None for None)."""
    if generator is None:
        return None
    if isinstance(generator, np.random.Generator):
        return {"numpy": generator.bit_generator.state}
    return {"tensor": generator.get_state()}


def set_generator_state(generator, state) -> None:
    """Restore a snapshot from generator_state() into `generator`."""
    if generator is None or state is None:
        return
    if "numpy" in state:
        np_rng(generator).bit_generator.state = state["numpy"]
    else:
        generator.set_state(state["tensor"])
