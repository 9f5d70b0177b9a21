"""Published DCGANs, layer for layer: StudioGAN's CIFAR-10 DCGAN and Radford et al.'s 64 px DCGAN.

`models/gan.py` keeps the TensorFlow tutorial's DCGAN (and its 32/64 px
widenings); these two follow other sources exactly, for the literature
configs (`configs/gan.py:cifar10_dcgan`, `:celeb_a64`).

StudioGAN ('studiogan_dcgan'): POSTECH-CVLab/PyTorch-StudioGAN
`src/models/deep_conv.py` (backbone 'deep_conv', 32 px only), unconditional:
  G: z (128) -> Linear(4*4*512, bias) -> reshape (no BN or activation there)
     -> 3 x [ConvT(4, s2, p1, bias) -> BN -> ReLU]  widths 256, 128, 64
     -> Conv3x3(3, bias) -> tanh
  D: 3 x [Conv3x3(s1) -> BN -> ReLU -> Conv4x4(s2, p1) -> BN -> ReLU]  widths 64, 128, 256
     -> Conv3x3(512) -> BN -> ReLU -> sum over space -> Linear(1)
  ReLU in D too: StudioGAN's default `d_act_fn` ('ReLU'), which DCGAN.yaml
  keeps. BatchNorm is `ops.batchnorm_2d` (PyTorch momentum 0.1 = flax 0.9,
  epsilon 1e-4); kernels orthogonal, biases zero (`g_init = d_init = 'ortho'`).

Radford ('radford_dcgan'): Newmu/dcgan_code `faces/train_uncond_dcgan.py`
(the authors' code for the paper's faces; 64 px):
  G: z (100) -> Linear(4*4*1024, no bias) -> BN (per feature) -> ReLU
     -> 3 x [ConvT(5, s2, no bias) -> BN -> ReLU]  widths 512, 256, 128
     -> ConvT(5, s2, 3, no bias) -> tanh                         (ngf = 128)
  D: Conv(5, s2, 128, no bias) -> LReLU(0.2)
     -> 3 x [Conv(5, s2, no bias) -> BN -> LReLU(0.2)]  widths 256, 512, 1024
     -> Linear(1, no bias) = logit                                (ndf = 128)
  Weights N(0, 0.02); BN gains N(1, 0.02), biases 0; BN epsilon 1e-8.

Both discriminators hold BatchNorm: `batch_norm = True` tells
families/gan.py to pass D's batch statistics as mutable and to score real
and fake batches in separate calls, as both sources do. Compute runs in
`dtype`; params stay float32, outputs are float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegan_jax.errors import UserError
from vaegan_jax.models import layers

ORTHO = nn.initializers.orthogonal()
N02 = nn.initializers.normal(0.02)


def _gain_init(key, shape, dtype=jnp.float32):
  """Radford's BN gains: N(1, 0.02)."""
  return (1.0 + 0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _check(image_shape, size, name):
  if tuple(image_shape[:2]) != (size, size):
    raise UserError(f'model.arch={name!r} is defined for {size}x{size} images, not '
                    f'{image_shape[0]}x{image_shape[1]}; pick another model.arch.')


def _torch_bn(train, dtype):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-4, dtype=dtype)


def _radford_bn(train, dtype):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-8,
                      scale_init=_gain_init, dtype=dtype)


class StudioGANGenerator(nn.Module):
  """z (B, 128) -> images (B, 32, 32, C) in [-1, 1], float32."""
  image_shape: tuple = (32, 32, 3)
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, z, train: bool = False):
    _check(self.image_shape, 32, 'studiogan_dcgan')
    x = nn.Dense(4 * 4 * 512, dtype=self.dtype, kernel_init=ORTHO)(z.astype(self.dtype))
    x = x.reshape(x.shape[0], 4, 4, 512)
    for width in (256, 128, 64):
      x = layers.ConvTranspose(width, (4, 4), strides=(2, 2), padding='SAME', dtype=self.dtype,
                               kernel_init=ORTHO, impl=self.conv_impl)(x)
      x = nn.relu(_torch_bn(train, self.dtype)(x))
    x = layers.Conv(self.image_shape[2], (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    kernel_init=ORTHO, impl=self.conv_impl)(x)
    return jnp.tanh(x.astype(jnp.float32))


class StudioGANDiscriminator(nn.Module):
  """images (B, 32, 32, C) in [-1, 1] -> logits (B,), float32 (BatchNorm)."""
  image_shape: tuple = (32, 32, 3)
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  batch_norm = True

  @nn.compact
  def __call__(self, x, train: bool = False, update_stats: bool = False):
    del update_stats  # No spectral norm; BN statistics follow `train`.
    _check(self.image_shape, 32, 'studiogan_dcgan')
    conv = lambda w, k, s: layers.Conv(  # pylint: disable=unnecessary-lambda-assignment
        w, (k, k), strides=(s, s), padding=((1, 1), (1, 1)), dtype=self.dtype,
        kernel_init=ORTHO, impl=self.conv_impl)
    h = x.astype(self.dtype)
    for width in (64, 128, 256):
      h = nn.relu(_torch_bn(train, self.dtype)(conv(width, 3, 1)(h)))
      h = nn.relu(_torch_bn(train, self.dtype)(conv(width, 4, 2)(h)))
    h = nn.relu(_torch_bn(train, self.dtype)(conv(512, 3, 1)(h)))
    h = jnp.sum(h, axis=(1, 2))
    return nn.Dense(1, dtype=self.dtype, kernel_init=ORTHO)(h)[:, 0].astype(jnp.float32)


class RadfordGenerator(nn.Module):
  """z (B, 100) -> images (B, 64, 64, C) in [-1, 1], float32."""
  image_shape: tuple = (64, 64, 3)
  ngf: int = 128
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, z, train: bool = False):
    _check(self.image_shape, 64, 'radford_dcgan')
    top = 8 * self.ngf
    x = nn.Dense(4 * 4 * top, use_bias=False, dtype=self.dtype, kernel_init=N02)(
        z.astype(self.dtype))
    x = nn.relu(_radford_bn(train, self.dtype)(x)).reshape(x.shape[0], 4, 4, top)
    for mult in (4, 2, 1):
      x = layers.ConvTranspose(mult * self.ngf, (5, 5), strides=(2, 2), padding='SAME',
                               use_bias=False, dtype=self.dtype, kernel_init=N02,
                               impl=self.conv_impl)(x)
      x = nn.relu(_radford_bn(train, self.dtype)(x))
    x = layers.ConvTranspose(self.image_shape[2], (5, 5), strides=(2, 2), padding='SAME',
                             use_bias=False, dtype=self.dtype, kernel_init=N02,
                             impl=self.conv_impl)(x)
    return jnp.tanh(x.astype(jnp.float32))


class RadfordDiscriminator(nn.Module):
  """images (B, 64, 64, C) in [-1, 1] -> logits (B,), float32 (BatchNorm)."""
  image_shape: tuple = (64, 64, 3)
  ndf: int = 128
  leaky_slope: float = 0.2
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  batch_norm = True

  @nn.compact
  def __call__(self, x, train: bool = False, update_stats: bool = False):
    del update_stats
    _check(self.image_shape, 64, 'radford_dcgan')
    conv = lambda w: layers.Conv(  # pylint: disable=unnecessary-lambda-assignment
        w, (5, 5), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False,
        dtype=self.dtype, kernel_init=N02, impl=self.conv_impl)
    act = lambda h: nn.leaky_relu(h, self.leaky_slope)  # pylint: disable=unnecessary-lambda-assignment
    h = act(conv(self.ndf)(x.astype(self.dtype)))
    for mult in (2, 4, 8):
      h = act(_radford_bn(train, self.dtype)(conv(mult * self.ndf)(h)))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(1, use_bias=False, dtype=self.dtype, kernel_init=N02)(h)[:, 0].astype(
        jnp.float32)
