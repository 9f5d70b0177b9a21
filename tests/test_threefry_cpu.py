"""kernels/threefry_cpu: jax's unrolled threefry lowering on CPU, same bits."""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top

from vaegan_jax.kernels import threefry_cpu  # conftest calls kernels.setup().


def u32(*values):
  return jnp.asarray(np.array(values, np.uint32))


def lowered(shape):
  return jax.jit(lambda k: jax.random.bits(k, shape)).lower(
      jax.random.key(0)).as_text()


def test_large_hashes_lower_without_a_loop_small_ones_keep_it():
  """Rolled, XLA:CPU runs the hash as a `while` (slow on large arrays);
  key-sized hashes keep it (compile time)."""
  assert threefry_cpu.install()
  big = lowered((4, threefry_cpu.MIN_UNROLLED // 4))
  assert 'stablehlo.xor' in big  # The hash itself, lowered to plain ops.
  assert 'while' not in big
  assert 'while' in lowered((threefry_cpu.MIN_UNROLLED - 1,))


def test_known_answers():
  """Random123's known-answer vectors for threefry2x32 with 20 rounds."""
  for key, count, want in [
      ((0, 0), (0, 0), (0x6b200159, 0x99ba4efe)),
      ((0xffffffff,) * 2, (0xffffffff,) * 2, (0x1cb996fc, 0xbb002be7)),
      ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3),
       (0xc4923a9c, 0x483df7a0))]:
    got = jax.jit(threefry2x32.threefry_2x32)(u32(*key), u32(*count))
    assert [int(v) for v in np.asarray(got)] == list(want)


def test_same_bits_as_the_rolled_loop():
  """The installed lowering against jax's rolled (CPU default) formulation,
  evaluated as ordinary jax ops, on many counters and keys, above and below
  MIN_UNROLLED."""
  rng = np.random.default_rng(0)
  keys = rng.integers(0, 2**32, (5, 2), dtype=np.uint32)
  n = 2 * threefry_cpu.MIN_UNROLLED
  count = jnp.asarray(rng.integers(0, 2**32, (2, n), dtype=np.uint32))
  for (k1, k2), size in zip(keys, (n, n, n, 100, 3)):
    k1, k2 = jnp.uint32(k1), jnp.uint32(k2)
    want = jax.jit(lambda a, b, c, d: threefry2x32._threefry2x32_lowering(  # pylint: disable=protected-access
        a, b, c, d, use_rolled_loops=True))(k1, k2, *count[:, :size])
    got = jax.jit(lambda a, b, c, d: threefry2x32.threefry2x32_p.bind(
        a, b, c, d))(k1, k2, *count[:, :size])
    np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


def test_importing_changes_nothing_setup_installs():
  """Importing the models and kernels leaves jax's lowering alone; the
  explicit `kernels.setup()` (which the entry points call) installs it."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = ('import jax\n'
          'from vaegan_jax import kernels, families, models\n'
          'from vaegan_jax.models import layers, vae, gan\n'
          'def lowered():\n'
          '  return jax.jit(lambda k: jax.random.bits(k, (4096,))).lower(jax.random.key(0)).as_text()\n'
          'before = "while" in lowered()\n'
          'assert kernels.setup()\n'
          'print(before, "while" in lowered())\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ['True', 'False']
