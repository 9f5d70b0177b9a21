"""VAE/GAN (Larsen et al. 2016) on the embedded MNIST-5k digits.

  python -m vaegan_jax.main --config=configs/vaegan.py --workdir=/tmp/vaegan

What to expect (quiet 2-core CPU, measured; conv_impl 'auto' = 'onednn';
experiments/default_runs.sh): about 15.7 steps/s, so the 5000 steps took 5 min
40 s including compilation and the ten evaluations, at a peak RSS of 1.0 GiB.
Reconstructions are sharp from the first grid (step 500, test PSNR 15.5 dB);
prior samples are mostly recognisable digits by step 2500. Training-time FID
in the project's feature space (1000 samples; untrained models: about 100) went
10.7, 8.0, 4.3, 4.3, 4.1 at steps 1000..5000, with 7-10 of 10 classes covered
from step 1500 and test PSNR 18.3 dB at step 5000; with 10000 samples the
final checkpoint scores FID 4.2, KID 0.14, precision 0.57, recall 0.91. A
3000-step run (about 3.5 min) scores FID 4.5, precision 0.55, recall 0.91,
PSNR 18.2 dB with 10000 samples.

Variants: `configs/vaegan.py:smoke` (a few seconds), `:cifar10`,
`:svhn_cropped`, `:celeb_a` (real TFDS datasets, need network or a prepared
data_dir). `:celeb_a64` takes Larsen et al.'s CelebA-64 setting where the
project's networks allow it (its header lists the sources and every difference).

`configs/vaegan.py:conditional`: CVAE encoder, label-embedding decoder and
projection discriminator. What to expect (the default 5000 steps of 64,
measured on a quiet 2-core CPU, conv_impl 'auto' = 'onednn'): 6 min 16 s
including compilation and the ten evaluations (1000 samples each); at steps
1000 / 2000 / 3000 / 4000 / 5000 FID 5.7 / 2.2 / 1.5 / 0.9 / 0.6 in the
project's feature space ('l2' map), cond_accuracy 0.73 / 0.85 / 0.92 / 0.93
/ 0.92 (chance 0.10), intra_fid 14.1 / 5.6 / 4.3 / 2.8 / 2.9, test PSNR 14.6
/ 16.3 / 16.8 / 17.7 / 17.7 dB.
"""

import ml_collections

from vaegan_jax import config_base as common


def _adam(learning_rate, b1=0.5, b2=0.999):
  cfg = ml_collections.ConfigDict()
  cfg.learning_rate = learning_rate
  cfg.b1 = b1
  cfg.b2 = b2
  cfg.warmup_steps = 0  # With decay_steps > 0: warm-up + cosine decay.
  cfg.decay_steps = 0   # Cosine decay of the learning rate to 0 over this many steps; 0 = constant.
  return cfg


# The variants (`configs/vaegan.py:VARIANT`).
VARIANTS = ('smoke', 'conditional', 'conditional_smoke', *('cifar10', 'svhn_cropped', 'celeb_a', 'celeb_a64'))


def get_config(arg=None):
  common.check_variant(arg, VARIANTS, 'configs/vaegan.py')
  if arg == 'conditional_smoke':  # The smoke run of the class-conditional model.
    config = get_config('smoke')
    config.model.conditional = True
    return config
  config = common.get_base_config()
  config.model.family = 'vaegan'
  config.model.latent_dim = 32
  config.model.enc_width = 32       # VAE encoder: channels of the first conv, doubling per stage.
  config.model.enc_hidden = 256     # VAE encoder: Dense layer before the latent.
  config.model.dec_width_mult = 0.25  # DCGAN generator widths (models/gan.py PLANS) times this.
  config.model.dis_width = 32       # Discriminator: first conv; doubles per stride-2 stage.
  config.model.dis_kernel = 5       # Discriminator: conv kernel size.
  config.model.dis_dropout = 0.3    # Discriminator: dropout before the logit.

  config.vaegan = ml_collections.ConfigDict()
  config.vaegan.gamma = 1e-2             # γ: weight of L_llike against the GAN loss for the decoder.
  config.vaegan.feature_std = 2.0        # σ of the Gaussian on Dis_l features (1 in the paper; on MNIST-5k
                                         # σ=1 left KL 45 nats and worse samples, σ=4 lost the digits' identity).
  config.vaegan.gan_loss = 'non_saturating'  # Decoder/discriminator game: non_saturating | minimax (the paper's literal form) | hinge | wgan | lsgan.

  config.optim = ml_collections.ConfigDict()
  config.optim.enc = _adam(3e-4)
  config.optim.dec = _adam(3e-4)
  config.optim.dis = _adam(3e-4)

  config.train.batch_size = 64
  config.train.num_steps = 5000  # ~6 min on 2 CPU cores; FID 4.3 at 3000, 4.1 at 5000.

  if arg == 'smoke':
    common.smoke(config)
    config.model.latent_dim = 8
    config.model.enc_width = 8
    config.model.enc_hidden = 32
    config.model.dec_width_mult = 0.0625
    config.model.dis_width = 8
  elif arg in ('cifar10', 'svhn_cropped', 'celeb_a'):
    config.data.name = arg
    config.model.latent_dim = 128
    config.model.enc_width = 64
    config.model.enc_hidden = 512
    # Radford's DCGAN widths (models/gan.py PLANS; x2 at 32 px).
    config.model.dec_width_mult = 1.0 if arg == 'celeb_a' else 2.0
    config.model.dis_width = 64
    config.train.num_steps = 30000
    config.train.log_every_steps = 200
    config.train.checkpoint_every_steps = 2000
    config.train.sample_every_steps = 2000
    config.train.eval_every_steps = 2000
  elif arg == 'celeb_a64':
    celeb_a64(config)
  elif arg == 'conditional':
    config.model.conditional = True  # Class-conditional (families/conditional.py).
  return config


def celeb_a64(config):
  """VAE/GAN on CelebA-64 (Larsen, Sønderby, Larochelle & Winther, ICML 2016; no FID published).

  Sources: andersbll/autoencoding_beyond_pixels celeba_aegan.py (img_size 64,
  batch 64, 250 epochs of 250 batches = 62500 steps, n_hidden 128,
  recon_depth 9, recon_vs_gan_weight 1e-6, real_vs_gen_weight 0.5,
  discriminate_sample_z True, discriminate_ae_recon False), aegan.py
  (RMSProp, lr annealed 0.025 -> 1e-5 with gamma 0.75, gan_margin 0.35,
  weight decay 1e-5) and architectures.py img64x64:
    Enc  Conv(5, s2) 64-128-256 + BN + ReLU -> Linear(1024) + BN + ReLU -> z 128
    Dec  Linear(8x8x256) + BN + ReLU -> ConvT(5, s2) 256-128-32 + BN + ReLU -> Conv(5, 3) -> tanh
    Dis  Conv(5) 32 + ReLU -> Conv(5, s2) 128-256-256 + BN + ReLU
         -> Linear(512) + BN + ReLU -> Linear(1) -> sigmoid
  Taken here: z 128, batch 64, 62500 steps, 5x5 D kernels, D first width 32,
  encoder width 64 and hidden 1024.
  Differences that cannot be avoided (the project's VAE-GAN, models/vaegan.py):
    - The networks are the project's: no BatchNorm anywhere, the encoder's
      4x4 convs, the DCGAN-tutorial decoder from 4x4 (widths 1024-512-256-128
      x dec_width_mult 0.25 = 256-128-64-32), D 32-64-128 stride-2 convs with
      Dis_l the last conv, and no hidden Linear in D.
    - Adam(3e-4, β1 0.5) per network instead of RMSProp with the annealed
      learning rate and weight decay; no gan_margin balancing of the updates.
    - γ keeps this project's meaning and default (1e-2 with feature_std 2,
      tuned on MNIST-5k); the code's recon_vs_gan_weight 1e-6 scales a
      differently normalised loss and is not the same number.
  """
  config.data.name = 'celeb_a'
  config.model.latent_dim = 128
  config.model.enc_width = 64
  config.model.enc_hidden = 1024
  config.model.dec_width_mult = 0.25
  config.model.dis_width = 32
  config.model.dis_kernel = 5
  config.train.batch_size = 64
  config.train.num_steps = 62500
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 5000
  config.train.sample_every_steps = 5000
  config.train.eval_every_steps = 10000
