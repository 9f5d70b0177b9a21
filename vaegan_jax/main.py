"""Trains a model: `python -m vaegan_jax.main --config=configs/vae.py --workdir=DIR`
(installed: `vaegan-train --config=configs/vae.py --workdir=DIR`).

Override any config key with `--config.section.key=value`; a misspelt key or
a bad value is one `error:` line (exit status 2, vaegan_jax/validation.py)
before anything starts. Re-running in the same workdir resumes from the latest
checkpoint.

`--seeds=3,5,7` trains those seeds of the config as one vmapped step
(vaegan_jax/vmap_seeds.py), each into WORKDIR/seed_<s> as a run of that seed
alone would be written, in one process or several.

Configs (configs/; a variant after a colon, e.g. configs/gan.py:smoke):
  configs/vae.py     :smoke :conditional :conditional_smoke :cifar10 :svhn_cropped
                     :celeb_a :celeb_a64
  configs/gan.py     :smoke :conditional :conditional_smoke :cifar10 :svhn_cropped
                     :celeb_a :cifar10_dcgan :cifar10_sngan :celeb_a64
  configs/vaegan.py  :smoke :conditional :conditional_smoke :cifar10 :svhn_cropped
                     :celeb_a :celeb_a64
  configs/bench/dcgan28.py, configs/bench/convvae28.py (the CPU benchmarks)

The other commands (each also `python -m vaegan_jax.<name>`):
  vaegan-sample    (sample)    a checkpoint -> grids, interpolations, reconstructions,
                               denoising, inpainting
  vaegan-evaluate  (evaluate)  a checkpoint -> metrics JSON (FID, KID, ...)
  vaegan-plot      (plot)      a run's training curves -> PNG
  vaegan-fid       (fid)       two image sets (folders, .npz, workdirs, saved
                               statistics) -> FID, KID, precision/recall, ...
"""

import copy
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from vaegan_jax import cli
from vaegan_jax import distributed
from vaegan_jax import host_memory
from vaegan_jax import kernels
from vaegan_jax import run_config
from vaegan_jax import validation
from vaegan_jax.errors import UsageError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/vae.py or configs/gan.py:smoke.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
flags.DEFINE_list('seeds', None, 'Train these seeds of the config (e.g. 3,5,7) as one '
                  'vmapped step, each into WORKDIR/seed_<s>; default one run of '
                  'config.seed into WORKDIR.')
flags.mark_flags_as_required(['config', 'workdir'])
distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  kernels.setup()
  # Every value, before the multi-host start; the device rules run in train.
  validation.validate(FLAGS.config, devices=False)
  run_config.check_workdir(FLAGS.workdir)
  seeds = _seeds(FLAGS.seeds)
  if FLAGS.config.train.get('keep_host_memory', True):
    host_memory.keep_freed_memory()  # Before the step first runs (module doc).
  distributed.initialize()
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  if seeds is None:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    return
  configs = []
  for seed in seeds:
    config = copy.deepcopy(FLAGS.config)
    config.seed = seed
    configs.append(config)
  train.train_seeds(configs, [os.path.join(FLAGS.workdir, f'seed_{s}') for s in seeds])


def _seeds(values) -> list[int] | None:
  """--seeds as distinct ints (a UsageError otherwise), or None."""
  if not values:
    return None
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise UsageError(f'--seeds={",".join(values)}: give integers, e.g. --seeds=0,1,2.'
                     ) from None
  if len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UsageError(f'--seeds={",".join(values)}: give distinct seeds >= 0.')
  return seeds


def cli_main():
  """The `vaegan-train` command: the same as `python -m vaegan_jax.main`."""
  cli.run(main)


if __name__ == '__main__':
  cli_main()
