"""Convolutional VAE encoder and decoder, scaled to the input size.

For an H x W x C image with s = num_stages(H) (2 for 28 and 32, 3 for 64)
and k = kernel_size (4 by default):
  Encoder: s x [Conv(width * 2^i, k, stride 2) -> ReLU] -> Dense(hidden) -> ReLU
           -> Dense(2 * latent) = (mean, logvar).
  Decoder: Dense(hidden) -> ReLU -> Dense(b * b * width * 2^(s-1)) -> ReLU
           -> s x [ConvTranspose(width * 2^(s-1-i), k, stride 2) -> ReLU]
           -> Conv(C, 3) = Bernoulli logits or Gaussian means, (B, H, W, C).
The decoder's first Dense is left out when its `hidden` is 0. With k = 3,
width 32, encoder hidden 16 and decoder hidden 0 this is the Keras VAE
example (keras.io/examples/generative/vae; its last stride-1 ConvTranspose
is the same function as the Conv here).

Class conditioning (CVAE, Sohn et al. 2015): with `num_classes` K > 0 the
encoder concatenates a one-hot label to its flattened conv features (before
Dense(hidden)) and the decoder concatenates it to z, so q(z|x, y) and
p(x|z, y). K = 0 (the default) builds exactly the unconditional networks.
"""


import flax.linen as nn
import jax.numpy as jnp

from vaegan_jax.models import conditioning
from vaegan_jax.models import layers
from vaegan_jax.models.common import Net, base_size, num_stages


class Encoder(Net):
  """x (B, H, W, C) in [0, 1] (and labels (B,) when num_classes > 0)
  -> (mean, logvar), each (B, latent_dim)."""
  latent_dim: int = 32
  width: int = 32
  hidden: int = 256
  kernel_size: int = 4

  @nn.compact
  def __call__(self, x, labels=None):
    x = x.astype(self.dtype)
    for i in range(num_stages(x.shape[1])):
      k = self.kernel_size
      x = layers.Conv(self.width * 2**i, (k, k), strides=(2, 2), padding='SAME',
                      dtype=self.dtype, impl=self.conv_impl, activation='relu')(x)
    x = x.reshape(x.shape[0], -1)
    if self.num_classes:
      x = jnp.concatenate([x, conditioning.one_hot(labels, self.num_classes, x.dtype)], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    out = nn.Dense(2 * self.latent_dim, dtype=self.dtype)(x).astype(jnp.float32)
    mean, logvar = jnp.split(out, 2, axis=-1)
    return mean, logvar


class Decoder(Net):
  """z (B, latent_dim) (and labels (B,) when num_classes > 0) -> per-pixel
  parameters (B, H, W, C), float32.

  With `learn_scale`, also holds a scalar param 'log_scale' (Gaussian
  likelihood with a learned, shared standard deviation). `hidden` 0 leaves
  out the first Dense.
  """
  image_shape: tuple = (28, 28, 1)
  width: int = 32
  hidden: int = 256
  learn_scale: bool = False
  kernel_size: int = 4

  @nn.compact
  def __call__(self, z, labels=None):
    height, _, channels = self.image_shape
    stages, base = num_stages(height), base_size(height)
    top = self.width * 2**(stages - 1)
    x = z.astype(self.dtype)
    if self.num_classes:
      x = jnp.concatenate([x, conditioning.one_hot(labels, self.num_classes, x.dtype)], -1)
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(base * base * top, dtype=self.dtype)(x))
    x = x.reshape(x.shape[0], base, base, top)
    for i in range(stages):
      k = self.kernel_size
      x = layers.ConvTranspose(self.width * 2**(stages - 1 - i), (k, k),
                               strides=(2, 2), padding='SAME', dtype=self.dtype,
                               impl=self.conv_impl, activation='relu')(x)
    x = layers.Conv(channels, (3, 3), padding='SAME', dtype=self.dtype,
                    impl=self.conv_impl)(x)
    if self.learn_scale:
      self.param('log_scale', nn.initializers.zeros, ())
    return x.astype(jnp.float32)
