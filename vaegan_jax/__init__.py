"""vaegan_jax: VAEs, GANs and VAE-GAN hybrids in JAX under one training protocol."""

__version__ = "0.1.0"
