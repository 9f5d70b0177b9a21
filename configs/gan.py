"""DCGAN (the TensorFlow DCGAN tutorial's networks) on the embedded MNIST-5k digits.

  python -m vaegan_jax.main --config=configs/gan.py --workdir=/tmp/gan

What to expect (quiet 2-core CPU, measured; conv_impl 'auto' = 'onednn';
experiments/default_runs.sh): about 6.9 steps/s, so the 3000 steps take 7 min
31 s including compilation and the six evaluations, at a peak RSS of 1.0 GiB.
Digits are recognisable from about step 2000 (5 min); FID in the project's
feature space (1000 samples, lower is better; untrained G: 100.5) went 24.2
(step 500), 10.4 (1000), 10.5 (1500), 6.4 (2000), 3.9 (2500), 2.7 (3000),
with 6-10 of 10 classes covered; the best checkpoint (step 3000) scores FID
2.7 with 10000 samples. GAN training oscillates, so the run keeps its best checkpoint by FID
in WORKDIR/checkpoints_best (`--step=best` in sample / evaluate).

Variants: `configs/gan.py:smoke` (tiny networks, under a minute), `:cifar10`,
`:svhn_cropped` (32x32, DCGAN widths 512-256-128 / 64-128-256) and `:celeb_a`
(64x64, 1024-512-256-128 / 64-128-256-512); these read real TFDS datasets and
need network or a prepared data_dir, and a GPU/TPU for useful results.
Losses: `--config.gan.loss=non_saturating|minimax|hinge|wgan|lsgan`.

Literature variants (published setups, point by point; docs/reproducing.md
has the table, `LITERATURE` below the sources and every
difference):
  `:cifar10_dcgan`  StudioGAN's CIFAR-10 DCGAN (src/configs/CIFAR10/DCGAN.yaml
                    + src/config.py defaults, net src/models/deep_conv.py).
  `:cifar10_sngan`  SN-GAN with the ResNet G/D (Miyato et al. 2018, Table 2
                    unconditional ResNet, hinge; nets as StudioGAN's
                    src/models/resnet.py).
  `:celeb_a64`      Radford et al. 2016's DCGAN for 64 px faces
                    (Newmu/dcgan_code faces/train_uncond_dcgan.py) on CelebA.
`configs/gan.py:conditional`: class-conditional DCGAN (label embedding at G's
input, projection discriminator; `--config.gan.aux_weight=1.0` adds the ACGAN
loss). What to expect (the default 3000 steps of 64, measured on a quiet
2-core CPU, conv_impl 'auto' = 'onednn'): 8 min 24 s including compilation
and the six evaluations (1000 samples each); at steps 500 / 1000 / 1500 /
2000 / 2500 / 3000 FID 15.6 / 6.6 / 7.5 / 7.5 / 16.7 / 12.9 in the project's
feature space ('l2' map), cond_accuracy 0.61 / 0.81 / 0.79 / 0.65 / 0.57 /
0.98 (chance 0.10), intra_fid 25.5 / 14.2 / 15.1 / 17.7 / 31.6 / 24.0; recall
falls from 0.08 to 0 by step 3000 (each class drawn from few modes). GAN
training oscillates (the earlier record, with conv_impl 'fast', ended at FID
4.8 on another path through the same swings); the best checkpoint by FID
(here step 1000) is kept in WORKDIR/checkpoints_best.
"""

import ml_collections

from vaegan_jax import config_base as common


def _adam(learning_rate, b1, b2=0.999):
  cfg = ml_collections.ConfigDict()
  cfg.learning_rate = learning_rate
  cfg.b1 = b1
  cfg.b2 = b2
  cfg.warmup_steps = 0  # With decay_steps > 0: warm-up + cosine decay.
  cfg.decay_steps = 0
  cfg.grad_clip = 0.0   # Clip the global gradient norm; 0 = off.
  cfg.l2 = 0.0          # Coupled L2 weight decay (grad += l2 * param, before Adam); 0 = off.
  return cfg


def get_config(arg=None):
  common.check_variant(arg, VARIANTS, 'configs/gan.py')
  if arg == 'conditional_smoke':  # The smoke run of the class-conditional model.
    config = get_config('smoke')
    config.model.conditional = True
    return config
  config = common.get_base_config()
  config.model.family = 'gan'
  config.model.latent_dim = 100
  config.model.g_width_mult = 1.0  # Scales every hidden width of G ...
  config.model.d_width_mult = 1.0  # ... and of D (models/gan.py PLANS).
  config.model.leaky_slope = 0.3   # Keras' LeakyReLU default, as in the tutorial.
  config.model.d_dropout = 0.3
  config.model.spectral_norm = False  # Spectral normalisation of D (Miyato et al. 2018).
  config.model.arch = 'tutorial'  # 'tutorial' (models/gan.py) | 'studiogan_dcgan' | 'radford_dcgan' | 'resnet'.
  config.model.g_conv_dim = 64    # arch='resnet': StudioGAN's g_conv_dim (G widths are multiples).
  config.model.d_conv_dim = 64    # arch='resnet': StudioGAN's d_conv_dim (D widths are multiples).

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
  # fewer images reach a lower FID (batch 128 for 1000 steps, 10 min: FID 14.7
  # against the default's best 7.8, both in the feature map of format 1).
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
    if arg != 'celeb_a':  # Radford's 32-px widths (models/gan.py PLANS[32] x 2).
      config.model.g_width_mult = 2.0
      config.model.d_width_mult = 2.0
    config.train.batch_size = 128
    config.train.num_steps = 50000
    config.train.log_every_steps = 200
    config.train.sample_every_steps = 2500
    config.train.eval_every_steps = 5000
    config.train.checkpoint_every_steps = 2500
    config.gan.ema_decay = 0.999
  elif arg in LITERATURE:
    LITERATURE[arg](config)
  elif arg == 'conditional':
    config.model.conditional = True  # Class-conditional (families/conditional.py).
    config.gan.aux_weight = 0.0      # ACGAN class loss λ; e.g. 1.0 for projection + ACGAN.
  return config


def _literature_schedule(config, num_steps):
  config.train.num_steps = num_steps
  config.train.log_every_steps = 200
  config.train.sample_every_steps = 5000
  config.train.eval_every_steps = 10000
  config.train.checkpoint_every_steps = 5000
  config.eval.num_samples = 10000


def cifar10_dcgan(config):
  """StudioGAN's CIFAR-10 DCGAN (FID 48.3 in StudioGAN's benchmark table).

  Source: POSTECH-CVLab/PyTorch-StudioGAN src/configs/CIFAR10/DCGAN.yaml
  (backbone deep_conv, d_updates_per_step 2, total_steps 200000) on top of
  src/config.py's defaults; nets src/models/deep_conv.py.
    data          CIFAR-10 train, 32x32x3, scaled to [-1, 1]
    G / D         deep_conv (models/dcgan_literature.py): G 512-256-128-64 (ConvT k4),
                  D 64-128-256-512 with BatchNorm and ReLU; orthogonal init
    z             128, standard normal (z_prior 'gaussian')
    loss          'vanilla' = non-saturating cross-entropy (softplus form)
    optimiser     Adam, lr 2e-4 for G and D, betas (0.5, 0.999), no weight decay
    batch         64; D steps per G step 2 (d_first); 200000 G steps
    EMA           none (apply_g_ema False); no spectral norm, no augmentation
  Differences that cannot be avoided here:
    - StudioGAN draws a new real batch for each of the 2 D steps; the loop
      here feeds one batch per step, which both D steps reuse.
    - StudioGAN flips real images horizontally at random (PRE.apply_rflip);
      the input pipeline has no augmentation.
    - StudioGAN's FID uses its own Inception features on 50000 samples
      against the training set; see docs/reproducing.md for the comparable command.
  """
  config.data.name = 'cifar10'
  config.model.arch = 'studiogan_dcgan'
  config.model.latent_dim = 128
  config.model.spectral_norm = False
  config.gan.loss = 'non_saturating'
  config.gan.d_steps = 2
  config.gan.ema_decay = 0.0
  config.optim.g = _adam(2e-4, 0.5, 0.999)
  config.optim.d = _adam(2e-4, 0.5, 0.999)
  config.train.batch_size = 64
  _literature_schedule(config, 200000)


def cifar10_sngan(config):
  """SN-GAN, ResNet G/D, unconditional CIFAR-10 (Miyato et al. 2018: IS 8.22, FID 21.7).

  Sources: Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for
  GANs", ICLR 2018: Table 2 (ResNet, hinge loss, unconditional), Appendix B
  (setting: Adam α = 2e-4, β1 = 0, β2 = 0.9, n_dis = 5, batch 64, 50k G
  updates) and Table 4 (the CIFAR ResNet). The networks are those of
  POSTECH-CVLab/PyTorch-StudioGAN src/models/resnet.py at 32 px (g_conv_dim =
  d_conv_dim = 64: G 256 channels, D 128), which are Miyato's ResNet.
    G / D         models/resnet.py; SN on every D layer, none in G; orthogonal init
    z             128, standard normal
    loss          hinge
    optimiser     Adam(2e-4, β1 0, β2 0.9) for G and D
    batch         64; D steps per G step 5; 50000 G steps; no EMA
  Differences that cannot be avoided (or were chosen):
    - StudioGAN's own SNGAN.yaml is class-conditional (cBN in G, projection
      D), uses Adam betas (0.5, 0.999) and 100000 steps, and its FID (9.0 in
      StudioGAN's table) is for that conditional model; `model.conditional`
      is built for the tutorial DCGAN only. This config is the unconditional
      setting.
    - Miyato's chainer code decays the learning rate linearly to 0; optax's
      schedules here are constant or warm-up + cosine, so it stays constant.
    - One real batch per step is reused by the 5 D steps (Miyato draws one
      per D step); no horizontal flips.
  """
  config.data.name = 'cifar10'
  config.model.arch = 'resnet'
  config.model.g_conv_dim = 64
  config.model.d_conv_dim = 64
  config.model.latent_dim = 128
  config.model.spectral_norm = True
  config.gan.loss = 'hinge'
  config.gan.d_steps = 5
  config.gan.ema_decay = 0.0
  config.optim.g = _adam(2e-4, 0.0, 0.9)
  config.optim.d = _adam(2e-4, 0.0, 0.9)
  config.train.batch_size = 64
  _literature_schedule(config, 50000)


def celeb_a64(config):
  """Radford, Metz & Chintala 2016 (DCGAN), 64 px faces, on CelebA (no published FID).

  Source: Newmu/dcgan_code faces/train_uncond_dcgan.py (the authors' code for
  the paper's face model) and the paper's Section 4 (Adam lr 2e-4, β1 0.5,
  batch 128, weights N(0, 0.02), LeakyReLU 0.2).
    G / D         models/dcgan_literature.py radford_dcgan: ngf = ndf = 128, 5x5 kernels,
                  G 1024-512-256-128 with BN + ReLU, D 128-256-512-1024 with BN
                  (not on the first layer) + LeakyReLU(0.2); BN epsilon 1e-8
    z             100
    loss          cross-entropy, G non-saturating (bce(D(G(z)), 1))
    optimiser     Adam lr 2e-4, β1 0.5, β2 0.999, coupled L2 1e-5 (G and D)
    batch         128; k = 1 D step per G step; 25 epochs of 350000 faces =
                  68359 steps
    EMA           none
  Differences that cannot be avoided:
    - The paper's faces are its own 3M-image web scrape (not released); this
      trains on CelebA (TFDS celeb_a, 162770 training images, centre-cropped
      and resized to 64x64), so 68359 steps are about 54 CelebA epochs.
    - z is standard normal here; the code draws z ~ U(-1, 1).
    - Theano's BN there normalises with batch statistics at sampling time
      too; G samples here with running averages (flax BatchNorm, momentum 0.9).
  """
  config.data.name = 'celeb_a'
  config.model.arch = 'radford_dcgan'
  config.model.latent_dim = 100
  config.model.leaky_slope = 0.2
  config.model.spectral_norm = False
  config.gan.loss = 'non_saturating'
  config.gan.d_steps = 1
  config.gan.ema_decay = 0.0
  config.optim.g = _adam(2e-4, 0.5, 0.999)
  config.optim.d = _adam(2e-4, 0.5, 0.999)
  config.optim.g.l2 = 1e-5
  config.optim.d.l2 = 1e-5
  config.train.batch_size = 128
  _literature_schedule(config, 68359)


LITERATURE = {'cifar10_dcgan': cifar10_dcgan, 'cifar10_sngan': cifar10_sngan,
              'celeb_a64': celeb_a64}

# The variants (`configs/gan.py:VARIANT`).
VARIANTS = ('smoke', 'conditional', 'conditional_smoke', 'cifar10', 'svhn_cropped', 'celeb_a',
            *LITERATURE)
