"""The one training loop, shared by every model family.

    mesh -> data -> family -> state (init or restore) -> jitted step -> loop
    (log, sample grids, evaluate, checkpoint, stop on NaN).
"""

import collections
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from vaegan_jax import checkpoint
from vaegan_jax import console
from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import run_config
from vaegan_jax import sharding
from vaegan_jax import validation
from vaegan_jax import summaries
from vaegan_jax import viz
from vaegan_jax.families import conditional
from vaegan_jax.metrics import generative
from vaegan_jax.errors import ForcedStop
from vaegan_jax.errors import SigTerm
from vaegan_jax.errors import UserError

GRID_SIZE = 36          # Images per panel of a sample grid.
GRID_KEY = 0x5A3F1E     # Fixed purpose: the same latents in every grid.
PENDING_FILE = 'pending_metrics.json'  # Step metrics not yet logged at an interrupt.


class NonFiniteError(UserError):
  """Training produced a NaN or Inf.

  Attributes:
    step: the first step whose metrics were not finite (None if unknown).
    seed: the seed that diverged, where several train as one (vmap_seeds).
  """

  def __init__(self, message: str, step: int | None = None, seed: int | None = None):
    super().__init__(message)
    self.step, self.seed = step, seed


class Interrupted(UserError):
  """Ctrl-C: the run stopped; the message names the checkpoint kept."""
  exit_code = 130


class Terminated(Interrupted):
  """SIGTERM (e.g. a cluster scheduler's preemption), handled as Ctrl-C."""
  exit_code = 143  # 128 + SIGTERM, as a shell reports a process it killed.


# ---------------------------------------------------------------------------
# Ctrl-C and SIGTERM: a request the loop acts on between steps.
# ---------------------------------------------------------------------------

AGREE_EVERY_STEPS = 10  # Multi-process: the processes compare requests this often.
_NONE, _CTRL_C, _SIGTERM = 0, 1, 2


class StopRequest:
  """Ctrl-C (SIGINT) and SIGTERM as a flag the training loop reads between
  steps, so that it can save the step reached and exit cleanly.

  A second Ctrl-C raises `errors.ForcedStop` at once (nothing more is saved).
  In a multi-process run the processes agree on one step: every
  `agree_every` steps (and between evaluation batches) they gather their
  flags (`multihost_utils.process_allgather`, one int per process), so a
  signal to any one of them stops all of them at the same step, with the
  same message (SIGTERM wins over Ctrl-C).

  Usage:
    stop = StopRequest()
    with stop.handlers():
      ...
      if stop.requested(step): save, then raise stop.error(...)
  """

  def __init__(self, agree_every: int = AGREE_EVERY_STEPS):
    self.local = _NONE       # What this process received.
    self.agreed = _NONE      # What the loop acts on (all processes alike).
    self.every = max(1, int(agree_every))
    self.multi = jax.process_count() > 1

  @contextlib.contextmanager
  def handlers(self):
    """Installs the SIGINT and SIGTERM handlers (main thread only) and puts
    the previous ones back after."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
      signal.signal(s, self._on_signal)
    try:
      yield
    finally:
      for s, handler in previous.items():
        # None: a handler installed outside Python (jax.distributed's SIGTERM
        # notifier); it cannot be put back, the default takes its place.
        signal.signal(s, signal.SIG_DFL if handler is None else handler)

  def _on_signal(self, signum, frame):
    del frame
    kind = _CTRL_C if signum == signal.SIGINT else _SIGTERM
    if kind == _CTRL_C and self.local != _NONE:
      raise ForcedStop()
    if self.local == _NONE:
      what = 'Ctrl-C' if kind == _CTRL_C else 'SIGTERM'
      print(f'{what}: saving the step reached, then stopping '
            '(Ctrl-C again stops at once without saving).', file=sys.stderr, flush=True)
    self.local = max(self.local, kind)

  def requested(self, step: int | None = None) -> bool:
    """Whether to stop now. `step`: called once per step (multi-process: the
    flags are compared when step % agree_every == 0); None: between
    evaluation batches (compared every call)."""
    if self.agreed != _NONE:
      return True
    if not self.multi:
      self.agreed = self.local
    elif step is None or step % self.every == 0:
      flags = multihost_utils.process_allgather(np.asarray(self.local, np.int32))
      self.agreed = int(np.max(flags))
    return self.agreed != _NONE

  def note_interrupt(self, exc: BaseException):
    """A KeyboardInterrupt raised outside the handler (a library's own, or a
    test's) counts as Ctrl-C."""
    if self.agreed == _NONE:
      self.agreed = _SIGTERM if isinstance(exc, SigTerm) else _CTRL_C

  def error(self, message: str) -> 'Interrupted':
    """Interrupted (Ctrl-C) or Terminated (SIGTERM) with `message`."""
    if self.agreed == _SIGTERM:
      return Terminated(f'Terminated (SIGTERM) at step {message}')
    return Interrupted(f'Interrupted (Ctrl-C) at step {message}')


def _is_main():
  return jax.process_index() == 0


class MetricsLog:
  """metrics.jsonl (one JSON object per logged step) plus TensorBoard scalars."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = summaries.ScalarWriter(workdir if _is_main() else None)

  def write(self, step: int, scalars: dict):
    notes = {k: v for k, v in scalars.items() if isinstance(v, str)}  # Eval protocol: jsonl only.
    scalars = {k: float(v) for k, v in scalars.items() if k not in notes}
    if _is_main():
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': int(step), **scalars, **notes}) + '\n')
    self.writer.write_scalars(int(step), scalars)
    self.writer.flush()

  def rows(self) -> list[dict]:
    """The rows written so far (a line cut short by a kill is skipped)."""
    rows = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except json.JSONDecodeError:
            continue
          if isinstance(row, dict) and 'step' in row:
            rows.append(row)
    return rows

  def drop_after(self, step: int) -> int:
    """Drops the rows of steps past `step` (a resumed run logs them again),
    rewriting the file atomically; process 0 only. Returns how many went."""
    if not _is_main() or not os.path.exists(self.path):
      return 0
    rows = self.rows()
    kept = [r for r in rows if r['step'] <= step]
    with open(self.path) as f:
      whole = f.read().endswith('\n') or not f.tell()
    if len(kept) == len(rows) and whole:
      return 0
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
    return len(rows) - len(kept)


def save_pending(workdir: str, step: int, host_pending: list):
  """Keeps the metrics of the steps after the last logged one (host values)
  beside the checkpoint of `step`, so that a resumed run logs the same means
  as a run never stopped. Process 0 only."""
  if not _is_main():
    return
  rows = [{k: [np.asarray(v).dtype.str, np.asarray(v).tolist()] for k, v in m.items()}
          for m in host_pending]
  path = os.path.join(workdir, PENDING_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump({'step': int(step), 'metrics': rows}, f)
  os.replace(path + '.tmp', path)


def load_pending(workdir: str, step: int) -> list:
  """The metrics `save_pending` kept for `step` (host arrays), else []."""
  try:
    with open(os.path.join(workdir, PENDING_FILE)) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return []
  if not isinstance(saved, dict) or saved.get('step') != step:
    return []
  return [{k: np.asarray(v, np.dtype(dt)) for k, (dt, v) in m.items()}
          for m in saved.get('metrics', [])]


def _format_duration(seconds):
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def donated(tree) -> bool:
  """Whether any array of tree went to a jitted step as a donated buffer
  (a step interrupted before it returned): nothing of it can be read."""
  return any(x.is_deleted() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))


def finite_state(state) -> bool:
  """Whether every float array of `state` is finite (never save a NaN state)."""
  host = jax.device_get(jax.tree.leaves(state))
  return all(np.all(np.isfinite(x)) for x in host
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def _check_finite(pending: list, last_step: int):
  """Raises NonFiniteError naming the first step and metric that is NaN/Inf.

  Args:
    pending: host metrics dicts of consecutive steps ending at `last_step`.
  """
  first_step = last_step - len(pending) + 1
  for i, metrics in enumerate(pending):
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        raise NonFiniteError(
            f'Non-finite {name}={float(np.ravel(value)[0])} at step {first_step + i}; '
            f'training stopped. The checkpoints before it are intact; lower the '
            f'learning rate or check the data.', step=first_step + i)


def write_grid(grid_fn, state, key, test_images, path, test_labels=None,
               titles=(), num_classes=0):
  """Writes the family's panels (e.g. samples | inputs | reconstructions) as one
  titled PNG (vaegan_jax/viz.py).

  Args:
    grid_fn: jitted `family.grid_panels` bound to the config.
    test_labels: int32 (N,) labels of `test_images`; they condition a
      conditional model's panels.
    titles: one title per panel (`family.GRID_TITLES`).
    num_classes: K of a conditional model (0 otherwise): its samples (classes
      0, 1, ... in turn, see `grid_panels`) are captioned with their class.
  """
  panels = jax.device_get(grid_fn(state, key, test_images, test_labels))
  titles = tuple(titles) + ('',) * (len(panels) - len(titles))
  figure = [viz.Panel(np.asarray(p), t) for p, t in zip(panels, titles)]
  if num_classes:
    figure[0].captions = viz.class_captions(np.arange(len(panels[0])) % num_classes)
  if _is_main():
    viz.save(path, figure)


def evaluate(config, family, eval_fn, state, data, mesh, generative_eval=None,
             should_stop=None) -> dict | None:
  """Family eval metrics averaged over the whole test split, 'eval/' prefixed,
  plus `generative_eval`'s sample metrics (FID, KID, …) where given.

  Args:
    should_stop: called between evaluation batches (`StopRequest.requested`);
      when it returns True the evaluation is abandoned.

  Returns:
    The scalars, or None where the evaluation was abandoned.
  """
  should_stop = should_stop or (lambda: False)
  totals, count = collections.defaultdict(float), 0
  for batch, valid in input_pipeline.eval_batches(
      data.test_images, data.test_labels, config.train.batch_size,
      sharding.data_sharding(mesh)):
    if should_stop():
      return None
    for k, v in jax.device_get(eval_fn(state, batch)).items():
      totals[k] += float(v)
    count += valid
  scalars = {f'eval/{k}': v / count for k, v in totals.items()}
  if generative_eval is not None:
    if should_stop():
      return None
    gen = generative_eval(state, config.eval.num_samples)
    scalars.update({f'eval/{k}': v for k, v in gen.items() if f'eval/{k}' not in scalars})
  return scalars


def numbers_only(scalars: dict) -> dict:
  """The eval scalars without the protocol notes (strings) logged beside them."""
  return {k: v for k, v in scalars.items() if not isinstance(v, str)}


def keeps_best(config) -> bool:
  """Whether a run of `config` may keep a best checkpoint (room for 2 copies)."""
  eval_cfg = config.get('eval') or {}
  best_metric = eval_cfg.get('best_metric', '')
  return bool(best_metric) and (best_metric not in generative.METRIC_KEYS
                                or eval_cfg.get('generative_metrics', True))


def _owed(workdir, log, step, grid_due, eval_due) -> tuple[bool, bool]:
  """(grid, eval): what step `step` of a restored run still owes (a run
  stopped during its evaluation, or at its last step): a due sample grid
  without its PNG, a due evaluation without its row. Decided by process 0."""
  grid = grid_due and not os.path.exists(_grid_path(workdir, step))
  evals = eval_due and not any(r['step'] == step and any(k.startswith('eval/') for k in r)
                               for r in log.rows())
  owed = np.asarray([grid, evals], np.int32)
  if jax.process_count() > 1:
    owed = multihost_utils.broadcast_one_to_all(owed)
  return bool(owed[0]), bool(owed[1])


def _grid_path(workdir, step):
  return os.path.join(workdir, 'samples', f'step_{step:07d}.png')


def train_and_evaluate(config, workdir: str):
  """Trains `config.model.family` on `config.data.name`, writing into `workdir`.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is one
  (and first does what that step still owes: an evaluation or a sample grid
  an interrupt cut short). Ctrl-C or SIGTERM saves the step reached, waits
  for the saves and raises `Interrupted` / `Terminated` (see `StopRequest`).

  Returns:
    The final TrainState.
  """
  # ----------------------------------------------------------------- setup
  validation.validate(config)  # Every key, range and cross-field rule, first.
  input_pipeline.resolve_image_size(config)  # folder:PATH at 0 -> the size chosen, saved.
  family = families.get(config.model.family)
  run_config.check_workdir(workdir)
  run_config.check_and_save(config, workdir)
  print(f'Training the {config.model.family} model on {config.data.name} for '
        f'{config.train.num_steps} steps of {config.train.batch_size} images; '
        f'workdir {workdir}', flush=True)
  mesh = sharding.make_mesh()
  data = input_pipeline.Data(config)

  # ----------------------------------------------------------------- state
  root_key = jax.random.PRNGKey(config.seed)
  init_fn = functools.partial(family.init_state, config)
  abstract_state = jax.eval_shape(init_fn, root_key)
  # Room for the periodic checkpoint and, where one may be kept, the best one.
  checkpoint.check_free_space(workdir, abstract_state, copies=2 if keeps_best(config) else 1)
  state_sharding = sharding.state_sharding(mesh, abstract_state)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  state, restored = checkpoint.restore_or_init(
      mngr, lambda: jax.jit(init_fn, out_shardings=state_sharding)(root_key),
      abstract_state, state_sharding)
  start_step = int(jax.device_get(state.step))
  log = MetricsLog(workdir)
  if restored:
    logging.info('Resuming at step %d of %d.', start_step, config.train.num_steps)
    print(f'Resuming from checkpoint at step {start_step}.', flush=True)
  log.drop_after(start_step)  # Rows of steps never saved are logged again.

  # ------------------------------------------------------------------ step
  repl = sharding.replicated(mesh)
  batch_sharding = sharding.data_sharding(mesh)
  train_step = jax.jit(functools.partial(family.train_step, config),
                       in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(family.eval_step, config),
                    in_shardings=(state_sharding, batch_sharding), out_shardings=repl)
  grid_fn = jax.jit(functools.partial(family.grid_panels, config), out_shardings=repl)
  grid_key = np.asarray(jax.random.fold_in(root_key, GRID_KEY))  # Host values, so
  grid_rows = input_pipeline.balanced_sample(data.test_labels, GRID_SIZE, config.seed)
  grid_images = input_pipeline.to_float(data.test_images[grid_rows])  # multi-host safe.
  grid_labels = np.asarray(data.test_labels[grid_rows], np.int32)
  gen_eval = generative.training_evaluator(config, family, data.test_images, mesh,
                                           test_labels=data.test_labels)
  best_metric, best_mode = generative.best_metric(config, family, gen_eval)  # Or a fallback.
  best_mngr = (checkpoint.best_manager(workdir, best_metric, best_mode)
               if best_metric else None)

  # ------------------------------------------------------------------ loop
  tc = config.train
  num_steps = tc.num_steps
  due = lambda every, s: s % every == 0 or s == num_steps
  stop = StopRequest()

  def write_grid_at(s):
    write_grid(grid_fn, state, grid_key, grid_images, _grid_path(workdir, s), grid_labels,
               family.GRID_TITLES, conditional.num_classes(config))

  def evaluate_at(s) -> bool:
    """Evaluates (and keeps the best checkpoint); False if abandoned."""
    scalars = evaluate(config, family, eval_fn, state, data, mesh, gen_eval,
                       should_stop=stop.requested)
    if scalars is None:
      return False
    if best_mngr:
      checkpoint.save_if_best(best_mngr, s, state, numbers_only(scalars), best_metric,
                              best_mode)
    log.write(s, scalars)
    print(console.eval_block(s, scalars, family.EVAL_CONSOLE_METRICS), flush=True)
    return True

  # On CPU with several (emulated) devices, many in-flight collectives can
  # deadlock XLA's rendezvous; bound the queue there only.
  max_in_flight = 2 if jax.default_backend() == 'cpu' and jax.device_count() > 1 else None
  pending = load_pending(workdir, start_step) if restored else []  # Not yet logged.
  in_flight = collections.deque()
  it = None
  t_last, steps_last = time.time(), start_step
  t_start = time.time()
  step = start_step
  owed = ()
  stopped = False      # A stop request was acted on (Ctrl-C, SIGTERM).
  saving = saved = None  # The step whose save it started / that was saved.
  managers = [m for m in (mngr, best_mngr) if m]
  with stop.handlers():
    try:
      it = data.train_iterator(batch_sharding, start_step)
      if restored:  # What the restored step still owes (an interrupted evaluation).
        owe_grid, owe_eval = _owed(workdir, log, step, due(tc.sample_every_steps, step),
                                   due(tc.eval_every_steps, step))
        owed = ('sample grid',) * owe_grid + ('evaluation',) * owe_eval
        if owe_grid:
          write_grid_at(step)
        if owe_eval and not evaluate_at(step):
          stopped = True
      while step < num_steps and not stopped:
        batch = next(it)
        if stop.requested(step):
          stopped = True
          break
        state, metrics = train_step(state, batch)
        step += 1
        pending.append(metrics)
        if max_in_flight:
          in_flight.append(metrics)
          if len(in_flight) > max_in_flight:
            jax.block_until_ready(in_flight.popleft())

        is_last = step == num_steps
        if due(tc.log_every_steps, step):
          host = jax.device_get(pending)
          _check_finite(host, step)
          scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
          pending = []
          now = time.time()
          steps_per_s = (step - steps_last) / max(now - t_last, 1e-9)
          t_last_log, t_last, steps_last = t_last, now, step
          scalars['steps_per_s'] = steps_per_s
          scalars['images_per_s'] = steps_per_s * tc.batch_size
          scalars.update(it.take_stats(now - t_last_log))  # data_wait_fraction, decode_images_per_s.
          log.write(step, scalars)
          eta = (num_steps - step) / max(steps_per_s, 1e-9)
          main = ' '.join(f'{k} {scalars[k]:.4g}' for k in family.CONSOLE_METRICS if k in scalars)
          data_line = (f' | data wait {scalars["data_wait_fraction"]:.0%} read '
                       f'{scalars.get("decode_images_per_s", 0):.0f} img/s'
                       if 'data_wait_fraction' in scalars else '')
          print(f'step {step}/{num_steps} | {steps_per_s:.2f} steps/s '
                f'{scalars["images_per_s"]:.0f} img/s{data_line} | ETA '
                f'{_format_duration(eta)} | {main}', flush=True)

        if due(tc.sample_every_steps, step):
          write_grid_at(step)

        if due(tc.eval_every_steps, step) and not evaluate_at(step):
          stopped = True  # Abandoned for Ctrl-C / SIGTERM: a rerun does it.
          break

        periodic = (step % tc.sample_every_steps == 0 or step % tc.eval_every_steps == 0
                    or step % tc.checkpoint_every_steps == 0)
        if due(tc.checkpoint_every_steps, step):
          _check_finite(jax.device_get(pending), step)  # Never save a NaN state.
          checkpoint.save(mngr, step, state, force=True)
        if periodic:  # Keep grids, evals and saves out of the throughput numbers.
          jax.block_until_ready(state)
          t_last, steps_last = time.time(), step
          it.take_stats(None)  # Waits before the pause belong to no interval.
      if stopped:
        saving = step
        saved = _save_stopped(workdir, mngr, state, step, pending)
      _close_quietly(it, managers)  # Waits for every save; a failed one raises.
    except BaseException as e:  # pylint: disable=broad-except
      if isinstance(e, ForcedStop):  # A second Ctrl-C: no waiting for anything.
        _close_quietly(it, [], e)
        skipped = (f'leaving the save of step {saving} unfinished' if saving is not None
                   else f'without saving step {step}')
        raise Interrupted(f'Interrupted (Ctrl-C twice) at step {step}: stopped at once, '
                          f'{skipped}; {_kept(workdir)}.') from None
      if isinstance(e, KeyboardInterrupt) and not stopped and not donated(state):
        # Raised by other code than the handler (a library, a test): as Ctrl-C.
        stop.note_interrupt(e)
        stopped, saving = True, step
        saved = _save_stopped(workdir, mngr, state, step, pending)
        _close_quietly(it, managers)
      else:
        e = _close_quietly(it, managers, e)
        if not isinstance(e, KeyboardInterrupt):
          raise e
        stop.note_interrupt(e)
        raise stop.error(f'{step}; its state was in a step that did not finish, so it was '
                         f'not saved; {_kept(workdir)}.') from None
  if stopped:  # Every save has finished (on every process: the wait is collective).
    done = 'saved it; ' if saved is not None else ''
    error = stop.error(f'{step}; {done}{_kept(workdir, saved)}.')
    if jax.process_count() > 1:
      # The entry point exits at once: leave the distributed runtime together
      # first, so that no process loses the coordinator inside Orbax's last
      # barrier.
      jax.distributed.shutdown()
    raise error
  if step == start_step and owed:
    print(f'Done: step {step} had its {" and ".join(owed)} still to do; '
          f'workdir {workdir}', flush=True)
  elif step == start_step:
    print(f'Nothing to do: the checkpoint is at step {step} and '
          f'config.train.num_steps={num_steps}.', flush=True)
  else:
    print(f'Done: {step - start_step} steps in {_format_duration(time.time() - t_start)}; '
          f'workdir {workdir}', flush=True)
  return state


def _kept(workdir, saved: int | None = None) -> str:
  """Which checkpoint a rerun resumes from; `saved`: a step whose save has
  finished (process 0 may still be renaming it into place)."""
  last = max((s for s in (checkpoint.last_good_step(workdir), saved) if s is not None),
             default=None)
  if last is None:
    return 'no checkpoint was written yet'
  return (f'the last good checkpoint is step {last} in {checkpoint.checkpoint_dir(workdir)}; '
          'rerun the same command to resume from it')


def _close_quietly(it, managers, error=None):
  """Stops the input workers and finishes (waits for) the saves in flight
  without hiding `error`; a failed save becomes the error to report (it is
  raised where there is no `error`). Returns the error to report."""
  closers = ([it.close] if it is not None else []) + [
      functools.partial(checkpoint.finish, m) for m in managers]
  for close in closers:
    try:
      close()
    except checkpoint.CheckpointWriteError as write_error:
      if error is None:
        raise
      if not isinstance(error, checkpoint.CheckpointWriteError):
        error = write_error
    except Exception:  # pylint: disable=broad-except
      logging.exception('Error while shutting down after %r.', error)
  return error


def _save_stopped(workdir, mngr, state, step, pending) -> int | None:
  """On a stop request: starts the save of `state` at `step` (unless saved
  already or not finite) and keeps the unlogged step metrics beside it.

  Returns:
    The step whose save was started, or None.
  """
  try:
    host = jax.device_get(pending)
    _check_finite(host, step)
    if step in mngr.all_steps() or not finite_state(state):
      return None
    save_pending(workdir, step, host)
    return step if checkpoint.save(mngr, step, state, force=True) else None
  except NonFiniteError:
    return None  # Never save a NaN state: the message names the last good one.
