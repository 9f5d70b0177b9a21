"""vaegan_jax: VAEs, GANs and VAE-GAN hybrids in JAX under one training protocol."""

__version__ = "0.1.0"

from vaegan_jax import console as _console

_console.quiet_cpp_logging()  # Before XLA is loaded; see vaegan_jax/console.py.


def load(workdir: str, step: int | None = None):
  """The model saved in `workdir` (latest checkpoint, or `step`): see vaegan_jax.api."""
  from vaegan_jax.api import load as _load  # pylint: disable=g-import-not-at-top
  return _load(workdir, step)
