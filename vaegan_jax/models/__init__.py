"""Flax modules of the three families and their layers (the CPU kernels the
layers call live in vaegan_jax/kernels)."""
