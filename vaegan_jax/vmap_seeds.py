"""Seeds as a batch dimension: S runs of one config advanced by one jitted step.

Run s is the run `train.train_and_evaluate` would do with `config.seed =
seeds[s]`: root key `PRNGKey(seeds[s])` (its own init, z draws, dropout) and
data order `input_pipeline.global_batch_indices(..., seeds[s], step)`. The S
train states are stacked leaf by leaf (every leaf gains a leading seed axis)
and `jax.vmap(partial(family.train_step, config))` advances all of them at
once. Nothing in a step mixes seeds: BatchNorm statistics are means over each
seed's own batch (the seed axis is a vmap axis, not part of the reduction),
and each step key folds the seed's own key and step. So, to float tolerance,
the params equal those of S separate runs (tests/test_compare.py).

    states = stack([family.init_state(config, PRNGKey(s)) for s in seeds])
    step_fn = make_train_step(config, family)
    states, metrics = step_fn(states, seed_batches(images, labels, B, seeds, step))
    # metrics: name -> (S,)

`train_and_evaluate` is the per-seed counterpart of `train.train_and_evaluate`:
one workdir per seed with the same contents (config.json, checkpoints,
metrics.jsonl, sample grids), so sampling, evaluation and resuming treat a
vmapped run like any other. Single process only (one or more local devices).

Speed: on XLA:CPU a convolution whose kernel has a seed axis runs as a grouped
convolution, which can be slower than S ungrouped ones; `speed` measures both
ways on the same batches (experiments/compare.py reports it).
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vaegan_jax import checkpoint
from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import run_config
from vaegan_jax import sharding
from vaegan_jax import validation
from vaegan_jax import train
from vaegan_jax.errors import ForcedStop
from vaegan_jax.errors import UserError
from vaegan_jax.families import conditional
from vaegan_jax.metrics import generative


@jax.jit
def _stack(states):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


@jax.jit
def _take(stacked, i):
  return jax.tree.map(lambda x: x[i], stacked)


def stack(states):
  """S pytrees of equal structure -> one pytree whose leaves are (S, ...).

  One jitted call for the whole tree (not one small compile per leaf shape)."""
  return _stack(list(states))


def unstack(stacked, i: int):
  """Seed `i` of a stacked pytree (one jitted call for the whole tree)."""
  return _take(stacked, jnp.asarray(i, jnp.int32))


def init_states(config, seeds, family=None):
  """The stacked initial states of `seeds`, each `family.init_state(config,
  PRNGKey(seed))` as in a single run."""
  family = family or families.get(config.model.family)
  init = jax.jit(functools.partial(family.init_state, config))
  return stack([init(jax.random.PRNGKey(int(s))) for s in seeds])


def seed_batches(images, labels, batch_size: int, seeds, step: int) -> dict:
  """The batch of `step` of every seed, host arrays with a leading seed axis.

  Returns:
    {'image': float32 (S, B, H, W, C) in [0, 1], 'label': int32 (S, B)}.
  """
  idx = np.stack([input_pipeline.global_batch_indices(len(images), batch_size, int(s), step)
                  for s in seeds])
  return {'image': input_pipeline.to_float(images[idx]), 'label': labels[idx]}


def batch_sharding(mesh):
  """(S, B, ...) batches: every seed's batch split over 'data'."""
  return NamedSharding(mesh, P(None, sharding.DATA_AXIS))


def make_train_step(config, family=None, mesh=None):
  """jit(vmap(train_step)): (stacked state, seed batches) -> (state, metrics (S,))."""
  family = family or families.get(config.model.family)
  mesh = mesh or sharding.make_mesh()
  repl = sharding.replicated(mesh)
  return jax.jit(jax.vmap(functools.partial(family.train_step, config)),
                 in_shardings=(repl, batch_sharding(mesh)), out_shardings=(repl, repl),
                 donate_argnums=0)


def _check_single_process():
  if jax.process_count() > 1:
    raise UserError('Seeds as a batch dimension runs in one process only; train the '
                    'seeds one by one (vmap_seeds=False) on a multi-host job.')


def _check_same_config(configs):
  """The runs may differ in `seed` only."""
  ref = run_config.to_dict(configs[0])
  ref.pop('seed')
  for c in configs[1:]:
    d = run_config.to_dict(c)
    d.pop('seed')
    if d != ref:
      raise UserError('Vmapped seeds must share one config except `seed`.')


# ---------------------------------------------------------------------------
# Training S seeds with workdirs, like train.train_and_evaluate.
# ---------------------------------------------------------------------------


def _restore_common(mngrs, abstract, state_sharding):
  """(states, step): every seed restored at the latest step all of them
  have, or (None, 0) when there is none."""
  common = set.intersection(*[set(m.all_steps()) for m in mngrs])
  if not common:
    return None, 0
  step = max(common)
  return [checkpoint.restore(m, step, abstract, state_sharding) for m in mngrs], step


def _check_finite(metrics_host, step, seeds):
  for name, values in metrics_host.items():
    bad = ~np.isfinite(np.asarray(values))
    if bad.any():
      s = int(np.flatnonzero(bad.reshape(len(seeds), -1).any(axis=1))[0])
      raise train.NonFiniteError(
          f'Non-finite {name} for seed {seeds[s]} by step {step}; training stopped. '
          f'The checkpoints before it are intact; lower the learning rate or check the data.',
          step=step, seed=seeds[s])


def _save_stopped(workdirs, mngrs, states, step, pending) -> bool:
  """On Ctrl-C or SIGTERM: each seed's state at `step`, saved as `train`
  saves a single run's (with its unlogged step metrics), unless a seed is not
  finite. Returns whether the saves were started."""
  host = jax.device_get(pending)
  try:
    if pending:
      _check_finite({k: np.stack([m[k] for m in host]) for k in host[0]}, step, [0] * len(mngrs))
  except train.NonFiniteError:
    return False
  started = False
  for s, (w, mngr) in enumerate(zip(workdirs, mngrs)):
    state_s = unstack(states, s)
    if step in mngr.all_steps() or not train.finite_state(state_s):
      continue
    train.save_pending(w, step, [{k: v[s] for k, v in m.items()} for m in host])
    started |= bool(checkpoint.save(mngr, step, state_s, force=True))
  return started


def train_and_evaluate(configs, workdirs, echo=print):
  """Trains the runs `configs` (equal but for `seed`) in one vmapped loop.

  Writes into `workdirs[s]` what `train.train_and_evaluate(configs[s],
  workdirs[s])` would: config.json, checkpoints/<step>, metrics.jsonl (the
  step metrics of that seed; `images_per_s` counts that seed's images),
  samples/step_N.png and the eval rows. Resumes from the latest step that
  every seed has checkpointed; Ctrl-C or SIGTERM saves every seed's state at
  the step reached first (as `train` does for one run).

  Returns:
    (states, info): the final stacked state and {'train_seconds': time in the
    training loop, 'steps': steps done now, 'start_step'}.
  """
  _check_single_process()
  _check_same_config(configs)
  config = configs[0]
  seeds = [int(c.seed) for c in configs]
  validation.validate(config)  # Dataset name, batch over devices, every key.
  family = families.get(config.model.family)
  for c, w in zip(configs, workdirs):
    run_config.check_workdir(w)
    run_config.check_and_save(c, w)
  mesh = sharding.make_mesh()
  data = input_pipeline.Data(config)
  tc = config.train

  abstract = jax.eval_shape(functools.partial(family.init_state, config),
                            jax.random.PRNGKey(0))
  for w in workdirs:  # As train does for one run.
    checkpoint.check_free_space(w, abstract, copies=2 if train.keeps_best(config) else 1)
  state_sharding = sharding.state_sharding(mesh, abstract)
  mngrs = [checkpoint.manager(w, keep=tc.keep_checkpoints) for w in workdirs]
  restored, start_step = _restore_common(mngrs, abstract, state_sharding)
  states = stack(restored) if restored else init_states(config, seeds, family)
  if restored:
    echo(f'Resuming {len(seeds)} vmapped seeds at step {start_step}.')

  step_fn = make_train_step(config, family, mesh)
  repl = sharding.replicated(mesh)
  eval_fn = jax.jit(functools.partial(family.eval_step, config),
                    in_shardings=(repl, sharding.data_sharding(mesh)), out_shardings=repl)
  grid_fn = jax.jit(functools.partial(family.grid_panels, config), out_shardings=repl)
  grid_rows = [input_pipeline.balanced_sample(data.test_labels, train.GRID_SIZE, s)
               for s in seeds]  # As train picks them for each seed's run.
  grid_keys = [np.asarray(jax.random.fold_in(jax.random.PRNGKey(s), train.GRID_KEY))
               for s in seeds]
  gen_evals = [generative.training_evaluator(c, family, data.test_images, mesh,
                                             test_labels=data.test_labels)
               for c in configs]
  best_metric, best_mode = generative.best_metric(config, family, gen_evals[0])
  best_mngrs = [checkpoint.best_manager(w, best_metric, best_mode)
                if best_metric else None for w in workdirs]
  logs = [train.MetricsLog(w) for w in workdirs]
  b_sharding = batch_sharding(mesh)

  def batch_of(step):
    host = seed_batches(data.train_images, data.train_labels, tc.batch_size, seeds, step)
    return jax.tree.map(lambda x: jax.device_put(x, b_sharding), host)

  for log in logs:
    log.drop_after(start_step)  # Rows of steps never saved are logged again.
  pending, step = [], start_step
  if restored:  # The step metrics an interrupt kept (see train.save_pending).
    kept = [train.load_pending(w, start_step) for w in workdirs]
    if all(len(k) == len(kept[0]) for k in kept):
      pending = [{name: np.stack([k[i][name] for k in kept]) for name in kept[0][i]}
                 for i in range(len(kept[0]))]
  t_last, steps_last, loop_seconds = time.time(), start_step, 0.0
  stop = train.StopRequest()
  stopped = False
  try:
    with stop.handlers():
      while step < tc.num_steps:
        batch = batch_of(step)
        if stop.requested(step):
          stopped = True
          break
        states, metrics = step_fn(states, batch)
        step += 1
        pending.append(metrics)
        is_last = step == tc.num_steps
        if step % tc.log_every_steps == 0 or is_last:
          host = jax.device_get(pending)
          pending = []
          stacked = {k: np.stack([m[k] for m in host]) for k in host[0]}  # (T, S)
          _check_finite(stacked, step, seeds)
          now = time.time()
          steps_per_s = (step - steps_last) / max(now - t_last, 1e-9)
          loop_seconds += now - t_last
          t_last, steps_last = now, step
          for s, log in enumerate(logs):
            scalars = {k: float(np.mean(v[:, s])) for k, v in stacked.items()}
            scalars.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * tc.batch_size)
            log.write(step, scalars)
          echo(f'step {step}/{tc.num_steps} | {len(seeds)} seeds vmapped | '
               f'{steps_per_s:.2f} steps/s {steps_per_s * tc.batch_size * len(seeds):.0f} img/s')

        sample_now = step % tc.sample_every_steps == 0 or is_last
        eval_now = step % tc.eval_every_steps == 0 or is_last
        save_now = step % tc.checkpoint_every_steps == 0 or is_last
        if sample_now or eval_now or save_now:
          jax.block_until_ready(states)
          loop_seconds += time.time() - t_last
          if pending:
            _check_finite({k: np.stack([m[k] for m in jax.device_get(pending)])
                           for k in pending[0]}, step, seeds)
          for s, w in enumerate(workdirs):
            state_s = unstack(states, s)
            if sample_now:
              train.write_grid(grid_fn, state_s, grid_keys[s],
                               input_pipeline.to_float(data.test_images[grid_rows[s]]),
                               os.path.join(w, 'samples', f'step_{step:07d}.png'),
                               np.asarray(data.test_labels[grid_rows[s]], np.int32),
                               family.GRID_TITLES, conditional.num_classes(configs[s]))
            if eval_now:
              scalars = train.evaluate(configs[s], family, eval_fn, state_s, data, mesh,
                                       gen_evals[s], should_stop=stop.requested)
              if scalars is None:  # Abandoned for Ctrl-C / SIGTERM.
                stopped = True
                break
              if best_mngrs[s]:
                checkpoint.save_if_best(best_mngrs[s], step, state_s, train.numbers_only(scalars),
                                        best_metric,
                                        best_mode)
              logs[s].write(step, scalars)
            if save_now and step not in mngrs[s].all_steps():
              checkpoint.save(mngrs[s], step, state_s, force=True)
          if stopped:
            break
          t_last = time.time()  # Keep grids, evals and saves out of the throughput.
      if stopped:
        _save_stopped(workdirs, mngrs, states, step, pending)
  except KeyboardInterrupt as e:  # Raised by other code than the handler.
    if isinstance(e, ForcedStop) or train.donated(states):
      raise
    stop.note_interrupt(e)
    stopped = True
    _save_stopped(workdirs, mngrs, states, step, pending)
  finally:
    for m in mngrs + [b for b in best_mngrs if b]:
      m.wait_until_finished()
      m.close()
  if stopped:
    saved = [checkpoint.last_good_step(w) for w in workdirs]
    kept = (f'saved it for every seed; rerun the same command to resume from it'
            if saved == [step] * len(workdirs) else
            f'the last good checkpoints are steps {saved} in {", ".join(workdirs)}; '
            'rerun the same command to resume from them')
    raise stop.error(f'{step}; {kept}.')
  return states, {'train_seconds': loop_seconds, 'steps': step - start_step,
                  'start_step': start_step}


# ---------------------------------------------------------------------------
# Speed: vmapped vs one seed after the other.
# ---------------------------------------------------------------------------


def speed(config, seeds, images, labels, num_steps: int, rounds: int = 2) -> dict:
  """Training images/s of the seeds vmapped and one by one, on the same batches.

  Both ways are compiled and warmed up first, then timed in alternating
  blocks of `num_steps` steps (`rounds` each), so that load from other
  processes hits both alike; each way's best block counts.

  Returns:
    {'vmap_images_per_s', 'sequential_images_per_s', 'ratio' (vmap / sequential),
     'num_seeds', 'batch_size', 'steps_timed'}.
  """
  _check_single_process()
  family = families.get(config.model.family)
  mesh = sharding.make_mesh()
  bs = config.train.batch_size
  seeds = [int(s) for s in seeds]
  vstep = make_train_step(config, family, mesh)
  repl, d_sharding = sharding.replicated(mesh), sharding.data_sharding(mesh)
  step = jax.jit(functools.partial(family.train_step, config),
                 in_shardings=(repl, d_sharding), out_shardings=(repl, repl),
                 donate_argnums=0)
  batches = [seed_batches(images, labels, bs, seeds, t) for t in range(num_steps + 1)]
  batches = [jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh)), b)
             for b in batches]
  singles = [[unstack(b, s) for s in range(len(seeds))] for b in batches]
  vstate = init_states(config, seeds, family)
  states = [unstack(vstate, s) for s in range(len(seeds))]
  vstate, _ = vstep(vstate, batches[0])  # Compile and warm up.
  states = [step(st, singles[0][s])[0] for s, st in enumerate(states)]
  jax.block_until_ready((vstate, states))
  best_v = best_s = float('inf')
  for _ in range(rounds):
    t = time.perf_counter()
    for b in batches[1:]:
      vstate, _ = vstep(vstate, b)
    jax.block_until_ready(vstate)
    best_v = min(best_v, time.perf_counter() - t)
    t = time.perf_counter()
    for sb in singles[1:]:
      states = [step(st, sb[s])[0] for s, st in enumerate(states)]
    jax.block_until_ready(states)
    best_s = min(best_s, time.perf_counter() - t)
  images = num_steps * bs * len(seeds)
  return {'vmap_images_per_s': images / best_v, 'sequential_images_per_s': images / best_s,
          'ratio': best_s / best_v, 'num_seeds': len(seeds), 'batch_size': bs,
          'steps_timed': num_steps}
