"""Trains tiny configs of several families in one process (for device tests).

  python tests/train_families.py WORKDIR_ROOT DATA_DIR [name ...]   (e.g. vae, vae:conditional,
                                                                      seeds:vae)

Each config (a family's default, shrunk in steps and sizes: `tiny_config`)
trains `NUM_STEPS` steps with its evaluation on into WORKDIR_ROOT/<name>, then
writes WORKDIR_ROOT/<name>/grid.npy: sample panels drawn from the final state.
The device count comes from the environment (XLA_FLAGS), and with
--coordinator_address/--num_processes/--process_id it runs as one process of
a multi-process job. A name 'seeds:<name>' trains the seeds `SEEDS` of that
config as one vmapped step (train.train_seeds) into
WORKDIR_ROOT/seeds_<name>/seed_<s>.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_STEPS = 4
EVERY = 2            # Log, grid, evaluate and save every EVERY steps (twice per run).
GLOBAL_BATCH = 16
SEEDS = (0, 1)       # The vmapped seeds of a 'seeds:<name>' run; seed 0 is the default's.

# Each family's default config, shrunk in these sizes only (as its 'smoke'
# variant shrinks them); every feature stays on: evaluation with the
# generative metrics, sample grids, best checkpoint.
SIZES = {
    'vae': {'width': 8, 'hidden': 32, 'latent_dim': 8},
    'gan': {'latent_dim': 16, 'g_width_mult': 1 / 16, 'd_width_mult': 1 / 16},
    'vaegan': {'latent_dim': 8, 'enc_width': 8, 'enc_hidden': 32,
               'dec_width_mult': 0.0625, 'dis_width': 8},
}
# The only keys `tiny_config` changes (tests/test_distributed.py checks it).
CHANGED_KEYS = {'data.data_dir', 'train.batch_size', 'train.num_steps',
                'train.log_every_steps', 'train.checkpoint_every_steps',
                'train.sample_every_steps', 'train.eval_every_steps',
                'train.compute_dtype', 'eval.num_samples',
                *(f'model.{k}' for sizes in SIZES.values() for k in sizes)}


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


def default_config(name):
  """configs/<module>.py:get_config(arg) for a name 'module' or 'module:arg'."""
  from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
  module, _, arg = name.partition(':')
  return config_files.load(os.path.join(ROOT, 'configs', f'{module}.py'), arg or None)


def workdir_name(name):
  return name.replace(':', '_')


def tiny_config(name, data_dir, compute_dtype='float32'):
  """The default config of `name` ('vae', 'gan', 'vaegan', 'vae:conditional'),
  shrunk in steps and sizes only."""
  config = default_config(name)
  config.data.data_dir = data_dir
  for key, value in SIZES[name.partition(':')[0]].items():
    config.model[key] = value
  config.train.batch_size = GLOBAL_BATCH
  config.train.num_steps = NUM_STEPS
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = EVERY
  config.train.sample_every_steps = EVERY
  config.train.eval_every_steps = EVERY
  config.train.compute_dtype = compute_dtype
  config.eval.num_samples = 64
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
  for name in names:
    if name.startswith('seeds:'):
      configs = []
      for seed in SEEDS:
        config = tiny_config(name.partition(':')[2], data_dir)
        config.seed = seed
        configs.append(config)
      workdir = os.path.join(root, workdir_name(name))
      train.train_seeds(configs, [os.path.join(workdir, f'seed_{s}') for s in SEEDS])
      continue
    config = tiny_config(name, data_dir)
    workdir = os.path.join(root, workdir_name(name))
    state = train.train_and_evaluate(config, workdir)
    panels = grid(config, state)  # A jit over every process's devices: all call it.
    if jax.process_index() == 0:
      np.save(os.path.join(workdir, 'grid.npy'), panels)
  print('devices', jax.device_count(), 'processes', jax.process_count(), flush=True)


if __name__ == '__main__':
  main(sys.argv)
