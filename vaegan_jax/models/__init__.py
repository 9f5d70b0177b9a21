"""Flax modules of the three families, and the CPU kernels they use."""

from vaegan_jax.models import threefry_cpu as _threefry_cpu

_threefry_cpu.install()  # Same random bits, faster on CPU: see threefry_cpu.py.
