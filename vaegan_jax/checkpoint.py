"""A thin Orbax wrapper: restore-or-init, save every N steps, keep the last K.

Checkpoints live in `WORKDIR/checkpoints/<step>/`. A checkpoint is the whole
`TrainState` pytree, so restoring it resumes a run exactly. Restoring into an
abstract state with shardings for the current mesh lets a checkpoint written
on N devices be read on any other number of devices.
"""

import math
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


# ---------------------------------------------------------------------------
# The best checkpoint by an eval metric, in WORKDIR/checkpoints_best.
# ---------------------------------------------------------------------------


def best_checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints_best')


def best_manager(workdir: str, metric: str = 'fid', mode: str = 'min',
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax manager over WORKDIR/checkpoints_best keeping only the best step.

  "Best" is the lowest (`mode='min'`) or highest (`'max'`) value of `metric`
  in the metrics saved with each checkpoint (see `save_if_best`).
  """
  if mode not in ('min', 'max'):
    raise UserError(f"config.eval.best_mode={mode!r} must be 'min' or 'max'.")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda m: m[metric], best_mode=mode,
      keep_checkpoints_without_metrics=False, create=not read_only,
      read_only=read_only, enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(best_checkpoint_dir(workdir), options=options)


def save_if_best(mngr: ocp.CheckpointManager, step: int, state, metrics: dict,
                 metric: str = 'fid', mode: str = 'min') -> bool:
  """Saves `state` into a `best_manager` if `metrics[metric]` beats the kept one.

  Args:
    metrics: name -> float (an 'eval/' prefix on the names is ignored); all
      finite values are stored with the checkpoint.
    metric, mode: as given to `best_manager`.

  Returns:
    Whether a save was started.

  Raises:
    UserError: `metric` is not among `metrics`.
  """
  metrics = {k.removeprefix('eval/'): float(v) for k, v in metrics.items()}
  if metric not in metrics:
    raise UserError(
        f'config.eval.best_metric={metric!r} is not an eval metric of this run; '
        f'available: {", ".join(sorted(metrics))}. Set --config.eval.best_metric to '
        f"one of them, or to '' to keep no best checkpoint.")
  value = metrics[metric]
  if not math.isfinite(value) or step in mngr.all_steps():
    return False
  mngr.wait_until_finished()  # The kept step's metrics are readable once saved.
  best = mngr.best_step()
  if best is not None:
    kept = (mngr.metrics(best) or {}).get(metric)
    if kept is not None and (value >= kept if mode == 'min' else value <= kept):
      return False
  return mngr.save(step, args=ocp.args.StandardSave(state), force=True,
                   metrics={k: v for k, v in metrics.items() if math.isfinite(v)})
