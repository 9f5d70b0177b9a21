"""A thin Orbax wrapper: restore-or-init, save every N steps, keep the last K.

Checkpoints live in `WORKDIR/checkpoints/<step>/`. A checkpoint is the whole
`TrainState` pytree, so restoring it resumes a run exactly. Restoring into an
abstract state with shardings for the current mesh lets a checkpoint written
on N devices be read on any other number of devices.
"""

import os

from absl import logging
import jax
import orbax.checkpoint as ocp

from vaegan_jax.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax manager over WORKDIR/checkpoints keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, shardings):
  """Restores `step` into the structure, dtypes and shardings of `abstract_state`."""
  target = abstract_with_shardings(abstract_state, shardings)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(target))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(
        f'Checkpoint step {step} in {mngr.directory} does not match this '
        f'model (was it written by another family or architecture?): '
        f'{str(e).splitlines()[0][:300]}') from None


def restore_or_init(mngr, init_fn, abstract_state, shardings):
  """The latest checkpoint if there is one, else `init_fn()`.

  Returns:
    (state, restored): the state and whether it came from a checkpoint.
  """
  step = mngr.latest_step()
  if step is None:
    return init_fn(), False
  logging.info('Restoring checkpoint at step %d from %s.', step, mngr.directory)
  return restore(mngr, step, abstract_state, shardings), True


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  """Saves asynchronously; returns whether a save was started."""
  return mngr.save(step, args=ocp.args.StandardSave(state), force=force)
