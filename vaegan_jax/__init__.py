"""vaegan_jax: VAEs, GANs and VAE-GAN hybrids in JAX under one training protocol."""

__version__ = "0.1.0"

import os as _os

_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only a data reader here.
