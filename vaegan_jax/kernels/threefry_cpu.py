"""The threefry hash on CPU as straight-line code: the same random bits, ~10x faster.

Every random draw of the project (dropout masks, the VAE's reparameterisation
noise, latents, data order) goes through jax's threefry2x32 hash. On CPU jax
lowers its 20 rounds as a rolled loop (five iterations of four rounds, a
choice made to keep compile times down), which XLA:CPU runs as a `while` whose
every iteration writes the whole uint32 state to memory: a dropout mask of the
512x14x14x64 activations of the GAN's D took ~150 ms on 2 cores, a fifth of
a benchmark step. The unrolled lowering, which jax uses on every other
platform, fuses into one loop over the elements: ~11 ms for the same mask.
The bits are identical (the same hash; a test checks it), so every recorded
result reproduces.

`install()` registers, for the CPU platform, a lowering that picks the
unrolled form for hashes of at least MIN_UNROLLED counters and keeps the
rolled loop for smaller ones (splitting and folding keys): unrolled, those
would be fused into every consumer and double the compile time of a GAN
step (5 -> 10 s for dcgan28) for no run time gained. It is called by
`vaegan_jax.kernels.setup()` (which the entry points call before anything is
compiled; importing a module never installs it), changes only how this process lowers
threefry on CPU, and is a no-op (returning False) if jax's internals moved.
"""

import math

MIN_UNROLLED = 1024  # Counters; smaller hashes keep the rolled loop.

_installed = None


def install() -> bool:
  """Uses jax's unrolled threefry lowering on CPU for large hashes; True if
  it is in place."""
  global _installed
  if _installed is None:
    try:
      from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
      from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
      rolled = threefry2x32._threefry2x32_cpu_lowering_rule  # pylint: disable=protected-access
      unrolled = threefry2x32._threefry2x32_lowering_rule  # pylint: disable=protected-access

      def rule(ctx, *args):
        size = math.prod(ctx.avals_out[0].shape)
        return (unrolled if size >= MIN_UNROLLED else rolled)(ctx, *args)

      mlir.register_lowering(threefry2x32.threefry2x32_p, rule, platform='cpu')
      _installed = True
    except (ImportError, AttributeError):
      _installed = False
  return _installed
