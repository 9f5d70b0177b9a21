"""vaegan_jax: VAEs, GANs and VAE-GAN hybrids in JAX under one training protocol."""

__version__ = "0.1.0"

import os as _os

_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only a data reader here.


def load(workdir: str, step: int | None = None):
  """The model saved in `workdir` (latest checkpoint, or `step`): see vaegan_jax.api."""
  from vaegan_jax.api import load as _load  # pylint: disable=g-import-not-at-top
  return _load(workdir, step)
