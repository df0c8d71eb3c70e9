"""Random number generation: ``Generator``, ``manual_seed`` and the default generator.

A Generator wraps a numpy PCG64 generator (``gen.np_rng``); CUDA tensors draw from a CuPy
generator (cuRAND XORWOW) with its own seed: ``manual_seed`` seeds both streams,
``tensor.cuda.manual_seed`` only the CUDA one, and CPU draws never shift the CUDA numbers (as in
PyTorch, where the CPU and CUDA generators are separate). See Note [Graph-safe RNG].
Every Generator, the default one included, starts from the fixed seed 67280421310721, the
value PyTorch's default generator reports too (``initial_seed()`` returns it until
``manual_seed``/``seed`` change it), so an unseeded program is reproducible run to run. The *numbers* differ from PyTorch's for the same seed:
PyTorch's CPU generator is a Mersenne Twister, zgrad's is PCG64.

Note [Graph-safe RNG]
~~~~~~~~~~~~~~~~~~~~~
CuPy's generator keeps its cuRAND states in a device array; every draw is a kernel that reads
and writes them back. So a CUDA graph that captured a draw (dropout) draws fresh numbers at each
replay: the "offset" lives on the device and each launch advances it, which is what PyTorch's
graph-safe Philox offsets achieve. Three rules keep it that way:
- the state array is created (and its init kernel run) before capture: tensor.cuda.graphs
  creates the default generator's before capture_begin, and a generator first used *during*
  capture raises (its init kernel would be captured and rerun at every replay, so every replay
  would draw the same numbers);
- reseeding (manual_seed) re-initialises the states *in place*, so graphs captured earlier see
  the new seed and never read a freed array; a capture keeps every CuPy generator it drew from
  alive (``_capture.keep``);
- fork_state/restore_state (checkpoint's recomputation) copy the state array device to device,
  which a capture records like any other copy.
"""
from __future__ import annotations

import threading

import numpy as np

from . import backend

_DEFAULT_SEED = 67280421310721
_capture = threading.local()   # .keep: list of CuPy generators used by the capture in progress


def _capturing() -> bool:
    return getattr(_capture, "keep", None) is not None


def _cuda_seed32(seed: int) -> int:
    # what cupy.random's BitGenerator derives from an int seed (SeedSequence -> one uint32)
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


class Generator:
    """A source of random numbers, as torch.Generator."""

    def __init__(self, device="cpu"):
        self.device = backend.device(device)
        self._seed = self._cuda_seed = _DEFAULT_SEED
        self.np_rng = np.random.Generator(np.random.PCG64(self._seed))
        self._cupy_rng = None

    def manual_seed(self, seed: int) -> "Generator":
        """Seed the CPU and the CUDA streams."""
        seed = int(seed)
        if seed < 0:
            seed &= (1 << 64) - 1
        self._seed = seed
        self.np_rng = np.random.Generator(np.random.PCG64(seed))
        self.manual_seed_cuda(seed)
        return self

    def manual_seed_cuda(self, seed: int) -> "Generator":
        """Seed the CUDA stream only (tensor.cuda.manual_seed); in place, see
        Note [Graph-safe RNG]."""
        seed = int(seed) & ((1 << 64) - 1)
        self._cuda_seed = seed
        if self._cupy_rng is not None:
            if _capturing():
                raise RuntimeError("manual_seed: called during CUDA graph capture; the reseed "
                                   "would be recorded and rerun at every replay. Seed before "
                                   "capture (replays continue from the seeded state).")
            if not _reinit_in_place(self._cupy_rng, seed):
                self._cupy_rng = None
        return self

    def seed(self) -> int:
        """Reseed from OS entropy and return the new seed."""
        s = int(np.random.SeedSequence().entropy) & ((1 << 63) - 1)
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        return self._seed

    def initial_seed_cuda(self) -> int:
        return self._cuda_seed

    def get_state(self):
        """The CPU stream's state as a uint8 tensor (picklable, msgpack-able via tolist)."""
        import json
        from .creation import tensor
        raw = json.dumps({"seed": self._seed, "bit_generator": self.np_rng.bit_generator.state},
                         default=int).encode()
        return tensor(np.frombuffer(raw, np.uint8).copy())

    def set_state(self, state) -> "Generator":
        """Restore the CPU stream from get_state() (the CUDA stream is left as it is, as
        torch.set_rng_state leaves torch.cuda's generator)."""
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
        return self

    def fork_state(self):
        """A snapshot that restore_state() returns to (checkpoint's recomputation uses it).

        The CUDA stream's snapshot is a device copy of its cuRAND states (no host sync, and
        capturable: Note [Graph-safe RNG]); None when no CUDA draw happened yet. A CuPy
        without those internals gets the stream reseeded from the numpy stream instead.
        """
        cuda = None
        if self._cupy_rng is not None:
            st = _device_state(self._cupy_rng)
            if st is not None:
                cuda = ("state", st.copy())
            else:
                seed = int(self.np_rng.integers(0, 2 ** 63))
                self._cupy_rng = _new_cupy_rng(seed)
                cuda = ("seed", seed)
        return self.np_rng.bit_generator.state, cuda

    def restore_state(self, snapshot) -> None:
        state, cuda = snapshot
        self.np_rng.bit_generator.state = state
        if cuda is None:   # no CUDA stream at the snapshot: back to a freshly seeded one
            if self._cupy_rng is not None and not _reinit_in_place(self._cupy_rng,
                                                                   self._cuda_seed):
                self._cupy_rng = None
        elif cuda[0] == "state" and _device_state(self._cupy_rng) is not None:
            _device_state(self._cupy_rng)[...] = cuda[1]
        elif cuda[0] == "seed":
            self._cupy_rng = _new_cupy_rng(cuda[1])

    def cupy_rng(self):
        """The CuPy generator for CUDA draws (created at the first draw, from the CUDA seed)."""
        rng = self._cupy_rng
        keep = getattr(_capture, "keep", None)
        if rng is None:
            if keep is not None:
                raise RuntimeError(
                    "CUDA graph capture: this Generator draws CUDA random numbers for the first "
                    "time inside the capture; its state would be initialised by the graph at "
                    "every replay and repeat the same numbers. Draw from it once before capture "
                    "(run the warm-up iterations) and capture again.")
            rng = self._cupy_rng = _new_cupy_rng(self._cuda_seed)
        if keep is not None:
            keep.append(rng)   # the graph baked in the address of its state array
        return rng

    def get_state_cuda(self):
        """The CUDA stream's state (its cuRAND states, copied to the host) as a uint8 tensor;
        an empty one when no CUDA draw happened yet."""
        from .creation import tensor
        if self._cupy_rng is None:
            return tensor(np.zeros(0, np.uint8))
        return tensor(backend.to_numpy(self._cuda_state("get_rng_state")).view(np.uint8))

    def set_state_cuda(self, state) -> "Generator":
        raw = backend.to_numpy(state.array if hasattr(state, "array") else state)
        if raw.size == 0:   # saved before any CUDA draw: back to the freshly seeded stream
            if self._cupy_rng is not None and not _reinit_in_place(self._cupy_rng,
                                                                   self._cuda_seed):
                self._cupy_rng = None
            return self
        self.cupy_rng()
        st = self._cuda_state("set_rng_state")
        if raw.nbytes != st.nbytes:
            raise RuntimeError(f"set_rng_state (cuda): expected {st.nbytes} bytes from "
                               f"tensor.cuda.get_rng_state(), got {raw.nbytes}.")
        st[...] = backend.to_device(raw.view(st.dtype), backend.device("cuda"))
        return self

    def _cuda_state(self, what: str):
        st = _device_state(self._cupy_rng)
        if st is None:
            raise RuntimeError(f"{what} (cuda): this CuPy's generator does not expose its cuRAND "
                               "states (bit_generator._state); use tensor.cuda.manual_seed.")
        return st

    def __repr__(self):
        return f"<tensor.Generator seed={self._seed}>"


def _new_cupy_rng(seed: int):
    return backend.xp_for(backend.device("cuda")).random.default_rng(seed)


def _device_state(rng):
    """The device array of a CuPy generator's cuRAND states (None when unavailable)."""
    return getattr(getattr(rng, "bit_generator", None), "_state", None)


def _reinit_in_place(rng, seed: int) -> bool:
    """Re-initialise a CuPy generator's cuRAND states for `seed` in the same device array
    (Note [Graph-safe RNG]); False when this CuPy lacks the internals it relies on."""
    try:
        from cupy.random._generator_api import init_curand  # type: ignore
        bg = rng.bit_generator
        ptr, size, kind = bg._state.data.ptr, bg._size, bg.generator
    except (ImportError, AttributeError):
        return False
    bg._seed = _cuda_seed32(seed)
    init_curand(kind, ptr, bg._seed, size)
    return True


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
    if backend.device(device).type == "cuda":   # drawn on the device: no host copy, capturable
        r = g.cupy_rng().integers(low, high, size=shape, dtype=np.int64)
        return r.astype(dtype, copy=False)
    r = g.np_rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype, copy=False)
    return r


def permutation_array(n, device, generator=None):
    return backend.to_device(_gen(generator).np_rng.permutation(n).astype(np.int64), device)
