"""Trains a model: `python -m vaegan_jax.main --config=configs/vae.py --workdir=DIR`.

Override any config key with `--config.section.key=value`; a misspelt key is an
error. Re-running in the same workdir resumes from the latest checkpoint.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vaegan_jax import distributed
from vaegan_jax.errors import UserError

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
  if not FLAGS['verbosity'].present:  # Keep library INFO chatter off the console.
    logging.set_verbosity(logging.WARNING)
  try:
    distributed.initialize()
    from vaegan_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
