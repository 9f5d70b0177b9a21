"""Trains a model: `python -m vaegan_jax.main --config=configs/vae.py --workdir=DIR`
(installed: `vaegan-train --config=configs/vae.py --workdir=DIR`).

Override any config key with `--config.section.key=value`; a misspelt key or
a bad value is one `error:` line (exit status 2, vaegan_jax/validation.py)
before anything starts. Re-running in the same workdir resumes from the latest
checkpoint.

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

from absl import app
from absl import flags
from ml_collections import config_flags

from vaegan_jax import cli
from vaegan_jax import distributed
from vaegan_jax import host_memory
from vaegan_jax import kernels
from vaegan_jax import run_config
from vaegan_jax import validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/vae.py or configs/gan.py:smoke.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
flags.mark_flags_as_required(['config', 'workdir'])
distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  kernels.setup()
  # Every value, before the multi-host start; the device rules run in train.
  validation.validate(FLAGS.config, devices=False)
  run_config.check_workdir(FLAGS.workdir)
  if FLAGS.config.train.get('keep_host_memory', True):
    host_memory.keep_freed_memory()  # Before the step first runs (module doc).
  distributed.initialize()
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def cli_main():
  """The `vaegan-train` command: the same as `python -m vaegan_jax.main`."""
  cli.run(main)


if __name__ == '__main__':
  cli_main()
