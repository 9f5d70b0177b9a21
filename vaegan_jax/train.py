"""The one training loop, shared by every model family, by one run and by
S seeds trained as one vmapped step (in one process or several).

    Runs: mesh -> data -> family -> state (init or restore) -> jitted step
    train_runs: the loop (log, sample grids, evaluate, checkpoint, stop on
    NaN, save the step reached on Ctrl-C / SIGTERM)

`train_and_evaluate(config, workdir)` trains one run with today's jitted
step and data iterator; `train_seeds(configs, workdirs)` trains seeds whose
state has a leading seed axis (vaegan_jax/vmap_seeds.py) and writes into
each seed's workdir what its single run would.
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
from vaegan_jax import vmap_seeds
from vaegan_jax.families import conditional
from vaegan_jax.metrics import generative
from vaegan_jax.models import layers
from vaegan_jax.errors import ForcedStop
from vaegan_jax.errors import SigTerm
from vaegan_jax.errors import UserError
from vaegan_jax.errors import WorkerError

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
  flags (`sharding.max_over_processes`, one int per process), so a
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
      self.agreed = sharding.max_over_processes(self.local)
    return self.agreed != _NONE

  def requested_here(self) -> bool:
    """Whether this process got a stop request (Ctrl-C or SIGTERM) that it
    can act on alone (a single process); if so, acts on it as `requested`
    does (the request becomes the agreed one)."""
    if self.multi or self.local == _NONE:
      return False
    self.agreed = self.local
    return True

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
  host = sharding.to_host(jax.tree.leaves(state))
  return all(np.all(np.isfinite(x)) for x in host
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def check_finite(pending: list, last_step: int, seeds=None):
  """Raises NonFiniteError naming the first step and metric that is NaN/Inf
  (and the seed, for vmapped seeds).

  Args:
    pending: host metrics dicts of consecutive steps ending at `last_step`.
    seeds: the seeds of vmapped runs (each metric has shape (S,)), or None
      for one run.
  """
  first_step = last_step - len(pending) + 1
  for i, metrics in enumerate(pending):
    for name, value in metrics.items():
      if np.all(np.isfinite(value)):
        continue
      if seeds is None:
        raise NonFiniteError(
            f'Non-finite {name}={float(np.ravel(value)[0])} at step {first_step + i}; '
            f'training stopped. The checkpoints before it are intact; lower the '
            f'learning rate or check the data.', step=first_step + i)
      bad = int(np.flatnonzero(~np.isfinite(np.asarray(value)))[0])
      raise NonFiniteError(
          f'Non-finite {name}={float(np.ravel(value)[bad])} for seed {seeds[bad]} at step '
          f'{first_step + i}; training stopped. The checkpoints before it are intact; '
          f'lower the learning rate or check the data.', step=first_step + i, seed=seeds[bad])


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
  panels = sharding.to_host(grid_fn(state, key, test_images, test_labels))
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
    for k, v in sharding.to_host(eval_fn(state, batch)).items():
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
  owed = sharding.from_process_0(np.asarray([grid, evals], np.int32))
  return bool(owed[0]), bool(owed[1])


def _grid_path(workdir, step):
  return os.path.join(workdir, 'samples', f'step_{step:07d}.png')


def _print(line: str):
  print(line, flush=True)


class Runs:
  """What the one training loop trains: one run, or S seeds of one config.

  One run (`vmapped` False): the state of `config.seed`, the jitted
  `family.train_step` and `data.train_iterator`. S seeds (configs equal but
  for `seed`, S > 1): every leaf of the state has a leading seed axis, one
  jitted `jax.vmap` of the step advances all of them
  (`vmap_seeds.make_train_step`), and each batch stacks the batches that S
  single runs would read (`vmap_seeds.SeedIterator`). Everything else is per
  run r: `workdirs[r]` (with what a single run writes there), `logs[r]`,
  `mngrs[r]`, `best_mngrs[r]`, the grid's key and test rows, the evaluator;
  `split(state)` is every run's own state (one run: the state itself).

  Building it does the setup of `train_and_evaluate`: checks the config and
  the workdirs (free space included), writes config.json, opens the data,
  restores the latest checkpoint (vmapped: the latest step every seed has) or
  initialises, and compiles nothing yet.
  """

  def __init__(self, configs, workdirs, echo=_print):
    configs, workdirs = list(configs), [str(w) for w in workdirs]
    if not configs or len(configs) != len(workdirs):
      raise UserError(f'One workdir per config: {len(configs)} configs, '
                      f'{len(workdirs)} workdirs.')
    for c in configs:
      validation.validate(c)  # Every key, range and cross-field rule, first.
      input_pipeline.resolve_image_size(c)  # folder:PATH at 0 -> the size chosen, saved.
    self.vmapped = len(configs) > 1
    if self.vmapped:
      vmap_seeds.check_same_config(configs)
    self.configs, self.workdirs, self.echo = configs, workdirs, echo
    self.config = config = configs[0]
    self.seeds = [int(c.seed) for c in configs]
    self.family = family = families.get(config.model.family)
    # The convolutions: 'auto' becomes what runs on this machine, stored so
    # that the run's config says which (layers.auto_impl).
    impl, why = layers.resolve_for_run(config.model.conv_impl)
    before = {run_config.stored_value(w, 'model.conv_impl') for w in workdirs} - {None, impl}
    for c, w in zip(configs, workdirs):
      c.model.conv_impl = impl
      run_config.check_workdir(w)
      run_config.check_and_save(c, w)
    what = (f'the {config.model.family} model on {config.data.name} for '
            f'{config.train.num_steps} steps of {config.train.batch_size} images')
    if self.vmapped:
      echo(f'Training {what}, seeds {self.seeds} as one vmapped step; workdirs '
           f'{", ".join(workdirs)}')
    else:
      echo(f'Training {what}; workdir {workdirs[0]}')
    echo(f'Convolutions: conv_impl={impl!r} ({why}).')
    if before:
      echo(f'note: the steps so far ran with conv_impl={sorted(before)[0]!r}: the same '
           'model, its sums in another order, so the rest of the run is not '
           'bit-identical to a run that never moved.')
    self.mesh = mesh = sharding.make_mesh()
    self.data = data = input_pipeline.Data(config)

    # --------------------------------------------------------------- state
    init_fn = functools.partial(family.init_state, config)
    abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))
    for w in workdirs:  # Room for the periodic checkpoint and, where kept, the best one.
      checkpoint.check_free_space(w, abstract, copies=2 if keeps_best(config) else 1)
    self.state_sharding = state_sharding = sharding.state_sharding(mesh, abstract)
    # Vmapped: the seeds' managers save the same step at once (barriers apart).
    self.barriers = [f'_seed{s}' if self.vmapped else '' for s in self.seeds]
    self.mngrs = [checkpoint.manager(w, keep=config.train.keep_checkpoints,
                                     barrier_prefix=b or None)
                  for w, b in zip(workdirs, self.barriers)]
    if self.vmapped:
      self.state, self.restored, self.start_step = self._restore_or_init_seeds(
          abstract, state_sharding)
    else:
      root_key = jax.random.PRNGKey(config.seed)
      self.state, self.restored = checkpoint.restore_or_init(
          self.mngrs[0], lambda: jax.jit(init_fn, out_shardings=state_sharding)(root_key),
          abstract, state_sharding)
      self.start_step = int(sharding.to_host(self.state.step))
    self.logs = [MetricsLog(w) for w in workdirs]
    if self.restored:
      logging.info('Resuming at step %d of %d.', self.start_step, config.train.num_steps)
      echo(f'Resuming {"every seed " if self.vmapped else ""}from checkpoint at step '
           f'{self.start_step}.')
    for log in self.logs:
      log.drop_after(self.start_step)  # Rows of steps never saved are logged again.

    # ---------------------------------------------------------------- step
    repl = sharding.replicated(mesh)
    self.batch_sharding = sharding.data_sharding(mesh)
    if self.vmapped:
      self.train_step = vmap_seeds.make_train_step(config, family, mesh)
    else:
      self.train_step = jax.jit(functools.partial(family.train_step, config),
                                in_shardings=(state_sharding, self.batch_sharding),
                                out_shardings=(state_sharding, repl), donate_argnums=0)
    self.eval_fn = jax.jit(functools.partial(family.eval_step, config),
                           in_shardings=(state_sharding, self.batch_sharding),
                           out_shardings=repl)
    self.grid_fn = jax.jit(functools.partial(family.grid_panels, config), out_shardings=repl)
    # Host values, so multi-host safe; each run's as its single run picks them.
    self.grid_keys = [np.asarray(jax.random.fold_in(jax.random.PRNGKey(s), GRID_KEY))
                      for s in self.seeds]
    rows = [input_pipeline.balanced_sample(data.test_labels, GRID_SIZE, s) for s in self.seeds]
    self.grid_images = [input_pipeline.to_float(data.test_images[r]) for r in rows]
    self.grid_labels = [np.asarray(data.test_labels[r], np.int32) for r in rows]
    self.gen_evals = [generative.training_evaluator(c, family, data.test_images, mesh,
                                                    test_labels=data.test_labels)
                      for c in configs]
    self.best_metric, self.best_mode = generative.best_metric(  # Or a fallback.
        config, family, self.gen_evals[0])
    self.best_mngrs = [checkpoint.best_manager(w, self.best_metric, self.best_mode,
                                               barrier_prefix=b)
                       if self.best_metric else None
                       for w, b in zip(workdirs, self.barriers)]

  def _restore_or_init_seeds(self, abstract, state_sharding):
    """(stacked state, restored, step): every seed at the latest good step
    that all of them have, or their initial states."""
    good = [set(checkpoint.finalized_steps(checkpoint.checkpoint_dir(w)))
            for w in self.workdirs]
    common = set.intersection(*good)
    if not common:
      return vmap_seeds.init_states(self.config, self.seeds, self.family, self.mesh), False, 0
    step = max(common)
    states = [checkpoint.restore(m, step, abstract, state_sharding) for m in self.mngrs]
    return vmap_seeds.stack(states, self.mesh), True, step

  def __len__(self):
    return len(self.workdirs)

  def split(self, state) -> list:
    """Every run's own state (one run: [state])."""
    if not self.vmapped:
      return [state]
    return [vmap_seeds.unstack(state, r, self.mesh) for r in range(len(self))]

  def metric_of(self, value, r: int):
    """Run r's value of one step metric (vmapped: an (S,) array)."""
    return value[r] if self.vmapped else value

  def prefix(self, r: int) -> str:
    """What starts run r's console lines ('' for one run)."""
    return f'seed {self.seeds[r]}: ' if self.vmapped else ''

  def iterator(self, start_step: int):
    """The training batches from `start_step` on."""
    if not self.vmapped:
      return self.data.train_iterator(self.batch_sharding, start_step)
    return vmap_seeds.SeedIterator(
        [self.data.train_iterator(self.batch_sharding, start_step, s) for s in self.seeds],
        self.mesh)

  def load_pending(self, step: int) -> list:
    """The step metrics an interrupt kept beside `step` (`save_pending`)."""
    kept = [load_pending(w, step) for w in self.workdirs]
    if not self.vmapped:
      return kept[0]
    if any(len(k) != len(kept[0]) for k in kept):
      return []
    return [{name: np.stack([k[i][name] for k in kept]) for name in kept[0][i]}
            for i in range(len(kept[0]))]

  def kept(self, saved: int | None = None) -> str:
    """Which checkpoint a rerun resumes from (see `_kept`)."""
    if not self.vmapped:
      return _kept(self.workdirs[0], saved)
    lasts = [max((s for s in (checkpoint.last_good_step(w), saved) if s is not None),
                 default=None) for w in self.workdirs]
    dirs = ', '.join(checkpoint.checkpoint_dir(w) for w in self.workdirs)
    if all(last is None for last in lasts):
      return 'no checkpoint was written yet'
    if len(set(lasts)) == 1:
      return (f'the last good checkpoint of every seed is step {lasts[0]} in {dirs}; '
              'rerun the same command to resume from it')
    return (f'the last good checkpoints are steps {lasts} in {dirs}; rerun the same '
            'command to resume from them')


def train_and_evaluate(config, workdir: str):
  """Trains `config.model.family` on `config.data.name`, writing into `workdir`.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is one
  (and first does what that step still owes: an evaluation or a sample grid
  an interrupt cut short). Ctrl-C or SIGTERM saves the step reached, waits
  for the saves and raises `Interrupted` / `Terminated` (see `StopRequest`).

  Returns:
    The final TrainState.
  """
  state, _ = train_runs(Runs([config], [workdir]))
  return state


def train_seeds(configs, workdirs, echo=_print):
  """Trains the runs `configs` (equal but for `seed`) as one vmapped step,
  in the loop of `train_and_evaluate` (vaegan_jax/vmap_seeds.py).

  Writes into `workdirs[s]` what `train_and_evaluate(configs[s], workdirs[s])`
  would: config.json, checkpoints/<step>, the best checkpoint, metrics.jsonl
  (that seed's step metrics; `images_per_s` counts that seed's images), the
  sample grids and the eval rows; and does what it does in one process or
  several: resume (from the latest step every seed has), what a restored
  step owes, the interrupt save of every seed's step (`StopRequest`), the
  checks. A NonFiniteError names the seed. One config trains as a single run.

  Returns:
    (state, info): the final state (stacked, leaves (S, ...)) and
    {'train_seconds': time in the loop, 'steps': steps done now, 'start_step'}.
  """
  runs = Runs(configs, workdirs, echo)
  state, info = train_runs(runs)
  return (state if runs.vmapped else vmap_seeds.stack([state], runs.mesh)), info


def train_runs(runs: Runs):
  """The training loop of `runs` (one run or vmapped seeds): steps, logs,
  sample grids, evaluations, checkpoints, stop on NaN, interrupt save.

  Returns:
    (state, {'train_seconds', 'steps', 'start_step'}).
  """
  config, family, mesh, data = runs.config, runs.family, runs.mesh, runs.data
  state, restored, start_step = runs.state, runs.restored, runs.start_step
  runs.state = None  # The loop owns (and donates) it from here.
  workdirs, logs, mngrs, best_mngrs = runs.workdirs, runs.logs, runs.mngrs, runs.best_mngrs
  seeds = runs.seeds if runs.vmapped else None
  echo = runs.echo
  tc = config.train
  num_steps = tc.num_steps
  due = lambda every, s: s % every == 0 or s == num_steps
  stop = StopRequest()

  def write_grid_at(r, own_state, s):
    write_grid(runs.grid_fn, own_state, runs.grid_keys[r], runs.grid_images[r],
               _grid_path(workdirs[r], s), runs.grid_labels[r], family.GRID_TITLES,
               conditional.num_classes(runs.configs[r]))

  def evaluate_at(r, own_state, s) -> bool:
    """Evaluates run r (and keeps its best checkpoint); False if abandoned."""
    scalars = evaluate(runs.configs[r], family, runs.eval_fn, own_state, data, mesh,
                       runs.gen_evals[r], should_stop=stop.requested)
    if scalars is None:
      return False
    if best_mngrs[r]:
      checkpoint.save_if_best(best_mngrs[r], s, own_state, numbers_only(scalars),
                              runs.best_metric, runs.best_mode)
    logs[r].write(s, scalars)
    echo(runs.prefix(r) + console.eval_block(s, scalars, family.EVAL_CONSOLE_METRICS))
    return True

  # On CPU with several (emulated) devices, many in-flight collectives can
  # deadlock XLA's rendezvous; bound the queue there only.
  max_in_flight = 2 if jax.default_backend() == 'cpu' and jax.device_count() > 1 else None
  pending = runs.load_pending(start_step) if restored else []  # Not yet logged.
  in_flight = collections.deque()
  it = None
  t_last, steps_last = time.time(), start_step
  t_start = time.time()
  step = start_step
  owed = ()
  stopped = False      # A stop request was acted on (Ctrl-C, SIGTERM).
  saving = saved = None  # The step whose save it started / that was saved.
  managers = [m for m in mngrs + best_mngrs if m]
  with stop.handlers():
    try:
      it = runs.iterator(start_step)
      if restored:  # What the restored step still owes (an interrupted evaluation).
        owe_any = set()
        for r, own_state in enumerate(runs.split(state)):
          owe_grid, owe_eval = _owed(workdirs[r], logs[r], step,
                                     due(tc.sample_every_steps, step),
                                     due(tc.eval_every_steps, step))
          owe_any |= {'sample grid'} if owe_grid else set()
          owe_any |= {'evaluation'} if owe_eval else set()
          if owe_grid:
            write_grid_at(r, own_state, step)
          if owe_eval and not evaluate_at(r, own_state, step):
            stopped = True
            break
        owed = tuple(w for w in ('sample grid', 'evaluation') if w in owe_any)
      while step < num_steps and not stopped:
        try:
          batch = next(it)
        except WorkerError:
          if not stop.requested_here():
            raise
          # The Ctrl-C that asked for the stop reached the input workers too,
          # one of them before it could ignore it (while it was starting).
          stopped = True
          break
        if stop.requested(step):
          stopped = True
          break
        state, metrics = runs.train_step(state, batch)
        step += 1
        pending.append(metrics)
        if max_in_flight:
          in_flight.append(metrics)
          if len(in_flight) > max_in_flight:
            jax.block_until_ready(in_flight.popleft())

        if due(tc.log_every_steps, step):
          host = sharding.to_host(pending)
          check_finite(host, step, seeds)
          pending = []
          now = time.time()
          steps_per_s = (step - steps_last) / max(now - t_last, 1e-9)
          t_last_log, t_last, steps_last = t_last, now, step
          stats = it.take_stats(now - t_last_log)  # data_wait_fraction, decode_images_per_s.
          eta = (num_steps - step) / max(steps_per_s, 1e-9)
          for r in range(len(runs)):
            scalars = {k: float(np.mean([runs.metric_of(m[k], r) for m in host]))
                       for k in host[0]}
            scalars['steps_per_s'] = steps_per_s
            scalars['images_per_s'] = steps_per_s * tc.batch_size
            scalars.update(stats)
            logs[r].write(step, scalars)
            echo(runs.prefix(r) + _step_line(step, num_steps, steps_per_s, eta, scalars,
                                             family.CONSOLE_METRICS))

        grid_now = due(tc.sample_every_steps, step)
        eval_now = due(tc.eval_every_steps, step)
        save_now = due(tc.checkpoint_every_steps, step)
        own_states = runs.split(state) if grid_now or eval_now or save_now else []
        if grid_now:
          for r, own_state in enumerate(own_states):
            write_grid_at(r, own_state, step)

        if eval_now and not all(evaluate_at(r, own_state, step)
                                for r, own_state in enumerate(own_states)):
          stopped = True  # Abandoned for Ctrl-C / SIGTERM: a rerun does it.
          break

        periodic = (step % tc.sample_every_steps == 0 or step % tc.eval_every_steps == 0
                    or step % tc.checkpoint_every_steps == 0)
        if save_now:
          check_finite(sharding.to_host(pending), step, seeds)  # Never save a NaN state.
          for r, own_state in enumerate(own_states):
            # Vmapped: a seed may have this step already (restored at an
            # earlier step that every seed has).
            if not (runs.vmapped and step in mngrs[r].all_steps()):
              checkpoint.save(mngrs[r], step, own_state, force=True)
        del own_states
        if periodic:  # Keep grids, evals and saves out of the throughput numbers.
          jax.block_until_ready(state)
          t_last, steps_last = time.time(), step
          it.take_stats(None)  # Waits before the pause belong to no interval.
      if stopped:
        saving = step
        saved = _save_stopped(runs, state, step, pending)
      _close_quietly(it, managers)  # Waits for every save; a failed one raises.
    except BaseException as e:  # pylint: disable=broad-except
      if isinstance(e, ForcedStop):  # A second Ctrl-C: no waiting for anything.
        _close_quietly(it, [], e)
        skipped = (f'leaving the save of step {saving} unfinished' if saving is not None
                   else f'without saving step {step}')
        raise Interrupted(f'Interrupted (Ctrl-C twice) at step {step}: stopped at once, '
                          f'{skipped}; {runs.kept()}.') from None
      if isinstance(e, KeyboardInterrupt) and not stopped and not donated(state):
        # Raised by other code than the handler (a library, a test): as Ctrl-C.
        stop.note_interrupt(e)
        stopped, saving = True, step
        saved = _save_stopped(runs, state, step, pending)
        _close_quietly(it, managers)
      else:
        e = _close_quietly(it, managers, e)
        if not isinstance(e, KeyboardInterrupt):
          raise e
        stop.note_interrupt(e)
        raise stop.error(f'{step}; its state was in a step that did not finish, so it was '
                         f'not saved; {runs.kept()}.') from None
  if stopped:  # Every save has finished (on every process: the wait is collective).
    done = ('' if saved is None else
            'saved it for every seed; ' if runs.vmapped else 'saved it; ')
    error = stop.error(f'{step}; {done}{runs.kept(saved)}.')
    if jax.process_count() > 1:
      # The entry point exits at once: leave the distributed runtime together
      # first, so that no process loses the coordinator inside Orbax's last
      # barrier.
      jax.distributed.shutdown()
    raise error
  where = (f'workdirs {", ".join(workdirs)}' if runs.vmapped else f'workdir {workdirs[0]}')
  if step == start_step and owed:
    echo(f'Done: step {step} had its {" and ".join(owed)} still to do; {where}')
  elif step == start_step:
    echo(f'Nothing to do: the checkpoint is at step {step} and '
         f'config.train.num_steps={num_steps}.')
  else:
    echo(f'Done: {step - start_step} steps in {_format_duration(time.time() - t_start)}; '
         f'{where}')
  return state, {'train_seconds': time.time() - t_start, 'steps': step - start_step,
                 'start_step': start_step}


def _step_line(step, num_steps, steps_per_s, eta, scalars, names) -> str:
  """The console line of a logged step."""
  main = ' '.join(f'{k} {scalars[k]:.4g}' for k in names if k in scalars)
  data_line = (f' | data wait {scalars["data_wait_fraction"]:.0%} read '
               f'{scalars.get("decode_images_per_s", 0):.0f} img/s'
               if 'data_wait_fraction' in scalars else '')
  return (f'step {step}/{num_steps} | {steps_per_s:.2f} steps/s '
          f'{scalars["images_per_s"]:.0f} img/s{data_line} | ETA '
          f'{_format_duration(eta)} | {main}')


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


def _save_stopped(runs, state, step, pending) -> int | None:
  """On a stop request: starts the save of every run's state at `step`
  (unless saved already or not finite) and keeps the unlogged step metrics
  beside it.

  Returns:
    The step, where the save of every run that lacked it was started; else None.
  """
  try:
    host = sharding.to_host(pending)
    check_finite(host, step, runs.seeds if runs.vmapped else None)
    started = []
    for r, own_state in enumerate(runs.split(state)):
      if step in runs.mngrs[r].all_steps() or not finite_state(own_state):
        continue
      save_pending(runs.workdirs[r], step, [{k: runs.metric_of(v, r) for k, v in m.items()}
                                            for m in host])
      started.append(checkpoint.save(runs.mngrs[r], step, own_state, force=True))
    return step if started and all(started) else None
  except NonFiniteError:
    return None  # Never save a NaN state: the message names the last good one.
