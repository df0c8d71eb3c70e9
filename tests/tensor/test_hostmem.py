"""The host allocator tuning (Note [Host allocator]): on glibc, arrays of a few MiB come from
the heap instead of fresh mmaps, and the user's own malloc settings or the opt-out win."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run in a fresh interpreter: the settings are per process and fixed at import.
PROBE = r"""
import ctypes, numpy
import tensor, tensor._hostmem as h

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
a = numpy.ones(8 << 18, numpy.float32)  # 8 MiB
mapped = libc.mallinfo2().hblkhd - before  # bytes in mmapped blocks that the array added
print(h.tuned, mapped >= a.nbytes)
"""


def _glibc_with_mallinfo2():
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallinfo2
    except (OSError, AttributeError):
        return False
    return True


def _probe(**env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    e.pop("GLIBC_TUNABLES", None)
    e.pop("ZGRAD_HOST_ALLOC_TUNE", None)
    e.update(env, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_tuned_arrays_come_from_the_heap():
    assert _probe() == ["True", "False"]  # tuned: the 8 MiB array is not a fresh mmap


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("env", [dict(ZGRAD_HOST_ALLOC_TUNE="0"),
                                 dict(MALLOC_TRIM_THRESHOLD_="131072")])
def test_opt_out_and_user_settings_leave_glibc_alone(env):
    assert _probe(**env) == ["False", "True"]  # glibc's default: a fresh mmap for 8 MiB
