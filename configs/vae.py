"""Convolutional VAE on the embedded MNIST-5k digits.

  python -m vaegan_jax.main --config=configs/vae.py --workdir=/tmp/vae

What to expect: 1500 steps of batch 128 (~43 epochs of 4500 digits). Measured
on a quiet 2-core CPU (conv_impl 'auto' = 'onednn'; experiments/default_runs.sh):
about 16 steps/s (2040 images/s), so the run takes 1 min 50 s including
compilation and the three evaluations, at a peak RSS of 0.9 GiB; recognisable
digits in the grid from step 500. Test ELBO -111.9 nats at step 1000 and
-109.4 at step 1500 (Bernoulli likelihood), FID 4.0 in the project's feature
space (1000 samples; untrained: 102). `--config.train.num_steps=3000` takes
about 3.5 min and reaches FID 2.9 (2.8 with 10000 samples) with 10 of 10
classes covered (the ELBO stays at about -109).

Variants: `configs/vae.py:smoke` (a few seconds), `:cifar10`, `:celeb_a`
(real TFDS datasets, need network or a prepared data_dir).
`:celeb_a64` follows pythae's CelebA VAE benchmark setting (its header lists
the sources and every difference; docs/reproducing.md).

`configs/vae.py:conditional`: the CVAE (label into encoder and decoder).
What to expect (the default 1500 steps of 128, measured on a quiet 2-core CPU):
1 min 48 s including compilation and the three evaluations (1000 samples
each); at steps 500 / 1000 / 1500 test ELBO -117.7 / -110.2 / -107.7 (a bound
on log p(x|y)), FID 9.3 / 4.9 / 4.2, cond_accuracy 0.22 / 0.33 / 0.44
(chance 0.10), intra_fid 37.3 / 26.7 / 20.7. With 32 latent dimensions the
decoder uses the label only partly (the class is also in z); a 2-D latent
reaches 0.82 in 300 steps (tests/test_conditional.py).
"""

import ml_collections

from vaegan_jax import config_base as common


# The variants (`configs/vae.py:VARIANT`).
VARIANTS = ('smoke', 'conditional', 'conditional_smoke', *('cifar10', 'svhn_cropped', 'celeb_a', 'celeb_a64'))


def get_config(arg=None):
  common.check_variant(arg, VARIANTS, 'configs/vae.py')
  if arg == 'conditional_smoke':  # The smoke run of the class-conditional model.
    config = get_config('smoke')
    config.model.conditional = True
    return config
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
  config.optim.warmup_steps = 0  # With decay_steps > 0: warm-up + cosine decay.
  config.optim.decay_steps = 0   # Cosine decay of the learning rate to 0 over this many steps; 0 = constant.

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
  elif arg == 'celeb_a64':
    celeb_a64(config)
  elif arg == 'conditional':
    config.model.conditional = True  # Class-conditional (families/conditional.py).
  return config


def celeb_a64(config):
  """A standard conv VAE on CelebA-64, in the setting of pythae's CelebA benchmarks.

  Sources: clementchadebec/benchmark_VAE (pythae)
  examples/scripts/configs/celeba/vae_config.json (latent_dim 64,
  reconstruction_loss 'mse') and base_training_config.json (batch 100, 50
  epochs, learning rate 1e-3, Adam: pythae's default optimiser, no schedule);
  nets src/pythae/models/nn/benchmarks/celeba/convnets.py
  (Encoder_Conv_VAE_CELEBA / Decoder_Conv_AE_CELEBA).
    data          CelebA train (TFDS celeb_a, 162770 images) at 64x64, in [0, 1]
    likelihood    pythae's 'mse' = 0.5 * sum of squares = a Gaussian with a
                  fixed std of 1 (up to a constant), plus the KL; no warm-up, β 1
    z             64
    optimiser     Adam lr 1e-3, betas (0.9, 0.999)
    batch         100; 50 epochs = 81400 steps
  Differences that cannot be avoided here (the project's VAE, models/vae.py):
    - pythae's encoder is Conv(4, s2) 128-256-512-1024 with BatchNorm + ReLU
      and linear heads from 4x4x1024; its decoder is Linear(8x8x1024) then
      ConvT(5) 512-256-128 with BatchNorm + ReLU and a sigmoid. The project's
      VAE has no BatchNorm, three stride-2 stages from 64 px (64 -> 8) and a
      hidden Dense; widths are set to the nearest it has (128-256-512, k4,
      no decoder hidden layer, encoder hidden 1024).
    - pythae reports FID/IS with its own Inception evaluation; see docs/reproducing.md.
  """
  config.data.name = 'celeb_a'
  config.model.latent_dim = 64
  config.model.width = 128
  config.model.hidden = 1024
  config.vae.likelihood = 'gaussian'
  config.vae.gaussian_scale = 1.0
  config.vae.learn_scale = False
  config.vae.beta = 1.0
  config.vae.kl_warmup_steps = 0
  config.optim.learning_rate = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.train.batch_size = 100
  config.train.num_steps = 81400
  config.train.log_every_steps = 200
  config.train.sample_every_steps = 5000
  config.train.eval_every_steps = 10000
  config.train.checkpoint_every_steps = 5000
