"""DCGAN (the TensorFlow DCGAN tutorial's networks) on the embedded MNIST-5k digits.

  python -m vaegan_jax.main --config=configs/gan.py --workdir=/tmp/gan

What to expect (quiet 2-core CPU, measured): about 3.9 steps/s, so the 3000
steps take 13 min 20 s including compilation and the six evaluations. Digits
are recognisable from about step 2000 (9 min); FID in the project's feature
space (lower is better; untrained G: 82.5) went 26.9 (step 500), 33.5 (1000),
11.9 (1500), 8.5 (2000), 7.8 (2500), 13.5 (3000), with 7-10 of 10 classes
covered. GAN training oscillates, so the run keeps its best checkpoint by FID
in WORKDIR/checkpoints_best (`--step=best` in sample / evaluate).

Variants: `configs/gan.py:smoke` (tiny networks, under a minute), `:cifar10`,
`:svhn_cropped` (32x32, DCGAN widths 512-256-128 / 64-128-256) and `:celeb_a`
(64x64, 1024-512-256-128 / 64-128-256-512); these read real TFDS datasets and
need network or a prepared data_dir, and a GPU/TPU for useful results.
Losses: `--config.gan.loss=non_saturating|minimax|hinge|wgan|lsgan`.

`configs/gan.py:conditional`: class-conditional DCGAN (label embedding at G's
input, projection discriminator; `--config.gan.aux_weight=1.0` adds the ACGAN
loss). Measured, a shortened run only (`--config.train.num_steps=400`, one
evaluation at the end, 1000 samples) on the 2 cores shared with four other
developers' jobs (load average 5-10): 5 min 51 s; FID 10.5, cond_accuracy
0.71 (chance 0.10), intra_fid 21.6. The default 3000 steps were not measured.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position


def _adam(learning_rate, b1, b2=0.999):
  cfg = ml_collections.ConfigDict()
  cfg.learning_rate = learning_rate
  cfg.b1 = b1
  cfg.b2 = b2
  cfg.warmup_steps = 0  # With decay_steps > 0: warm-up + cosine decay.
  cfg.decay_steps = 0
  cfg.grad_clip = 0.0   # Clip the global gradient norm; 0 = off.
  return cfg


def get_config(arg=None):
  config = common.get_base_config()
  config.model.family = 'gan'
  config.model.latent_dim = 100
  config.model.g_width_mult = 1.0  # Scales every hidden width of G ...
  config.model.d_width_mult = 1.0  # ... and of D (models/gan.py PLANS).
  config.model.leaky_slope = 0.3   # Keras' LeakyReLU default, as in the tutorial.
  config.model.d_dropout = 0.3
  config.model.spectral_norm = False  # Spectral normalisation of D (Miyato et al. 2018).

  config.gan = ml_collections.ConfigDict()
  config.gan.loss = 'non_saturating'  # | 'minimax' | 'hinge' | 'wgan' | 'lsgan'.
  config.gan.d_steps = 1       # D updates per G update (5 is usual for wgan).
  config.gan.gp_weight = 10.0  # WGAN-GP λ, used with loss='wgan' (0 = plain WGAN).
  config.gan.r1_gamma = 0.0    # R1 penalty γ on real data (Mescheder et al. 2018); 0 = off.
  config.gan.ema_decay = 0.0   # EMA of G's weights for samples/evaluation; 0 = off.
  config.gan.aux_weight = 0.0  # ACGAN auxiliary class loss λ (needs model.conditional=True); 0 = off.

  config.optim = ml_collections.ConfigDict()
  config.optim.g = _adam(2e-4, 0.5)
  config.optim.d = _adam(2e-4, 0.5)

  # Batch 64 rather than the tutorial's 256: at equal CPU time, more updates of
  # fewer images reach a lower FID (batch 128 for 1000 steps, 10 min: FID 14.7).
  config.train.batch_size = 64
  config.train.num_steps = 3000

  if arg == 'smoke':
    common.smoke(config)
    config.model.latent_dim = 16
    config.model.g_width_mult = 1 / 16
    config.model.d_width_mult = 1 / 16
  elif arg in ('cifar10', 'svhn_cropped', 'celeb_a'):
    config.data.name = arg
    config.model.leaky_slope = 0.2  # Radford et al. 2016.
    config.train.batch_size = 128
    config.train.num_steps = 50000
    config.train.log_every_steps = 200
    config.train.sample_every_steps = 2500
    config.train.eval_every_steps = 5000
    config.train.checkpoint_every_steps = 2500
    config.gan.ema_decay = 0.999
  elif arg == 'conditional':
    config.model.conditional = True  # Class-conditional (families/conditional.py).
    config.gan.aux_weight = 0.0      # ACGAN class loss λ; e.g. 1.0 for projection + ACGAN.
  elif arg:
    raise ValueError(f'Unknown variant {arg!r} of configs/gan.py.')
  return config
