"""Images from a checkpoint: `python -m vaegan_jax.sample --workdir=DIR --mode=MODE`.

Modes (what the PNG shows, each panel titled):
  samples      prior samples;
  interpolate  --num paths (default 8) of --steps images (default 10): one
               row per spherical interpolation between two random latents,
               the two ends framed and marked start / end;
  reconstruct  inputs | reconstructions                 (families with an encoder);
  denoise      clean | noisy | restored, prints PSNR     (families with an encoder);
  inpaint      clean | masked | completed, prints PSNR on the missing pixels;
  class_grid   class-conditional checkpoints: one row per class, the same
               latents in every row (style fixed, class varying), --num // K
               columns.
--label=K (class-conditional checkpoints) draws samples / interpolations of
class K and conditions reconstruct / denoise / inpaint on K; without it those
use each test image's true label (own --images then need --label), and
samples / interpolation rows draw their classes at random.
Inputs come from the dataset's test split, or from --images=PATH (a PNG/JPEG
file or a folder of them). Only the workdir is needed: the config stored with
the run and a checkpoint; data only for the modes that take inputs. The same
flags give the same PNG bytes. Class-conditional samples carry their class
under each image (class_grid: beside each row). The picture is enlarged by an
integer factor (nearest neighbour): --scale=S, or by default the smallest
that makes it at least 256 pixels wide (vaegan_jax/viz.py).
"""

import functools
import os

from absl import app
from absl import flags

from vaegan_jax import cli
from vaegan_jax import kernels
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

MODES = ('samples', 'interpolate', 'reconstruct', 'denoise', 'inpaint', 'class_grid')
INPUT_MODES = ('reconstruct', 'denoise', 'inpaint')
NOISE_KINDS = ('gaussian', 'salt_pepper')  # = applications.NOISE_KINDS.
MASK_KINDS = ('center', 'blocks')          # = applications.MASK_KINDS.
INPAINT_METHODS = ('auto', 'posterior', 'latent')

# Key purposes: fold_in(PRNGKey(seed), purpose).
_SAMPLES, _INTERPOLATE, _NOISE, _MASK, _LATENT_INIT, _CLASS_GRID, _ROW_LABELS = range(7)

DEFAULT_NUM = 64      # Images per panel.
DEFAULT_PATHS = 8     # --mode=interpolate: paths ...
DEFAULT_STEPS = 10    # ... of this many images each.
MAX_SCALE = 16

FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags; defined only when run as a program, so that importing
  `run` never clashes with other modules' flags."""
  flags.DEFINE_string('workdir', None, 'Run directory holding config.json and checkpoints/.')
  flags.DEFINE_string('mode', 'samples', f'What to draw: {" | ".join(MODES)}.')
  flags.DEFINE_integer('num', None, f'Images per panel (default {DEFAULT_NUM}); '
                       f'interpolate: paths (default {DEFAULT_PATHS}).')
  flags.DEFINE_integer('steps', DEFAULT_STEPS, 'interpolate: images per path, both ends '
                       'included.')
  flags.DEFINE_integer('scale', 0, 'Enlarge the PNG by this integer factor (nearest '
                       'neighbour); 0 = the smallest that makes it at least 256 px wide.')
  flags.DEFINE_integer('seed', 0, 'Seed of every random choice; same seed, same PNG.')
  flags.DEFINE_string('out', '', 'PNG to write; default WORKDIR/<mode>_step<N>.png.')
  flags.DEFINE_string('step', '', "Checkpoint step to load; '' = the latest, 'best' = "
                      'the best kept in checkpoints_best/.')
  flags.DEFINE_string('images', '', 'Inputs for reconstruct/denoise/inpaint: a PNG/JPEG '
                      'file or a folder of them; default the test split.')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir for the test split; default the '
                      'one stored in the run config.')
  flags.DEFINE_string('noise', 'gaussian', f'denoise: {" | ".join(NOISE_KINDS)}.')
  flags.DEFINE_float('noise_level', 0.3, 'denoise: Gaussian std, or the fraction of '
                     'pixels hit by salt-and-pepper noise.')
  flags.DEFINE_string('mask', 'center', f'inpaint: {" | ".join(MASK_KINDS)} (a centre '
                      'box of half the side, or 4 random blocks of a quarter of the side).')
  flags.DEFINE_string('inpaint_method', 'auto', 'inpaint: posterior (iterate the '
                      'autoencoder), latent (optimise z to fit the observed pixels), or '
                      'auto (posterior for --mask=blocks where the family has an encoder, '
                      'else latent).')
  flags.DEFINE_integer('inpaint_steps', 200, 'inpaint: iterations or optimiser steps.')
  flags.DEFINE_integer('restarts', 4, 'inpaint --inpaint_method=latent: random starts '
                       'per image; the best fit is kept.')
  flags.DEFINE_integer('label', None, 'Class-conditional checkpoints: the class to draw '
                       '(samples, interpolate) or to condition on (reconstruct, denoise, '
                       'inpaint; default the true label of each test image).')


def check_args(mode, num, noise, noise_level, mask, inpaint_method, inpaint_steps,
               restarts, images, label=None, steps=DEFAULT_STEPS, scale=0):
  """Everything that can be checked before a model is loaded (`num` None
  stands for the mode's default)."""
  if label is not None and mode == 'class_grid':
    raise UserError('--label is not used by --mode=class_grid, which draws every class.')
  if mode not in MODES:
    raise UsageError(f'Unknown --mode={mode!r}; choose one of {", ".join(MODES)}.')
  if num is not None and num < 1:
    raise UsageError(f'--num={num} must be at least 1.')
  if mode == 'interpolate' and steps < 2:
    raise UsageError(f'--steps={steps} must be at least 2: a path has two ends.')
  if not 0 <= scale <= MAX_SCALE:
    raise UsageError(f'--scale={scale} must be between 0 (automatic) and {MAX_SCALE}.')
  if images and mode not in INPUT_MODES:
    raise UsageError(f'--images is used by {", ".join(INPUT_MODES)}, not by --mode={mode}.')
  if noise not in NOISE_KINDS:
    raise UsageError(f'Unknown --noise={noise!r}; choose one of {", ".join(NOISE_KINDS)}.')
  if noise_level < 0 or (noise == 'salt_pepper' and noise_level > 1):
    raise UsageError(f'--noise_level={noise_level} must be >= 0 (and <= 1 for salt_pepper).')
  if mask not in MASK_KINDS:
    raise UsageError(f'Unknown --mask={mask!r}; choose one of {", ".join(MASK_KINDS)}.')
  if inpaint_method not in INPAINT_METHODS:
    raise UsageError(f'Unknown --inpaint_method={inpaint_method!r}; choose one of '
                    f'{", ".join(INPAINT_METHODS)}.')
  if inpaint_steps < 1 or restarts < 1:
    raise UsageError('--inpaint_steps and --restarts must be at least 1.')


@functools.lru_cache(maxsize=2)
def _test_split(name, data_dir, image_size=None, channels=0):
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.load_split(name, 'test', data_dir, image_size=image_size,
                                   channels=channels)


def load_inputs(model, num, seed, images=None, data_dir=None, echo=print):
  """`num` input images: the first of --images (by name), or a seeded random
  choice from the test split. float32 (N, H, W, C) in [0, 1], N <= num."""
  return load_inputs_and_labels(model, num, seed, images, data_dir, echo)[0]


def load_inputs_and_labels(model, num, seed, images=None, data_dir=None, echo=print):
  """`load_inputs` and the inputs' labels: int32 (N,) from the test split,
  None for --images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax import images as images_lib  # pylint: disable=g-import-not-at-top
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if images:
    x = images_lib.load_images(images, model.image_shape)[:num]
    echo(f'Inputs: {len(x)} image(s) from {images}.')
    return x, None
  name = model.config.data.name
  try:
    # The run's size and channel count (data.channels forces a folder's), so
    # the inputs have the shape the networks were trained on.
    test, labels = _test_split(name, data_dir or model.config.data.data_dir,
                               model.config.data.get('image_size'),
                               input_pipeline.config_channels(model.config))
  except UserError as e:
    raise UserError(f'{e} (Here: --data_dir=DIR, or give your own --images=PATH.)') from None
  idx = np.sort(np.random.default_rng(seed).choice(len(test), min(num, len(test)),
                                                  replace=False))
  echo(f'Inputs: {len(idx)} images from the {name} test split.')
  return input_pipeline.to_float(test[idx]), np.asarray(labels[idx], np.int32)


def run(workdir, mode='samples', num=None, seed=0, out='', step=None, images='',
        data_dir='', noise='gaussian', noise_level=0.3, mask='center',
        inpaint_method='auto', inpaint_steps=200, restarts=4, label=None,
        steps=DEFAULT_STEPS, scale=0, echo=print) -> dict:
  """Draws one mode's PNG from the checkpoint in `workdir`.

  Args:
    num: images per panel, default 64; interpolate: paths, default 8.
    steps: interpolate: images per path.
    scale: integer enlargement of the PNG; 0 = at least 256 px wide.
    The others: the flags of the same names.

  Returns:
    {'out': PNG path, 'step': checkpoint step, 'num': images per panel,
    'scale': the enlargement used, 'titles': the panels' titles} plus, per
    mode, PSNRs in dB: reconstruct 'psnr'; denoise 'psnr_noisy',
    'psnr_restored'; inpaint 'psnr_grey_fill', 'psnr_mean_fill' (trivial
    fills), 'psnr_completed' (all on the missing pixels only), and
    'inpaint_method'; class_grid 'num_classes'; interpolate 'paths', 'steps'.
  """
  check_args(mode, num, noise, noise_level, mask, inpaint_method, inpaint_steps,
             restarts, images, label, steps, scale)
  if num is None:
    num = DEFAULT_PATHS if mode == 'interpolate' else DEFAULT_NUM
  # Heavy imports only once the flags are known to be sane.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax import api  # pylint: disable=g-import-not-at-top
  from vaegan_jax import applications as apps  # pylint: disable=g-import-not-at-top
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  from vaegan_jax import viz  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.families import conditional  # pylint: disable=g-import-not-at-top

  stored = api.load_config(workdir)
  family = families.get(stored.model.family)
  family_name = family.__name__.rsplit('.', 1)[-1]
  num_classes = conditional.num_classes(stored)
  api.check_labels(label, 1, num_classes, family_name, flag='label')
  if mode == 'class_grid' and not num_classes:
    raise UserError(f'--mode=class_grid needs a class-conditional checkpoint; the '
                    f'{family_name} model in {workdir} was trained with '
                    'model.conditional=False.')
  if mode in INPUT_MODES and images and num_classes and label is None:
    raise UserError('This checkpoint is class-conditional and --images have no labels: '
                    'give their class with --label=K.')
  if mode in ('reconstruct', 'denoise') and not api.has_encoder(family):
    raise UserError(f'--mode={mode} needs an encoder and the {family_name} family '
                    f'has none; try --mode=samples, interpolate or inpaint.')
  if mode == 'inpaint':
    if inpaint_method == 'auto':
      # Iterating the autoencoder fills scattered blocks well but barely beats a
      # grey fill on a large centre hole, where fitting z to the observed
      # pixels wins (measured on the VAE and VAE-GAN, MNIST-5k).
      inpaint_method = ('posterior' if api.has_encoder(family) and mask != 'center'
                        else 'latent')
    if inpaint_method == 'posterior' and not api.has_encoder(family):
      raise UserError(f'--inpaint_method=posterior needs an encoder and the '
                      f'{family_name} family has none; use --inpaint_method=latent.')
  model = api.load(workdir, step)
  echo(f'Loaded {model.family_name} checkpoint at step {model.step} from {workdir} '
       f'({jax.device_count()} device(s)).')

  config, family, state = model.config, model.family, model.state
  root = jax.random.PRNGKey(seed)
  key = lambda purpose: jax.random.fold_in(root, purpose)
  # Labels (None for unconditional models) enter every model call through one
  # argument; `tile` repeats the inputs' labels for stacked restarts.
  reconstruct = lambda s, v, y: family.reconstruct(config, s, v, y)
  decode = lambda s, z, y: family.decode(config, s, z, y)
  tile = lambda y, m: None if y is None else jax.numpy.tile(y, m // y.shape[0])
  result = {'step': model.step, 'num': num}
  # Each panel: (images, title, viz.Panel options).

  if mode == 'samples':
    y = conditional.labels_for(config, key(_SAMPLES), num, label)  # As sample draws them.
    title = 'samples' if label is None else f'samples of class {label}'
    panels = [(model.sample(key(_SAMPLES), num, y), title,
               {'captions': viz.class_captions(y) if label is None else None})]
  elif mode == 'class_grid':
    ncol = max(1, num // num_classes)
    z = jax.random.normal(key(_CLASS_GRID), (ncol, model.latent_dim))
    panels = [(model.decode(jax.numpy.tile(z, (num_classes, 1)),
                            np.repeat(np.arange(num_classes), ncol)),
               'one row per class, the same latents in every row',
               {'ncol': ncol, 'row_labels': [str(k) for k in range(num_classes)]})]
    result['num'], result['num_classes'] = ncol * num_classes, num_classes
    echo(f'{num_classes} rows (classes 0-{num_classes - 1}) of the same {ncol} latents.')
  elif mode == 'interpolate':
    z = apps.interpolation_latents(key(_INTERPOLATE), num, steps, model.latent_dim)
    path_labels = None
    if num_classes:  # One class per path: --label, or drawn per path.
      path_labels = (np.full((num,), label) if label is not None else np.asarray(
          jax.random.randint(key(_ROW_LABELS), (num,), 0, num_classes)))
    ends = [p * steps + q for p in range(num) for q in (0, steps - 1)]
    panels = [(model.decode(z, None if path_labels is None else np.repeat(path_labels, steps)),
               f'{num} spherical interpolations of {steps} steps',
               {'ncol': steps, 'marked': ends,
                'col_labels': ['start'] + [''] * (steps - 2) + ['end'],
                'row_labels': None if path_labels is None else [
                    f'class {k}' for k in path_labels]})]
    result.update(num=num * steps, paths=num, steps=steps)
    echo(f'{num} paths of {steps} steps: spherical interpolations between random '
         'latents (the ends framed).')
  else:
    x, y = load_inputs_and_labels(model, num, seed, images, data_dir, echo)
    x = jax.numpy.asarray(x)
    n, (h, w, _) = x.shape[0], model.image_shape
    y = None if not num_classes else jax.numpy.asarray(
        np.full((n,), label) if label is not None else y, jax.numpy.int32)
    result['num'] = n
    captions = {'captions': viz.class_captions(y)}  # The class each image is given.
    if mode == 'reconstruct':
      x_hat = model.reconstruct(x, y)
      panels = [(x, 'inputs', captions), (x_hat, 'reconstructions', {})]
      result['psnr'] = float(apps.psnr(x, x_hat))
      echo(f'reconstruct: PSNR {result["psnr"]:.2f} dB')
    elif mode == 'denoise':
      noisy = apps.add_noise(key(_NOISE), x, noise, noise_level)
      restored = jax.jit(lambda s, v, yy: apps.denoise(
          lambda u: reconstruct(s, u, yy), v))(state, noisy, y)
      panels = [(x, 'clean', captions), (noisy, f'noisy ({noise} {noise_level:g})', {}),
                (restored, 'restored', {})]
      result['psnr_noisy'] = float(apps.psnr(x, noisy))
      result['psnr_restored'] = float(apps.psnr(x, restored))
      echo(f'denoise ({noise} {noise_level:g}): PSNR vs clean: noisy '
           f'{result["psnr_noisy"]:.2f} dB -> restored {result["psnr_restored"]:.2f} dB')
    else:  # inpaint
      m = (apps.center_mask(n, h, w) if mask == 'center'
           else apps.block_mask(key(_MASK), n, h, w))
      if inpaint_method == 'posterior':
        fill = jax.jit(lambda s, v, mm, yy: apps.inpaint_posterior(
            lambda u: reconstruct(s, u, tile(yy, u.shape[0])), v, mm, inpaint_steps))
        completed = fill(state, x, m, y)
      else:
        z0 = jax.random.normal(key(_LATENT_INIT), (restarts, n, model.latent_dim))
        if model.has_encoder:  # Start one run from the posterior mean.
          z0 = z0.at[0].set(model.encode(apps.apply_mask(x, m), y)[0])
        fill = jax.jit(lambda s, v, mm, z, yy: apps.inpaint_latent(
            lambda u: decode(s, u, tile(yy, u.shape[0])), v, mm, z, inpaint_steps))
        completed = fill(state, x, m, z0, y)
      masked = apps.apply_mask(x, m)
      panels = [(x, 'clean', captions), (masked, f'masked ({mask})', {}),
                (completed, f'completed ({inpaint_method})', {})]
      result['inpaint_method'] = inpaint_method
      result['psnr_grey_fill'] = float(apps.psnr(x, masked, 1.0 - m))
      result['psnr_mean_fill'] = float(apps.psnr(
          x, apps.apply_mask(x, m, apps.observed_mean(x, m)), 1.0 - m))
      result['psnr_completed'] = float(apps.psnr(x, completed, 1.0 - m))
      echo(f'inpaint ({mask} mask, {inpaint_method}): PSNR on the missing pixels: '
           f'grey fill {result["psnr_grey_fill"]:.2f} dB, observed-mean fill '
           f'{result["psnr_mean_fill"]:.2f} dB -> completed {result["psnr_completed"]:.2f} dB')

  figure = [viz.Panel(sharding.to_host(images), title, **options)
            for images, title, options in panels]
  out = out or os.path.join(workdir, f'{mode}_step{model.step}.png')
  rendered = viz.render(figure, scale)
  if jax.process_index() == 0:
    viz.save_png(out, rendered.image)
  result.update(out=out, scale=rendered.scale, titles=[p.title for p in figure])
  echo(f'Wrote {out}')
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir:
    raise UsageError('--workdir is required: the directory of a training run.')
  kernels.setup()
  from vaegan_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  run(FLAGS.workdir, mode=FLAGS.mode, num=FLAGS.num, seed=FLAGS.seed, out=FLAGS.out,
      steps=FLAGS.steps, scale=FLAGS.scale,
      step=FLAGS.step, images=FLAGS.images, data_dir=FLAGS.data_dir, noise=FLAGS.noise,
      noise_level=FLAGS.noise_level, mask=FLAGS.mask,
      inpaint_method=FLAGS.inpaint_method, inpaint_steps=FLAGS.inpaint_steps,
      restarts=FLAGS.restarts, label=FLAGS.label)


def cli_main():
  """The `vaegan-sample` command: the same as `python -m vaegan_jax.sample`."""
  from vaegan_jax import distributed  # pylint: disable=g-import-not-at-top
  define_flags()
  distributed.define_flags()
  cli.run(main)


if __name__ == '__main__':
  cli_main()
