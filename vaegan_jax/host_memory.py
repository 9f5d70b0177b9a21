"""Keep freed host memory in the process (glibc): no page faults on every step.

XLA:CPU allocates a jitted step's temporaries afresh at every execution
(125 MB for configs/bench/convvae28.py at batch 256). glibc serves
allocations over 32 MB with mmap and unmaps them when freed, and gives the
memory of per-thread arenas back to the system, so every step first-touches
its activations again: 32 000 minor page faults per convvae28 step, counted
with getrusage. `keep_freed_memory()` tells glibc (mallopt) to serve large
blocks from the heap (M_MMAP_MAX = 0), to return freed memory to the system
only above 2 GB at the heap's top (M_TRIM_THRESHOLD) and to use one arena
(M_ARENA_MAX = 1), so the step reuses its memory: 0 faults per step, and
convvae28 with conv_impl='onednn' went from 0.71x to 1.11x Keras (docs/speed.md). The price: the process keeps up to 2 GB it no longer uses, and its
threads share one malloc lock. Call it before jax starts its threads (first
thing in a program); it is a no-op (False) where glibc's mallopt is absent.
The same policy from the shell, for any command:
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int.


def keep_freed_memory() -> bool:
  """Sets the glibc malloc policy above; True if glibc accepted all of it."""
  if not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in (
      (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1)))
