"""Random number generation: ``Generator``, ``manual_seed`` and the default generator.

A Generator wraps a numpy PCG64 generator (``gen.np_rng``); CUDA tensors draw from a CuPy
generator seeded from the numpy stream. Every Generator, the default one included, starts from
the fixed seed 67280421310721, the value PyTorch's default generator reports too
(``initial_seed()`` returns it until ``manual_seed``/``seed`` change it), so an unseeded
program is reproducible run to run. The *numbers* differ from PyTorch's for the same seed:
PyTorch's CPU generator is a Mersenne Twister, zgrad's is PCG64.
"""
from __future__ import annotations

import numpy as np

from . import backend

_DEFAULT_SEED = 67280421310721


class Generator:
    """A source of random numbers, as torch.Generator."""

    def __init__(self, device="cpu"):
        self.device = backend.device(device)
        self._seed = _DEFAULT_SEED
        self.np_rng = np.random.Generator(np.random.PCG64(self._seed))
        self._cupy_rng = None

    def manual_seed(self, seed: int) -> "Generator":
        seed = int(seed)
        if seed < 0:
            seed &= (1 << 64) - 1
        self._seed = seed
        self.np_rng = np.random.Generator(np.random.PCG64(seed))
        self._cupy_rng = None
        return self

    def seed(self) -> int:
        """Reseed from OS entropy and return the new seed."""
        s = int(np.random.SeedSequence().entropy) & ((1 << 63) - 1)
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self):
        """The generator's state as a uint8 tensor (picklable, msgpack-able via tolist)."""
        import json
        from .creation import tensor
        raw = json.dumps({"seed": self._seed, "bit_generator": self.np_rng.bit_generator.state},
                         default=int).encode()
        return tensor(np.frombuffer(raw, np.uint8).copy())

    def set_state(self, state) -> "Generator":
        import json
        raw = bytes(backend.to_numpy(state.array if hasattr(state, "array") else state)
                    .astype(np.uint8))
        try:
            d = json.loads(raw)
            self._seed = int(d["seed"])
            bg = np.random.PCG64()
            bg.state = d["bit_generator"]
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError("Generator.set_state: expected a state from get_state(), got "
                               f"something else ({e})") from None
        self.np_rng = np.random.Generator(bg)
        self._cupy_rng = None
        return self

    def fork_state(self):
        """A snapshot that restore_state() returns to (checkpoint's recomputation uses it).

        The CuPy stream, when in use, is reseeded from the numpy stream here, so that the
        snapshot can recreate it exactly.
        """
        cuda_seed = None
        if self._cupy_rng is not None:
            cuda_seed = int(self.np_rng.integers(0, 2 ** 63))
            self._cupy_rng = backend.xp_for(backend.device("cuda")).random.default_rng(cuda_seed)
        return self.np_rng.bit_generator.state, cuda_seed

    def restore_state(self, snapshot) -> None:
        state, cuda_seed = snapshot
        self.np_rng.bit_generator.state = state
        if cuda_seed is not None:
            self._cupy_rng = backend.xp_for(backend.device("cuda")).random.default_rng(cuda_seed)
        else:  # no CuPy stream at the snapshot: the next CUDA draw seeds one from np_rng again
            self._cupy_rng = None

    def cupy_rng(self):
        """The CuPy generator for CUDA draws, seeded from this generator."""
        if self._cupy_rng is None:
            cp = backend.xp_for(backend.device("cuda"))
            self._cupy_rng = cp.random.default_rng(self.np_rng.integers(0, 2 ** 63))
        return self._cupy_rng

    def __repr__(self):
        return f"<tensor.Generator seed={self._seed}>"


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator (weights, dropout masks, samplers)."""
    return default_generator.manual_seed(seed)


def seed() -> int:
    return default_generator.seed()


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state():
    return default_generator.get_state()


def set_rng_state(state) -> None:
    default_generator.set_state(state)


def _gen(generator):
    return default_generator if generator is None else generator


def _draw(kind, shape, dtype, device, generator):
    """Standard uniform or normal samples of `dtype` on `device`."""
    g = _gen(generator)
    dtype = np.dtype(dtype)
    fdt = dtype if dtype in (np.float32, np.float64) else np.float64
    rng = g.cupy_rng() if backend.device(device).type == "cuda" else g.np_rng
    r = rng.random(shape, dtype=fdt) if kind == "uniform" else rng.standard_normal(shape, dtype=fdt)
    return r, dtype


def uniform_array(shape, dtype, device, generator=None, low=0.0, high=1.0):
    """An array of U[low, high) samples on `device`."""
    r, dtype = _draw("uniform", shape, dtype, device, generator)
    if low != 0.0 or high != 1.0:
        r = r * (high - low) + low
    return r.astype(dtype, copy=False)


def normal_array(shape, dtype, device, generator=None, mean=0.0, std=1.0):
    """An array of N(mean, std^2) samples on `device`."""
    r, dtype = _draw("normal", shape, dtype, device, generator)
    if mean != 0.0 or std != 1.0:
        r = r * std + mean
    return r.astype(dtype, copy=False)


def integers_array(low, high, shape, dtype, device, generator=None):
    g = _gen(generator)
    if high <= low:
        raise RuntimeError(f"random_: expected low < high, got low={low}, high={high}")
    r = g.np_rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype, copy=False)
    return backend.to_device(r, device)


def permutation_array(n, device, generator=None):
    return backend.to_device(_gen(generator).np_rng.permutation(n).astype(np.int64), device)
