"""The comparison study: VAE vs GAN vs VAE-GAN on equal budgets, several seeds.

  python experiments/compare.py --config=experiments/configs/compare.py --out=experiments/results/mnist5k
  python experiments/compare.py --config=experiments/configs/compare.py:smoke --out=/tmp/compare_smoke

Every family trains `num_steps` steps of `batch_size` images (the same images
seen per run), once per seed, with its own default config (configs/<family>.py)
plus `overrides.<family>` and the study's `conv_impl`; every
`eval_every_steps` it evaluates `curve_num_samples` samples (the curves that
the convergence rule, experiments/convergence.py, and the quality-vs-compute
figure read); each final checkpoint is then evaluated with
`vaegan_jax.evaluate` on `eval_num_samples` samples (`features='inception'`
or `'dinov2'` adds that backbone's metrics; the report names the feature
space, weights and resize of every number).

Expect: the default study (4000 steps of 64, 3 seeds, 3 families, the
applications benchmark on 128 test images per run) takes about 70 min on a
2-core CPU (the committed report experiments/results/mnist5k/report.md: 70.5
min wall, 95.6 min of CPU time, with other low-priority work on the machine;
VAE 204 s, GAN 837 s, VAE-GAN 261 s of training per run; the applications
4.5 min of it); `:smoke` (tiny networks, 2 seeds, a few steps) under 2
minutes (measured: 107 s).
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.families = ('vae', 'gan', 'vaegan')
  config.family_variant = ''   # Argument of configs/<family>.py:get_config ('' = default).
  config.seeds = 3             # Seeds 0 .. seeds-1; each changes init and data order.
  config.dataset = 'mnist5k'
  config.data_dir = ''         # '' = the project's default for the dataset.
  config.conditional = False   # True: also a class-conditional row per family ('<family>_conditional').

  # The budget, equal for every family: batch_size * num_steps images seen.
  config.batch_size = 64
  config.num_steps = 4000

  # Learning rate over the budget, for every optimiser of every family:
  # 'constant' keeps each family's own schedule (constant in the defaults);
  # 'cosine' decays each family's own learning rate to 0 over num_steps (the
  # family's warm-up kept; optim.*.decay_steps = num_steps), so every run ends
  # annealed (docs/study.md compares the two).
  config.lr_schedule = 'constant'

  # Training-time evaluation (the FID curves of the report).
  config.eval_every_steps = 250
  config.curve_num_samples = 500
  config.log_every_steps = 50
  config.checkpoint_every_steps = 250

  # Final evaluation of every run (vaegan_jax.evaluate on the last checkpoint).
  config.eval_num_samples = 2000
  config.iwae_k = 100          # Importance samples of the VAE's NLL; 0 = skip.
  # 'own': metrics in the project's own classifier's feature space only;
  # 'inception': also the FID Inception metrics (fid_inception, is_inception...);
  # 'dinov2': also FD-DINOv2 (fd_dinov2, kd_dinov2, precision_dinov2...; DINOv2
  # ViT-L/14). Either against the `inception_reference` split (all of it, or
  # `inception_num_reference` images), with the `resize` convention
  # ('' = the backbone's default: pytorch_fid for Inception, dgm_eval for
  # DINOv2; also clean, tf1; docs/evaluation.md). Weights: the flags below,
  # else $VAEGAN_JAX_INCEPTION / $VAEGAN_JAX_DINOV2, else downloaded once.
  config.features = 'own'
  config.resize = ''
  config.inception_weights = ''      # '' = $VAEGAN_JAX_INCEPTION.
  config.dinov2_weights = ''         # '' = $VAEGAN_JAX_DINOV2.
  config.inception_reference = 'train'
  config.inception_num_reference = 0

  # The applications benchmark of every final checkpoint (vaegan_jax/applications/
  # benchmark.py; docs/study.md "Applications"): denoising, inpainting,
  # reconstruction and perceptual path length on `applications_num_images`
  # test images, beside classical baselines on the same damaged images.
  config.applications = True
  config.applications_num_images = 128
  config.applications_inpaint_steps = 100  # Adam steps of latent optimisation ...
  config.applications_restarts = 2         # ... from this many starts per image.
  config.applications_ppl_samples = 1000

  # Train the seeds of a family as one vmapped step (vaegan_jax/vmap_seeds.py)
  # instead of one after the other. Off by default: on XLA:CPU a vmapped conv
  # with per-seed kernels runs as a grouped conv and was 2-5x slower than the
  # seeds one by one (the report's speed table); turn it on for GPUs/TPUs.
  # Either way both are timed on `speed_steps` steps for the report.
  config.vmap_seeds = False
  config.speed_steps = 10

  # Convolution implementation of every run ('' = each family's own, 'auto').
  # 'onednn' (oneDNN kernels through jax.ffi, docs/speed.md) trains the
  # same models faster on CPU; it falls back to 'auto' with one printed line
  # where the library cannot be loaded.
  config.conv_impl = 'onednn'
  # Keep freed host memory in the process (vaegan_jax/host_memory.py), as
  # vaegan_jax.main does with train.keep_host_memory.
  config.keep_host_memory = True

  # Per-family config overrides, nested like the family's config, e.g.
  # config.overrides.gan = {'gan': {'ema_decay': 0.99}}.
  config.overrides = ml_collections.ConfigDict({f: {} for f in config.families})

  config.out = 'experiments/results/mnist5k'

  if arg == 'smoke':
    config.family_variant = 'smoke'
    config.vmap_seeds = True  # Exercise the vmapped loop (and its resume).
    config.seeds = 2
    config.batch_size = 32
    config.num_steps = 12
    config.eval_every_steps = 3  # One evaluation per quarter (the convergence rule).
    config.curve_num_samples = 64
    config.log_every_steps = 3
    config.checkpoint_every_steps = 6
    config.eval_num_samples = 100
    config.iwae_k = 4
    config.speed_steps = 3
    config.applications_num_images = 16
    config.applications_inpaint_steps = 10
    config.applications_restarts = 1
    config.applications_ppl_samples = 64
    config.out = '/tmp/vaegan_jax_compare_smoke'
  elif arg:
    raise ValueError(f'Unknown variant {arg!r} of experiments/configs/compare.py; '
                     "use '' or 'smoke'.")
  return config
