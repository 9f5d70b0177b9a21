"""ResNet generator and discriminator of SNGAN (Miyato et al. 2018), as StudioGAN builds them.

Source: POSTECH-CVLab/PyTorch-StudioGAN `src/models/resnet.py` (backbone
'resnet'), unconditional (`g_cond_mtd` / `d_cond_mtd` 'W/O'), with
`g_conv_dim = d_conv_dim = 64` (StudioGAN's defaults, `src/config.py`):

  G (32 px): z (128) -> Linear(4*4*256, bias) -> 3 x GenBlock(256 -> 256)
     -> BN -> ReLU -> Conv3x3(3, bias) -> tanh
     GenBlock: BN -> ReLU -> up2 (nearest) -> Conv3x3 -> BN -> ReLU -> Conv3x3,
               plus the shortcut up2 -> Conv1x1.
  D (32 px): DiscOptBlock(3 -> 128) -> DiscBlock(128, down) -> DiscBlock(128)
     -> DiscBlock(128) -> ReLU -> sum over space -> Linear(1) = score
     DiscOptBlock: Conv3x3 -> ReLU -> Conv3x3 -> avgpool2, plus avgpool2 -> Conv1x1.
     DiscBlock:    ReLU -> Conv3x3 -> ReLU -> Conv3x3 (-> avgpool2), plus
                   Conv1x1 (-> avgpool2) where it downsamples or changes width.
  64 px: StudioGAN's '64' plans (G 1024-512-256-128-64, D 64-...-1024).

Every D layer is spectrally normalised (`spectral_norm`, StudioGAN's
`apply_d_sn`), with one power iteration per call as in `models/gan.py`
(`nn.SpectralNorm`; the vectors live in 'batch_stats' and advance only when
`update_stats`). BatchNorm is PyTorch's (momentum 0.1 = flax 0.9, epsilon
1e-4: StudioGAN's `ops.batchnorm_2d`). Kernels are initialised orthogonally,
biases to zero (StudioGAN's `g_init = d_init = 'ortho'`).

Compute runs in `dtype` (bfloat16 on accelerators); params stay float32 and
the outputs (images, scores) are float32.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vaegan_jax.errors import UserError
from vaegan_jax.models import layers

# (G block widths in, G block widths out, D widths in, D widths out, D downsamples),
# in units of g_conv_dim / d_conv_dim (StudioGAN's *_dims_collection).
PLANS = {
    32: ((4, 4, 4), (4, 4, 4), (2, 2, 2), (2, 2, 2, 2), (True, True, False, False)),
    64: ((16, 8, 4, 2), (8, 4, 2, 1), (1, 2, 4, 8), (1, 2, 4, 8, 16),
         (True, True, True, True, False)),
}
BOTTOM = 4

KERNEL_INIT = nn.initializers.orthogonal()


def check_shape(image_shape):
  height, width, _ = image_shape
  if height != width or height not in PLANS:
    raise UserError(f'The ResNet models support square images of '
                    f'{", ".join(map(str, PLANS))} pixels, not {height}x{width}.')


def _bn(train: bool, dtype):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-4,
                      dtype=dtype)


def _up2(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # F.interpolate(nearest, x2).


def _pool2(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class _Conv(nn.Module):
  """A 'SAME' conv with bias, orthogonal init, optionally spectrally normalised."""
  features: int
  kernel: int
  spectral_norm: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    pad = (self.kernel - 1) // 2
    conv = layers.Conv(self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                       dtype=self.dtype, kernel_init=KERNEL_INIT, impl=self.conv_impl)
    if self.spectral_norm:
      return nn.SpectralNorm(conv)(x, update_stats=update_stats)
    return conv(x)


class GenBlock(nn.Module):
  features: int
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda k: _Conv(self.features, k, dtype=self.dtype, conv_impl=self.conv_impl)  # pylint: disable=unnecessary-lambda-assignment
    shortcut = conv(1)(_up2(x))
    h = nn.relu(_bn(train, self.dtype)(x))
    h = conv(3)(_up2(h))
    h = nn.relu(_bn(train, self.dtype)(h))
    h = conv(3)(h)
    return h + shortcut


class Generator(nn.Module):
  """z (B, latent_dim) -> images (B, H, W, C) in [-1, 1] (tanh), float32."""
  image_shape: tuple = (32, 32, 3)
  conv_dim: int = 64
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, z, train: bool = False):
    check_shape(self.image_shape)
    g_in, g_out = PLANS[self.image_shape[0]][:2]
    top = g_in[0] * self.conv_dim
    x = nn.Dense(BOTTOM * BOTTOM * top, dtype=self.dtype, kernel_init=KERNEL_INIT)(
        z.astype(self.dtype))
    x = x.reshape(x.shape[0], BOTTOM, BOTTOM, top)
    for width in g_out:
      x = GenBlock(width * self.conv_dim, self.dtype, self.conv_impl)(x, train)
    x = nn.relu(_bn(train, self.dtype)(x))
    x = _Conv(self.image_shape[2], 3, dtype=self.dtype, conv_impl=self.conv_impl)(x)
    return jnp.tanh(x.astype(jnp.float32))


class DiscBlock(nn.Module):
  features: int
  downsample: bool
  optimized: bool = False  # StudioGAN's DiscOptBlock (the first block).
  spectral_norm: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, update_stats: bool):
    conv = lambda k: _Conv(self.features, k, self.spectral_norm, self.dtype, self.conv_impl)  # pylint: disable=unnecessary-lambda-assignment
    if self.optimized:
      shortcut = conv(1)(_pool2(x), update_stats)
      h = nn.relu(conv(3)(x, update_stats))
      h = _pool2(conv(3)(h, update_stats))
      return h + shortcut
    shortcut = x
    if self.downsample or x.shape[-1] != self.features:
      shortcut = conv(1)(x, update_stats)
      if self.downsample:
        shortcut = _pool2(shortcut)
    h = conv(3)(nn.relu(x), update_stats)
    h = conv(3)(nn.relu(h), update_stats)
    if self.downsample:
      h = _pool2(h)
    return h + shortcut


class Discriminator(nn.Module):
  """images (B, H, W, C) in [-1, 1] -> scores (B,), float32.

  No batch statistics: examples are processed independently. `train` is
  accepted for the families' interface (there is no dropout).
  """
  image_shape: tuple = (32, 32, 3)
  conv_dim: int = 64
  spectral_norm: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  batch_norm = False  # Read by families/gan.py: no BatchNorm in D.

  @nn.compact
  def __call__(self, x, train: bool = False, update_stats: bool = False):
    del train
    check_shape(self.image_shape)
    d_out, down = PLANS[self.image_shape[0]][3:]
    h = x.astype(self.dtype)
    for i, (width, ds) in enumerate(zip(d_out, down)):
      h = DiscBlock(width * self.conv_dim, ds, optimized=i == 0,
                    spectral_norm=self.spectral_norm, dtype=self.dtype,
                    conv_impl=self.conv_impl)(h, update_stats)
    h = jnp.sum(nn.relu(h), axis=(1, 2))
    dense = nn.Dense(1, dtype=self.dtype, kernel_init=KERNEL_INIT)
    if self.spectral_norm:
      out = nn.SpectralNorm(dense)(h, update_stats=update_stats)
    else:
      out = dense(h)
    return out[:, 0].astype(jnp.float32)
