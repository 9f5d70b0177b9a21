"""The VAE/GAN discriminator, which also returns its l-th layer, Dis_l.

Larsen, Sønderby, Larochelle & Winther, "Autoencoding beyond pixels using a
learned similarity metric", ICML 2016. The encoder is the VAE's
(`models.vae.Encoder`) and the decoder is the DCGAN generator
(`models.gan.Generator`); the discriminator is this one, because the
reconstruction loss is measured in the space of its l-th layer, so it returns
that representation beside the logit.

For an H x W x C image with s = num_stages(H) (2 for 28 and 32, 3 for 64):
  s x [Conv(width * 2^i, k, stride 2) -> LeakyReLU]
      the last conv's output, before its activation, is Dis_l
  -> Dropout -> Dense(1) = logit.
Dis_l is the last convolution's output before its nonlinearity, as in the
authors' code (`recon_depth` counts layers up to it). Dropout sits after it,
so Dis_l is a deterministic function of the image and of D's params alone.

Unlike the paper's discriminator this one has no BatchNorm and no hidden
Dense layer: with them, D beat the decoder within 100 steps on MNIST-5k
(D(x) 0.995, D(x̃) 0.03) and prior samples never improved. The layout is the
TensorFlow DCGAN tutorial's discriminator that `models.gan` uses, with
dropout only at the head.

With `num_classes` K > 0 the Dense(1) head becomes the projection head of
Miyato & Koyama 2018 (`conditioning.ProjectionHead`) on the dropped-out
features; Dis_l is unchanged. K = 0 builds exactly the network above.
"""


import flax.linen as nn
import jax.numpy as jnp

from vaegan_jax.models import conditioning
from vaegan_jax.models import layers
from vaegan_jax.models.common import Net, num_stages


class Discriminator(Net):
  """images (B, H, W, C) in [-1, 1] -> (logits (B,), Dis_l (B, h, w, c)), float32.

  Dropout is active when `train` (rng 'dropout').
  """
  width: int = 32
  kernel: int = 5
  leaky_slope: float = 0.2
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x, train: bool = False, labels=None):
    x = x.astype(self.dtype)
    for i in range(num_stages(x.shape[1])):
      features = layers.Conv(self.width * 2**i, (self.kernel, self.kernel), strides=(2, 2),
                             padding='SAME', dtype=self.dtype, impl=self.conv_impl)(x)
      x = nn.leaky_relu(features, self.leaky_slope)
    x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape(x.shape[0], -1))
    if self.num_classes:
      logits = conditioning.ProjectionHead(
          self.num_classes, dtype=self.dtype, kernel_init=nn.linear.default_kernel_init,
          name='projection')(x, labels)
    else:
      logits = nn.Dense(1, dtype=self.dtype)(x)[:, 0]
    return logits.astype(jnp.float32), features.astype(jnp.float32)
