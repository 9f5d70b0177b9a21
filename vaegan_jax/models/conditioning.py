"""Class conditioning layers: a label embedding and the projection head.

Every conditional model of the project is its unconditional model plus these
layers; with `num_classes = 0` the models create none of them, so their
parameter trees (and old checkpoints) are unchanged.

  LabelEmbedding   labels (B,) -> (B, D): a learned row per class. Labels
                   outside [0, K) (the pipeline's -1 for "no label") give a
                   zero vector instead of reading out of bounds.
  ProjectionHead   features φ(x) (B, F), labels y (B,) -> the projection
                   discriminator's logit ψ(φ(x)) + yᵀ V φ(x)
                   (Miyato & Koyama, "cGANs with projection discriminator",
                   ICLR 2018, eq. 3), with ψ a Dense(1) and V the (K, F)
                   class embedding; optionally spectrally normalised.

How the generators take the label (documented here once): the small DCGAN
and the VAE decoder concatenate a label embedding to z at their input (the
"label embedding at the input" conditioning of the original cGAN, Mirza &
Osindero 2014, and of the CVAE, Sohn et al. 2015); the VAE encoder
concatenates it to its flattened convolutional features. Conditional
BatchNorm is not used: for generators of two or three layers the input
embedding reaches every layer already.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def one_hot(labels, num_classes: int, dtype=jnp.float32):
  """labels (B,) int -> (B, K); all zeros for labels outside [0, K)."""
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)


class LabelEmbedding(nn.Module):
  """labels (B,) int -> (B, features): row y of a learned (K, features) table.

  Param 'embedding' (num_classes, features), N(0, 1) initialised like
  `nn.Embed` unless `embedding_init` says otherwise. Computed as one_hot(y) @ table, so invalid labels (-1) map to
  zeros rather than to NaN or a clamped row.
  """
  num_classes: int
  features: int
  dtype: Any = jnp.float32
  embedding_init: Any = nn.initializers.normal(1.0)

  @nn.compact
  def __call__(self, labels):
    table = self.param('embedding', self.embedding_init,
                       (self.num_classes, self.features), jnp.float32)
    return one_hot(labels, self.num_classes, self.dtype) @ table.astype(self.dtype)


class ProjectionHead(nn.Module):
  """φ (B, F), y (B,) -> logits (B,) = ψ(φ) + <V[y], φ>, float32.

  Params: 'psi' (Dense(1): kernel (F, 1), bias (1,)) and 'embed'
  ('embedding' (K, F), V, initialised N(0, 1/F) so that the projection term
  starts at the scale of ψ's output). With `spectral_norm`, ψ's kernel and V are divided
  by their top singular values (power iteration vectors in 'batch_stats',
  advanced only when `update_stats`), as Miyato & Koyama do for both.
  """
  num_classes: int
  spectral_norm: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, features, labels, update_stats: bool = False):
    features = features.astype(self.dtype)
    psi = nn.Dense(1, dtype=self.dtype, kernel_init=self.kernel_init, name='psi')
    embed = LabelEmbedding(
        self.num_classes, features.shape[-1], dtype=self.dtype, name='embed',
        embedding_init=nn.initializers.variance_scaling(1.0, 'fan_out', 'normal'))
    if self.spectral_norm:
      psi_out = nn.SpectralNorm(psi)(features, update_stats=update_stats)
      v = nn.SpectralNorm(embed)(labels, update_stats=update_stats)
    else:
      psi_out, v = psi(features), embed(labels)
    return (psi_out[:, 0] + jnp.sum(v * features, axis=-1)).astype(jnp.float32)
