"""Trains tiny configs of several families in one process (for device tests).

  python tests/train_families.py WORKDIR_ROOT DATA_DIR [family ...]

Each family trains `NUM_STEPS` steps into WORKDIR_ROOT/<family>, then writes
WORKDIR_ROOT/<family>/grid.npy: sample panels drawn from the final state.
The device count comes from the environment (XLA_FLAGS), and with
--coordinator_address/--num_processes/--process_id it runs as one process of
a multi-process job.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_STEPS = 5
GLOBAL_BATCH = 16


def child_args(argv):
  """The positional arguments of a device-test child; joins the multi-process
  job first when --coordinator_address/--num_processes/--process_id are given."""
  import jax  # pylint: disable=g-import-not-at-top
  args = [a for a in argv[1:] if not a.startswith('--')]
  flags = dict(a[2:].split('=', 1) for a in argv[1:] if a.startswith('--'))
  if 'coordinator_address' in flags:
    jax.distributed.initialize(flags['coordinator_address'], int(flags['num_processes']),
                               int(flags['process_id']))
  return args


def tiny_config(family, data_dir, compute_dtype='float32'):
  from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
  config = config_files.load(os.path.join(ROOT, 'configs', f'{family}.py'), 'smoke')
  config.data.data_dir = data_dir
  config.train.batch_size = GLOBAL_BATCH
  config.train.num_steps = NUM_STEPS
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = NUM_STEPS
  config.train.sample_every_steps = 100
  config.train.eval_every_steps = 100
  config.train.compute_dtype = compute_dtype
  if 'eval' in config:
    config.eval.generative_metrics = False
  return config


def grid(config, state):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax import families, sharding  # pylint: disable=g-import-not-at-top
  family = families.get(config.model.family)
  fn = jax.jit(functools.partial(family.sample, config, n=8),
               out_shardings=sharding.replicated(sharding.make_mesh()))
  return np.asarray(jax.device_get(fn(state, np.asarray(jax.random.PRNGKey(123)))))


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  args = child_args(argv)
  from vaegan_jax import kernels, train  # pylint: disable=g-import-not-at-top
  kernels.setup()  # As vaegan_jax.main does.
  root, data_dir, names = args[0], args[1], args[2:]
  for family in names:
    config = tiny_config(family, data_dir)
    state = train.train_and_evaluate(config, os.path.join(root, family))
    if jax.process_index() == 0:
      np.save(os.path.join(root, family, 'grid.npy'), grid(config, state))
  print('devices', jax.device_count(), 'processes', jax.process_count(), flush=True)


if __name__ == '__main__':
  main(sys.argv)
