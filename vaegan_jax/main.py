"""Trains a model: `python -m vaegan_jax.main --config=configs/vae.py --workdir=DIR`.

Override any config key with `--config.section.key=value`; a misspelt key or
a bad value is one `error:` line (exit status 2, vaegan_jax/validation.py)
before anything starts. Re-running in the same workdir resumes from the latest
checkpoint.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from vaegan_jax import cli
from vaegan_jax import distributed
from vaegan_jax import host_memory
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
  # Every value, before the multi-host start; the device rules run in train.
  validation.validate(FLAGS.config, devices=False)
  run_config.check_workdir(FLAGS.workdir)
  if FLAGS.config.train.get('keep_host_memory', True):
    host_memory.keep_freed_memory()  # Before the step first runs (module doc).
  distributed.initialize()
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
