"""A thin Orbax wrapper: restore-or-init, save every N steps, keep the last K.

Checkpoints live in `WORKDIR/checkpoints/<step>/`. A checkpoint is the whole
`TrainState` pytree, so restoring it resumes a run exactly. Restoring into an
abstract state with shardings for the current mesh lets a checkpoint written
on N devices be read on any other number of devices.
"""

import errno
import glob
import math
import os
import shutil

from absl import logging
import jax
import orbax.checkpoint as ocp

from vaegan_jax import rules
from vaegan_jax.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, keep: int = 3, read_only: bool = False,
            barrier_prefix: str | None = None) -> ocp.CheckpointManager:
  """An Orbax manager over WORKDIR/checkpoints keeping the last `keep` steps.

  Args:
    barrier_prefix: names its multi-process barriers apart from other
      managers that save the same step at the same time (the vmapped seeds'
      managers: Orbax keys the barriers by step otherwise).
  """
  extra = ({} if barrier_prefix is None else dict(
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=barrier_prefix)))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only, **extra)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)


def _path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))))
  return '.'.join(parts)


def structure(tree) -> dict:
  """{'params.encoder.Conv_0.kernel': shape, ...} for every array leaf."""
  return {_path_str(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_structure(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """A UserError naming the differences if checkpoint `step` holds another model."""
  path = os.path.join(str(mngr.directory), str(step), 'default')
  try:
    saved = structure(ocp.StandardCheckpointer().metadata(path).item_metadata)
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable metadata: let the restore itself report it.
  wanted = structure(abstract_state)
  if saved == wanted:
    return
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  shapes = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  if not extra and not shapes:  # Only missing entries: damaged, not foreign.
    raise ValueError(f'metadata lists {len(saved)} of {len(wanted)} arrays')
  details = []
  for name, keys in (('missing', missing), ('unexpected', extra), ('shape differs', shapes)):
    if keys:
      details.append(f'{name}: {", ".join(keys[:3])}' + (' ...' if len(keys) > 3 else ''))
  raise UserError(f'Checkpoint {step} in {mngr.directory} was written by another model '
                  f'(family or architecture): {"; ".join(details)}.')


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, shardings):
  """Restores `step` into the structure, dtypes and shardings of `abstract_state`."""
  check_structure(mngr, step, abstract_state)
  target = abstract_with_shardings(abstract_state, shardings)
  return mngr.restore(step, args=ocp.args.StandardRestore(target))


def restore_latest_good(mngr, abstract_state, shardings):
  """Restores the newest checkpoint that reads back whole.

  Orbax only lists finalised checkpoints, so a save cut short by a kill is
  never seen. A finalised one that was damaged afterwards (truncated or
  missing files) fails to read; it is skipped with a warning and the one
  before it is tried.

  Returns:
    The restored state, or None if there are no checkpoints.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  errors, mismatches = [], []
  for step in steps:
    try:
      state = restore(mngr, step, abstract_state, shardings)
      jax.block_until_ready(state)
    except UserError as e:  # Another model's checkpoint, or damaged metadata.
      mismatches.append(e)
      errors.append(f'checkpoint {step}: {e}')
      continue
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'checkpoint {step} is unreadable ({type(e).__name__}: '
                    f'{str(e).splitlines()[0][:200]})')
      continue
    for msg in errors:
      logging.warning('%s; fell back to checkpoint %d.', msg, step)
      print(f'warning: {msg}; falling back to checkpoint {step}.', flush=True)
    if errors:  # Move the bad ones aside so the run can save those steps again.
      _move_aside(mngr, [s for s in steps if s > step])
    return state
  if len(mismatches) == len(steps):
    raise mismatches[0]
  raise UserError(f'No readable checkpoint in {mngr.directory}: {"; ".join(errors)}. '
                  'Delete the damaged step directories or use a new --workdir.')


def _move_aside(mngr, steps):
  """Moves damaged step directories to WORKDIR/checkpoints_damaged/."""
  root = str(mngr.directory)
  aside = os.path.join(os.path.dirname(root), 'checkpoints_damaged')
  if jax.process_index() == 0:
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      target = os.path.join(aside, str(step))
      if os.path.exists(target):
        shutil.rmtree(target)
      shutil.move(os.path.join(root, str(step)), target)
      print(f'warning: moved damaged checkpoint {step} to {target}.', flush=True)
  mngr.reload()


def restore_or_init(mngr, init_fn, abstract_state, shardings):
  """The latest good checkpoint if there is one, else `init_fn()`.

  Returns:
    (state, restored): the state and whether it came from a checkpoint.
  """
  state = restore_latest_good(mngr, abstract_state, shardings)
  if state is None:
    return init_fn(), False
  return state, True


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (disk full, permissions, ...)."""


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  """Saves asynchronously; returns whether a save was started.

  Raises:
    CheckpointWriteError: this save, or the asynchronous one before it,
      failed; temporary directories are removed and the message names the
      last good checkpoint.
  """
  try:
    return mngr.save(step, args=ocp.args.StandardSave(state), force=force)
  except Exception as e:  # pylint: disable=broad-except
    raise write_failed(mngr, e) from e


def finish(mngr: ocp.CheckpointManager):
  """Waits for asynchronous saves and closes `mngr`; a failed save raises a
  `CheckpointWriteError` (see `save`)."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise write_failed(mngr, e) from e
  finally:
    try:
      mngr.close()
    except Exception:  # pylint: disable=broad-except
      pass  # Already reported by the wait above.


def remove_temporaries(directory: str) -> list[str]:
  """Deletes Orbax's unfinished `<step>.orbax-checkpoint-tmp*` directories."""
  removed = []
  if jax.process_index() != 0:
    return removed
  for path in glob.glob(os.path.join(glob.escape(directory), '*.orbax-checkpoint-tmp*')):
    shutil.rmtree(path, ignore_errors=True)
    removed.append(path)
  return removed


def finalized_steps(directory: str) -> list[int]:
  """Steps with a finished checkpoint directory (numeric names), ascending."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def write_failed(mngr, error: BaseException) -> CheckpointWriteError:
  """The one-line error for a failed save, after cleaning up its leftovers."""
  directory = str(mngr.directory)
  try:  # Let other saves in flight finish before their directories are judged.
    mngr.wait_until_finished()
  except Exception:  # pylint: disable=broad-except
    pass  # The same failure again, or another one: still reported as `error`.
  remove_temporaries(directory)
  steps = finalized_steps(directory)
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:200]
  disk = isinstance(error, OSError) and error.errno == errno.ENOSPC or (
      'RESOURCE_EXHAUSTED' in reason or 'No space left' in reason)
  last = (f'the last good checkpoint is step {steps[-1]} in {directory}' if steps
          else f'no checkpoint was written to {directory}')
  fix = 'free disk space' if disk else 'fix the cause'
  return CheckpointWriteError(
      f'Writing a checkpoint failed ({reason}); {last}. Training stopped; {fix} '
      f'and rerun the same command to resume' + (f' from step {steps[-1]}.' if steps else '.'))


def last_good_step(workdir: str) -> int | None:
  steps = finalized_steps(checkpoint_dir(workdir))
  return steps[-1] if steps else None


# ---------------------------------------------------------------------------
# Room for the next checkpoint (run_config.check_workdir checks the rest).
# ---------------------------------------------------------------------------


def state_bytes(abstract_state) -> int:
  """Bytes of every array of the (abstract) train state."""
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))


def check_free_space(workdir: str, abstract_state, copies: int = 1, margin: float = 1.25,
                     slack: int = 1 << 18):
  """A UserError if `workdir` lacks room for `copies` more checkpoints (2 where
  an evaluation step may save the periodic and the best checkpoint at once).

  The estimate is the state's size times `margin` plus `slack` bytes for
  Orbax's metadata files, per copy.
  """
  need = copies * (int(state_bytes(abstract_state) * margin) + slack)
  free = shutil.disk_usage(workdir).free
  if free < need:
    what = ('a checkpoint of this model' if copies == 1 else
            f'a checkpoint of this model and its best-checkpoint copy ({copies} in all)')
    raise UserError(
        f'--workdir={workdir} has {free / 2**20:.1f} MiB free, and {what} '
        f'{"needs" if copies == 1 else "need"} about {need / 2**20:.1f} MiB; free space '
        'or choose another --workdir.')
  return need


# ---------------------------------------------------------------------------
# The best checkpoint by an eval metric, in WORKDIR/checkpoints_best.
# ---------------------------------------------------------------------------


BEST_MODES = ('min', 'max')  # config.eval.best_mode.
RULES = {'eval.best_mode': rules.OneOf(BEST_MODES)}


def best_checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints_best')


def best_manager(workdir: str, metric: str = 'fid', mode: str = 'min',
                 read_only: bool = False, barrier_prefix: str = '') -> ocp.CheckpointManager:
  """An Orbax manager over WORKDIR/checkpoints_best keeping only the best step.

  "Best" is the lowest (`mode='min'`) or highest (`'max'`) value of `metric`
  in the metrics saved with each checkpoint (see `save_if_best`);
  `barrier_prefix` as for `manager` (its barriers are 'best' + it).
  """
  if mode not in BEST_MODES:
    raise UserError(f"config.eval.best_mode={mode!r} must be 'min' or 'max'.")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda m: m[metric], best_mode=mode,
      keep_checkpoints_without_metrics=False, create=not read_only,
      read_only=read_only, enable_async_checkpointing=not read_only,
      # Its own barrier names: in a multi-process run it saves the same step as
      # the periodic manager, at the same time, and Orbax's barriers are keyed
      # by step ('_async_write_complete.<step>' is already ongoing otherwise).
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix='best' + barrier_prefix))
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
  try:
    mngr.wait_until_finished()  # The kept step's metrics are readable once saved.
  except Exception as e:  # pylint: disable=broad-except
    raise write_failed(mngr, e) from e
  best = mngr.best_step()
  if best is not None:
    kept = (mngr.metrics(best) or {}).get(metric)
    if kept is not None and (value >= kept if mode == 'min' else value <= kept):
      return False
  try:
    return mngr.save(step, args=ocp.args.StandardSave(state), force=True,
                     metrics={k: v for k, v in metrics.items() if math.isfinite(v)})
  except Exception as e:  # pylint: disable=broad-except
    raise write_failed(mngr, e) from e
