"""Convolutional VAE on the embedded MNIST-5k digits.

  python -m vaegan_jax.main --config=configs/vae.py --workdir=/tmp/vae

What to expect: 1500 steps of batch 128 (~43 epochs of 4500 digits). Measured
on a heavily shared 2-core CPU: ~75 images/s, test ELBO -119 nats at step 500
and -114 at step 800 (Bernoulli likelihood), recognisable digits in the grid
from step 500 on; a quiet machine runs several times faster.

Variants: `configs/vae.py:smoke` (a few seconds), `:cifar10`, `:celeb_a`
(real TFDS datasets, need network or a prepared data_dir).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  config = common.get_base_config()
  config.model.family = 'vae'
  config.model.latent_dim = 32
  config.model.width = 32    # Channels of the first conv; doubles per stage.
  config.model.hidden = 256  # Dense layer between convs and latent.

  config.vae = ml_collections.ConfigDict()
  config.vae.likelihood = 'bernoulli'  # 'bernoulli' (logits) | 'gaussian'.
  config.vae.gaussian_scale = 0.1      # Fixed std of the Gaussian likelihood.
  config.vae.learn_scale = False       # Learn one shared Gaussian std instead.
  config.vae.beta = 1.0                # KL weight (β-VAE).
  config.vae.kl_warmup_steps = 500     # Linear warm-up of the KL weight; 0 = off.

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999

  config.train.num_steps = 1500

  if arg == 'smoke':
    common.smoke(config)
    config.model.width = 8
    config.model.hidden = 32
    config.model.latent_dim = 8
  elif arg in ('cifar10', 'svhn_cropped', 'celeb_a'):
    config.data.name = arg
    config.vae.likelihood = 'gaussian'
    config.vae.learn_scale = True
    config.model.latent_dim = 128
    config.model.width = 64
    config.model.hidden = 512
    config.train.num_steps = 20000
  elif arg:
    raise ValueError(f'Unknown variant {arg!r} of configs/vae.py.')
  return config
