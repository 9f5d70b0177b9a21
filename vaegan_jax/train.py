"""The one training loop, shared by every model family.

    mesh -> data -> family -> state (init or restore) -> jitted step -> loop
    (log, sample grids, evaluate, checkpoint, stop on NaN).
"""

import collections
import functools
import json
import contextlib
import os
import signal
import threading
import time

from absl import logging
import jax
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
from vaegan_jax.errors import SigTerm
from vaegan_jax.errors import UserError

GRID_SIZE = 36          # Images per panel of a sample grid.
_GRID_KEY = 0x5A3F1E    # Fixed purpose: the same latents in every grid.


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


@contextlib.contextmanager
def _sigterm_as_interrupt():
  """During training, SIGTERM raises SigTerm in the main thread, so the loop
  saves the step reached as on Ctrl-C (a scheduler's preemption notice).
  Only in a one-process run's main thread (multi-process runs keep
  jax.distributed's own handler); the previous handler is restored after."""
  if (threading.current_thread() is not threading.main_thread()
      or jax.process_count() > 1):
    yield
    return

  def handler(signum, frame):
    del signum, frame
    raise SigTerm()

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


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


def _format_duration(seconds):
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def donated(tree) -> bool:
  """Whether any array of tree went to a jitted step as a donated buffer
  (a step interrupted before it returned): nothing of it can be read."""
  return any(x.is_deleted() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))


def _save_on_interrupt(mngr, state, pending) -> int | None:
  """On Ctrl-C or SIGTERM, starts a save of the state the loop holds, so that a rerun
  resumes from the step reached instead of the last periodic checkpoint (the
  batches follow from the step, so the result equals an uninterrupted run's).

  Returns the step saved, or None where nothing is saved: a multi-process run
  (a save is collective and the other processes were not interrupted), a
  state whose buffers went to a step that did not return (donated), a step
  already saved, or non-finite values (never save a NaN state).
  """
  try:
    if jax.process_count() > 1:
      return None
    if donated(state):
      return None
    step = int(jax.device_get(state.step))
    if step in mngr.all_steps():
      return None
    _check_finite(jax.device_get(pending), step)
    host = jax.device_get(jax.tree.leaves(state))
    if not all(np.all(np.isfinite(x)) for x in host
               if np.issubdtype(np.asarray(x).dtype, np.floating)):
      return None
    checkpoint.save(mngr, step, state, force=True)
    return step
  except (NonFiniteError, checkpoint.CheckpointWriteError):
    return None


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


def evaluate(config, family, eval_fn, state, data, mesh, generative_eval=None) -> dict:
  """Family eval metrics averaged over the whole test split, 'eval/' prefixed,
  plus `generative_eval`'s sample metrics (FID, KID, …) where given."""
  totals, count = collections.defaultdict(float), 0
  for batch, valid in input_pipeline.eval_batches(
      data.test_images, data.test_labels, config.train.batch_size,
      sharding.data_sharding(mesh)):
    for k, v in jax.device_get(eval_fn(state, batch)).items():
      totals[k] += float(v)
    count += valid
  scalars = {f'eval/{k}': v / count for k, v in totals.items()}
  if generative_eval is not None:
    gen = generative_eval(state, config.eval.num_samples)
    scalars.update({f'eval/{k}': v for k, v in gen.items() if f'eval/{k}' not in scalars})
  return scalars


def train_and_evaluate(config, workdir: str):
  """Trains `config.model.family` on `config.data.name`, writing into `workdir`.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is one.

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
  eval_cfg = config.get('eval') or {}
  best_metric = eval_cfg.get('best_metric', '')
  keeps_best = bool(best_metric) and (best_metric not in generative.METRIC_KEYS
                                      or eval_cfg.get('generative_metrics', True))
  checkpoint.check_free_space(workdir, abstract_state, copies=2 if keeps_best else 1)
  state_sharding = sharding.state_sharding(mesh, abstract_state)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  state, restored = checkpoint.restore_or_init(
      mngr, lambda: jax.jit(init_fn, out_shardings=state_sharding)(root_key),
      abstract_state, state_sharding)
  start_step = int(jax.device_get(state.step))
  if restored:
    logging.info('Resuming at step %d of %d.', start_step, config.train.num_steps)
    print(f'Resuming from checkpoint at step {start_step}.', flush=True)

  # ------------------------------------------------------------------ step
  repl = sharding.replicated(mesh)
  batch_sharding = sharding.data_sharding(mesh)
  train_step = jax.jit(functools.partial(family.train_step, config),
                       in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(family.eval_step, config),
                    in_shardings=(state_sharding, batch_sharding), out_shardings=repl)
  grid_fn = jax.jit(functools.partial(family.grid_panels, config), out_shardings=repl)
  grid_key = np.asarray(jax.random.fold_in(root_key, _GRID_KEY))  # Host values, so
  grid_rows = input_pipeline.balanced_sample(data.test_labels, GRID_SIZE, config.seed)
  grid_images = input_pipeline.to_float(data.test_images[grid_rows])  # multi-host safe.
  grid_labels = np.asarray(data.test_labels[grid_rows], np.int32)
  gen_eval = generative.training_evaluator(config, family, data.test_images, mesh,
                                           test_labels=data.test_labels)
  best_metric, best_mode = generative.best_metric(config, family, gen_eval)  # Or a fallback.
  best_mngr = (checkpoint.best_manager(workdir, best_metric, best_mode)
               if best_metric else None)

  # ------------------------------------------------------------------ loop
  log = MetricsLog(workdir)
  tc = config.train
  num_steps = tc.num_steps
  # On CPU with several (emulated) devices, many in-flight collectives can
  # deadlock XLA's rendezvous; bound the queue there only.
  max_in_flight = 2 if jax.default_backend() == 'cpu' and jax.device_count() > 1 else None
  pending = []          # Metrics of steps not yet logged (device arrays).
  in_flight = collections.deque()
  it = data.train_iterator(batch_sharding, start_step)
  t_last, steps_last = time.time(), start_step
  t_start = time.time()
  step = start_step
  try:
    with _sigterm_as_interrupt():
      while step < num_steps:
        batch = next(it)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append(metrics)
        if max_in_flight:
          in_flight.append(metrics)
          if len(in_flight) > max_in_flight:
            jax.block_until_ready(in_flight.popleft())

        is_last = step == num_steps
        if step % tc.log_every_steps == 0 or is_last:
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

        if step % tc.sample_every_steps == 0 or is_last:
          write_grid(grid_fn, state, grid_key, grid_images,
                     os.path.join(workdir, 'samples', f'step_{step:07d}.png'), grid_labels,
                     family.GRID_TITLES, conditional.num_classes(config))

        if step % tc.eval_every_steps == 0 or is_last:
          scalars = evaluate(config, family, eval_fn, state, data, mesh, gen_eval)
          if best_mngr:
            checkpoint.save_if_best(best_mngr, step, state, {  # Numbers only, not the
                k: v for k, v in scalars.items() if not isinstance(v, str)},  # protocol.
                                    best_metric, best_mode)
          log.write(step, scalars)
          print(console.eval_block(step, scalars, family.EVAL_CONSOLE_METRICS), flush=True)

        periodic = (step % tc.sample_every_steps == 0 or step % tc.eval_every_steps == 0
                    or step % tc.checkpoint_every_steps == 0)
        if step % tc.checkpoint_every_steps == 0 or is_last:
          _check_finite(jax.device_get(pending), step)  # Never save a NaN state.
          checkpoint.save(mngr, step, state, force=True)
        if periodic:  # Keep grids, evals and saves out of the throughput numbers.
          jax.block_until_ready(state)
          t_last, steps_last = time.time(), step
          it.take_stats(None)  # Waits before the pause belong to no interval.
  except BaseException as e:
    interrupt_step = None
    if isinstance(e, KeyboardInterrupt):
      interrupt_step = _save_on_interrupt(mngr, state, pending)
    # Stop the workers and finish (or clean up) the saves in flight without
    # hiding `e`; a failed save is reported by the manager's error instead.
    managers = [m for m in (mngr, best_mngr) if m]
    for close in [it.close] + [functools.partial(checkpoint.finish, m) for m in managers]:
      try:
        close()
      except checkpoint.CheckpointWriteError as write_error:
        if not isinstance(e, checkpoint.CheckpointWriteError):
          e = write_error
      except Exception:  # pylint: disable=broad-except
        logging.exception('Error while shutting down after %r.', e)
    if isinstance(e, KeyboardInterrupt):
      last = checkpoint.last_good_step(workdir)
      saved = 'saved it; ' if interrupt_step is not None and interrupt_step == last else ''
      kept = (f'{saved}the last good checkpoint is step {last} in '
              f'{checkpoint.checkpoint_dir(workdir)}; rerun the same command to resume from it'
              if last is not None else 'no checkpoint was written yet')
      at = step if interrupt_step is None else interrupt_step
      if isinstance(e, SigTerm):
        raise Terminated(f'Terminated (SIGTERM) at step {at}; {kept}.') from None
      raise Interrupted(f'Interrupted (Ctrl-C) at step {at}; {kept}.') from None
    raise e
  it.close()
  checkpoint.finish(mngr)
  if best_mngr:
    checkpoint.finish(best_mngr)
  if step == start_step:
    print(f'Nothing to do: the checkpoint is at step {step} and '
          f'config.train.num_steps={num_steps}.', flush=True)
  else:
    print(f'Done: {step - start_step} steps in {_format_duration(time.time() - t_start)}; '
          f'workdir {workdir}', flush=True)
  return state
