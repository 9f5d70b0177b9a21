"""Benchmark workload `convvae28`: the Keras VAE example on 28x28 digits.

  python experiments/throughput.py --config=configs/bench/convvae28.py --reference=keras

keras.io/examples/generative/vae with a 16-d latent:
  Encoder: Conv(32, 3, s2) -> ReLU -> Conv(64, 3, s2) -> ReLU -> Dense(16) -> ReLU
           -> Dense(2 * 16) = (mean, logvar)
  Decoder: Dense(7*7*64) -> ReLU -> ConvT(64, 3, s2) -> ReLU -> ConvT(32, 3, s2)
           -> ReLU -> Conv(1, 3) = Bernoulli logits   (the example's last
           stride-1 ConvTranspose is the same function)
Loss: -(Bernoulli log-likelihood - KL), no KL warm-up; Adam 1e-3; batch 256.
It also trains as usual: `python -m vaegan_jax.main --config=configs/bench/convvae28.py
--workdir=/tmp/convvae28`.
"""

import os

from vaegan_jax import config_files

# configs/vae.py, read by path as --config reads it.
vae = config_files.load_module(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'vae.py'))


def get_config(arg=None):
  config = vae.get_config()
  config.model.latent_dim = 16
  config.model.width = 32          # Conv 32 -> 64; ConvT 64 -> 32.
  config.model.hidden = 16         # The encoder's Dense.
  config.model.decoder_hidden = 0  # No Dense between z and the 7*7*64 Dense.
  config.model.kernel_size = 3
  config.data.name = 'mnist5k'
  config.vae.likelihood = 'bernoulli'
  config.vae.beta = 1.0
  config.vae.kl_warmup_steps = 0
  config.optim.learning_rate = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.train.batch_size = 256
  config.train.compute_dtype = 'float32'
  if arg == 'tiny':  # For tests: a small batch.
    config.train.batch_size = 8
  elif arg:
    raise ValueError(f'Unknown variant {arg!r} of configs/bench/convvae28.py.')
  return config
