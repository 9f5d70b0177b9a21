"""DCGAN generator and discriminator, one family for 28, 32 and 64 pixels.

28x28 is exactly the TensorFlow DCGAN tutorial (tensorflow.org/tutorials/
generative/dcgan) that the seed articles reproduce:
  G: z (100) -> Dense(7*7*256, no bias) -> BN -> LReLU
     -> ConvT(128, 5, s1) -> BN -> LReLU -> ConvT(64, 5, s2) -> BN -> LReLU
     -> ConvT(C, 5, s2) -> tanh                        (no biases, as there)
  D: Conv(64, 5, s2) -> LReLU -> Dropout(0.3)
     -> Conv(128, 5, s2) -> LReLU -> Dropout(0.3) -> Dense(1) = logit
32x32 and 64x64 use the layout of Radford et al. 2016's DCGAN (a 4x4 base,
channels halving per 2x upsampling in G and doubling per 2x downsampling in
D) in the tutorial's layer pattern (5x5 kernels, BN in G only, LeakyReLU and
dropout in D). The widths follow the image size: at 32 px the tutorial's own
(G 256-128-64, D 32-64-128; 1.2x the 28-px networks' multiply-adds, a
quarter of Radford's 32-px widths'; measured 3.4x faster than those on the
2-core CPU, docs/datasets.md); at 64 px Radford's (G 1024-512-256-128, D
64-128-256-512). The `:cifar10` / `:svhn_cropped` configs use width
multipliers 2, i.e. Radford's 32-px widths (G 512-256-128, D 64-128-256).
`PLANS` holds the three, scaled by the width multipliers. conv_impl 'auto'
is 'onednn' (or 'gemm') on a CPU at every size (`layers.auto_impl`); XLA's
own strided convolutions ('fast') were the slow path for the 32-px shapes
(docs/datasets.md). Keras defaults are kept where the tutorial relies on them:
LeakyReLU slope 0.3, BatchNorm momentum 0.99 and epsilon 1e-3.

Class conditioning (`num_classes` K > 0; K = 0 builds exactly the networks
above): G concatenates a learned label embedding (`conditioning.
LabelEmbedding`, `label_dim` wide) to z at its input; D replaces its
Dense(1) head by the projection head ψ(φ(x)) + yᵀVφ(x) of Miyato & Koyama
2018 (`conditioning.ProjectionHead`, φ = the flattened last conv features).
With `aux_classifier`, D also returns ACGAN class logits (Odena et al. 2017)
from a Dense(K) on φ.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegan_jax.errors import UserError
from vaegan_jax.models import conditioning
from vaegan_jax.models import layers
from vaegan_jax.models.common import Net


@dataclasses.dataclass(frozen=True)
class Plan:
  """Layer widths for one image size (before width multipliers).

  base: side of G's first feature map (the Dense output).
  g_widths: G's Dense width, then the widths of the hidden ConvTs (the
    output ConvT has C channels).
  g_strides: strides of every ConvT after the Dense, output layer included.
  d_widths: widths of D's stride-2 convolutions.
  """
  base: int
  g_widths: tuple
  g_strides: tuple
  d_widths: tuple


PLANS = {
    28: Plan(7, (256, 128, 64), (1, 2, 2), (64, 128)),  # The TF tutorial.
    32: Plan(4, (256, 128, 64), (2, 2, 2), (32, 64, 128)),  # x2: Radford's 32-px DCGAN.
    64: Plan(4, (1024, 512, 256, 128), (2, 2, 2, 2), (64, 128, 256, 512)),
}


def plan(image_shape) -> Plan:
  """The `Plan` for an (H, W, C) image shape; square images of 28, 32 or 64."""
  height, width, _ = image_shape
  if height != width or height not in PLANS:
    raise UserError(f'The DCGAN models support square images of '
                    f'{", ".join(map(str, PLANS))} pixels, not {height}x{width}.')
  return PLANS[height]


def lecun_normal(key, shape, dtype=jnp.float32):
  """flax's default kernel init (truncated normal, variance 1 / fan_in; the
  same values), drawn as a flat vector and reshaped: XLA:CPU compiles the
  threefry hash over a 4-D shape several times slower than over a 1-D one."""
  fan_in = math.prod(shape[:-1])
  std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # Truncation at ±2 std.
  flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), jnp.float32)
  return (flat * std).reshape(shape).astype(dtype)


def _scale(width: int, mult: float) -> int:
  return max(1, int(round(width * mult)))


class Dropout(nn.Module):
  """Inverted dropout as `nn.Dropout` (rng 'dropout'), the mask drawn flat.

  The mask is drawn as a 1-D vector and reshaped: XLA:CPU compiles the
  threefry hash over a 4-D activation shape several times slower than over a
  flat one (0.70 s against 0.19 s for a 512x14x14x64 mask on 2 idle cores,
  for every D call in a step); run time is the same.
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    keep = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, (x.size,))
    return jnp.where(keep.reshape(x.shape), x / keep_prob, 0.0).astype(x.dtype)


class Generator(Net):
  """z (B, latent_dim) -> images (B, H, W, C) in [-1, 1] (tanh), float32.

  BatchNorm uses batch statistics when `train`, running averages otherwise
  (collection 'batch_stats').
  """
  image_shape: tuple = (28, 28, 1)
  width_mult: float = 1.0
  leaky_slope: float = 0.3
  label_dim: int = 32

  @nn.compact
  def __call__(self, z, train: bool = False, labels=None):
    p = plan(self.image_shape)
    impl = self.conv_impl
    if self.num_classes:
      z = jnp.concatenate([z.astype(self.dtype), conditioning.LabelEmbedding(
          self.num_classes, self.label_dim, dtype=self.dtype, name='label_embed')(labels)], -1)
    channels = self.image_shape[2]
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99,  # pylint: disable=unnecessary-lambda-assignment
                                epsilon=1e-3, dtype=self.dtype)
    act = lambda x: nn.leaky_relu(x, self.leaky_slope)  # pylint: disable=unnecessary-lambda-assignment
    top = _scale(p.g_widths[0], self.width_mult)
    x = nn.Dense(p.base * p.base * top, use_bias=False, dtype=self.dtype,
                 kernel_init=lecun_normal)(
        z.astype(self.dtype))
    x = act(norm()(x.reshape(x.shape[0], p.base, p.base, top)))
    for width, stride in zip(p.g_widths[1:], p.g_strides[:-1]):
      x = layers.ConvTranspose(_scale(width, self.width_mult), (5, 5),
                               strides=(stride, stride), padding='SAME',
                               use_bias=False, dtype=self.dtype, kernel_init=lecun_normal,
                               impl=impl)(x)
      x = act(norm()(x))
    stride = p.g_strides[-1]
    x = layers.ConvTranspose(channels, (5, 5), strides=(stride, stride),
                             padding='SAME', use_bias=False, dtype=self.dtype,
                             kernel_init=lecun_normal, impl=impl)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(Net):
  """images (B, H, W, C) in [-1, 1] -> logits (B,), float32.

  Dropout is active when `train` (rng 'dropout'). With `spectral_norm`, every
  weight is divided by its top singular value, estimated by one power
  iteration per call (Miyato et al. 2018, via `nn.SpectralNorm`); the power
  iteration vectors live in the 'batch_stats' collection and advance only
  when `update_stats`. Examples are processed independently (no batch
  statistics), as gradient penalties require.
  """
  image_shape: tuple = (28, 28, 1)
  width_mult: float = 1.0
  leaky_slope: float = 0.3
  dropout: float = 0.3
  spectral_norm: bool = False
  aux_classifier: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, update_stats: bool = False, labels=None):
    """logits (B,); with `aux_classifier`, (logits, class logits (B, K))."""
    p = plan(self.image_shape)
    impl = self.conv_impl

    def apply(layer, h):
      if self.spectral_norm:
        return nn.SpectralNorm(layer)(h, update_stats=update_stats)
      return layer(h)

    x = x.astype(self.dtype)
    for width in p.d_widths:
      x = apply(layers.Conv(_scale(width, self.width_mult), (5, 5), strides=(2, 2),
                            padding='SAME', dtype=self.dtype, kernel_init=lecun_normal,
                            impl=impl), x)
      x = nn.leaky_relu(x, self.leaky_slope)
      x = Dropout(self.dropout)(x, deterministic=not train)
    x = x.reshape(x.shape[0], -1)
    if not self.num_classes:
      return apply(nn.Dense(1, dtype=self.dtype, kernel_init=lecun_normal), x)[:, 0].astype(jnp.float32)
    logits = conditioning.ProjectionHead(
        self.num_classes, spectral_norm=self.spectral_norm, dtype=self.dtype,
        kernel_init=lecun_normal, name='projection')(x, labels, update_stats=update_stats)
    if not self.aux_classifier:
      return logits
    class_logits = apply(nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=lecun_normal,
                                  name='aux_classifier'), x)
    return logits, class_logits.astype(jnp.float32)
