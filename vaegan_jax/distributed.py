"""Multi-process start through `jax.distributed` (one process per host/GPU).

With no flags, `jax.distributed.initialize()` is only called where the
environment describes a cluster (TPU pod, SLURM); a single process needs nothing.
"""

import os

from absl import flags
import jax

from vaegan_jax.errors import UsageError


def define_flags():
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for multi-process runs.')
  flags.DEFINE_integer('num_processes', None, 'Total number of processes.')
  flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes).')
  flags.DEFINE_bool('distributed', False,
                    'Call jax.distributed.initialize() with auto-detection '
                    '(TPU pods, SLURM) even without the three flags above.')


def _cluster_detected() -> bool:
  return 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1


def initialize():
  """Starts jax.distributed from the flags, or does nothing for one process."""
  f = flags.FLAGS
  given = [f.coordinator_address is not None, f.num_processes is not None,
           f.process_id is not None]
  if any(given) and not all(given):
    raise UsageError('--coordinator_address, --num_processes and --process_id go '
                    'together: give all three, or none for auto-detection.')
  if all(given):
    if not 0 <= f.process_id < f.num_processes:
      raise UsageError(f'--process_id={f.process_id} is not in [0, {f.num_processes}).')
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
  elif f.distributed or _cluster_detected():
    jax.distributed.initialize()
