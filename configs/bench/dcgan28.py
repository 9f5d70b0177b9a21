"""Benchmark workload `dcgan28`: the TensorFlow DCGAN tutorial on 28x28 digits.

  python experiments/throughput.py --config=configs/bench/dcgan28.py --reference=keras

G: z (100) -> Dense(7*7*256) -> BN -> LReLU -> ConvT(128, 5, s1) -> BN -> LReLU
   -> ConvT(64, 5, s2) -> BN -> LReLU -> ConvT(1, 5, s2) -> tanh
D: Conv(64, 5, s2) -> LReLU -> Dropout(0.3) -> Conv(128, 5, s2) -> LReLU
   -> Dropout(0.3) -> Dense(1)
One step = one D update (real batch + fresh fakes) and one G update, Adam 1e-4
for both with Keras' default betas (0.9, 0.999), batch 256.
It also trains as usual: `python -m vaegan_jax.main --config=configs/bench/dcgan28.py
--workdir=/tmp/dcgan28`.
"""

import os

from vaegan_jax import config_files

# configs/gan.py, read by path as --config reads it.
gan = config_files.load_module(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'gan.py'))


def get_config(arg=None):
  config = gan.get_config()
  m = config.model
  m.latent_dim = 100
  m.g_width_mult = 1.0
  m.d_width_mult = 1.0
  m.leaky_slope = 0.3
  m.d_dropout = 0.3
  m.spectral_norm = False
  config.data.name = 'mnist5k'
  config.gan.loss = 'non_saturating'
  config.gan.d_steps = 1
  config.gan.r1_gamma = 0.0
  config.gan.ema_decay = 0.0
  for opt in (config.optim.g, config.optim.d):
    opt.learning_rate = 1e-4
    opt.b1 = 0.9
    opt.b2 = 0.999
    opt.warmup_steps = 0
    opt.decay_steps = 0
    opt.grad_clip = 0.0
  config.train.batch_size = 256
  config.train.compute_dtype = 'float32'
  if arg == 'tiny':  # For tests: narrow nets, a small batch.
    config.model.latent_dim = 8
    config.model.g_width_mult = 1 / 16
    config.model.d_width_mult = 1 / 16
    config.train.batch_size = 8
  elif arg:
    raise ValueError(f'Unknown variant {arg!r} of configs/bench/dcgan28.py.')
  return config
