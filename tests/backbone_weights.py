"""Weights files of the feature extractors for tests: the FID Inception with
seeded random weights (full architecture) and a small DINOv2 ViT/14 with
seeded random weights (the released layout, 64 wide, 1 block), written as the
.npz files `--inception_weights` / `--dinov2_weights` take."""

import os

import numpy as np

import dinov2_random_weights
import inception_random_weights
from vaegan_jax.metrics import dinov2
from vaegan_jax.metrics import inception

SMALL_DINOV2 = dinov2.Config(embed_dim=64, depth=1, num_heads=1, mlp_ratio=2)


def inception_npz(folder) -> str:
  path = os.path.join(str(folder), 'random_inception.npz')
  state = inception_random_weights.random_state(inception.torch_shapes())
  inception.save_npz(state, path, source_sha256='1' * 64)
  return path


def small_dinov2_npz(folder) -> str:
  path = os.path.join(str(folder), 'small_dinov2.npz')
  state = dinov2_random_weights.random_state(dinov2.torch_shapes(SMALL_DINOV2))
  np.savez(path, __format_version__=np.array(1), **state)
  return path
