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

    states = init_states(config, seeds)
    step_fn = make_train_step(config, family)
    states, metrics = step_fn(states, seed_batches(images, labels, B, seeds, step))
    # metrics: name -> (S,)

This module holds the pieces; the loop that trains the seeds with workdirs
(one per seed, with what a single run writes there: config.json,
checkpoints, best checkpoint, metrics.jsonl, sample grids) is train.py's
one loop, `train.train_seeds(configs, workdirs)`, in one process or in
several (`jax.distributed`), with the same evaluation, interrupt save and
resume as a single run. Its batches are `SeedIterator`: one
`data.train_iterator` per seed, stacked into (S, B, ...).

Speed: on XLA:CPU a convolution whose kernel has a seed axis runs as a grouped
convolution, which can be slower than S ungrouped ones; `speed` measures both
ways on the same batches (experiments/compare.py reports it).
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import run_config
from vaegan_jax import sharding
from vaegan_jax.errors import UserError


def _stack_tree(states):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _take_tree(stacked, i):
  return jax.tree.map(lambda x: x[i], stacked)


@functools.lru_cache(maxsize=None)
def _jitted(fn, mesh):
  """`fn` jitted, with replicated outputs on `mesh` where one is given (so
  that the result is a global array in a multi-process run)."""
  if mesh is None:
    return jax.jit(fn)
  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def stack(states, mesh=None):
  """S pytrees of equal structure -> one pytree whose leaves are (S, ...).

  One jitted call for the whole tree (not one small compile per leaf shape);
  with `mesh`, the result is replicated over it (as train states are)."""
  return _jitted(_stack_tree, mesh)(list(states))


def unstack(stacked, i: int, mesh=None):
  """Seed `i` of a stacked pytree (one jitted call for the whole tree);
  with `mesh`, replicated over it."""
  return _jitted(_take_tree, mesh)(stacked, np.int32(i))


def init_states(config, seeds, family=None, mesh=None):
  """The stacked initial states of `seeds`, each `family.init_state(config,
  PRNGKey(seed))` as in a single run."""
  family = family or families.get(config.model.family)
  init = functools.partial(family.init_state, config)
  if mesh is not None:
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    init = jax.jit(init, out_shardings=sharding.state_sharding(mesh, abstract))
  else:
    init = jax.jit(init)
  return stack([init(jax.random.PRNGKey(int(s))) for s in seeds], mesh)


def seed_batches(images, labels, batch_size: int, seeds, step: int) -> dict:
  """The batch of `step` of every seed, host arrays with a leading seed axis
  (the rows `SeedIterator` reads; `speed` and the tests use it).

  Returns:
    {'image': float32 (S, B, H, W, C) in [0, 1], 'label': int32 (S, B)}.
  """
  idx = np.stack([input_pipeline.global_batch_indices(len(images), batch_size, int(s), step)
                  for s in seeds])
  return {'image': input_pipeline.to_float(images[idx]), 'label': labels[idx]}


def batch_sharding(mesh):
  """(S, B, ...) batches: every seed's batch split over 'data'."""
  return NamedSharding(mesh, P(None, sharding.DATA_AXIS))


class SeedIterator:
  """The training batches of S seeds: (S, B, ...) global arrays whose row s is
  the batch that a single run of seed s reads at that step (its own
  `TrainIterator`, resumable at any step), split over 'data' like a single
  run's batch.

  Args:
    iterators: one `input_pipeline.TrainIterator` per seed, each sharded by
      `sharding.data_sharding(mesh)`, all at the same step.
    mesh: the mesh of the batches.
  """

  def __init__(self, iterators, mesh):
    self.iterators = list(iterators)
    self._stack = jax.jit(_stack_tree, out_shardings=batch_sharding(mesh))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return self._stack([next(it) for it in self.iterators])

  def take_stats(self, elapsed_s: float | None) -> dict:
    """`TrainIterator.take_stats` over the seeds: the loop waited for each
    seed's batch in turn (the fractions add up); the read rate is the mean of
    the seeds' rates; `replaced_reads` counts the one shared source's."""
    stats = [it.take_stats(elapsed_s) for it in self.iterators]
    out = {}
    waits = [s['data_wait_fraction'] for s in stats if 'data_wait_fraction' in s]
    if waits:
      out['data_wait_fraction'] = min(1.0, sum(waits))
    rates = [s['decode_images_per_s'] for s in stats if 'decode_images_per_s' in s]
    if rates:
      out['decode_images_per_s'] = float(np.mean(rates))
    replaced = [s['replaced_reads'] for s in stats if 'replaced_reads' in s]
    if replaced:
      out['replaced_reads'] = max(replaced)
    return out

  def close(self):
    for it in self.iterators:
      it.close()


def make_train_step(config, family=None, mesh=None):
  """jit(vmap(train_step)): (stacked state, seed batches) -> (state, metrics (S,))."""
  family = family or families.get(config.model.family)
  mesh = mesh or sharding.make_mesh()
  repl = sharding.replicated(mesh)
  return jax.jit(jax.vmap(functools.partial(family.train_step, config)),
                 in_shardings=(repl, batch_sharding(mesh)), out_shardings=(repl, repl),
                 donate_argnums=0)


def check_same_config(configs):
  """A UserError unless the runs differ in `seed` only (and every seed once)."""
  ref = run_config.to_dict(configs[0])
  ref.pop('seed')
  for c in configs[1:]:
    d = run_config.to_dict(c)
    d.pop('seed')
    if d != ref:
      raise UserError('Vmapped seeds must share one config except `seed`.')
  seeds = [int(c.seed) for c in configs]
  if len(set(seeds)) != len(seeds):
    raise UserError(f'Vmapped seeds must differ: seeds {seeds}.')


# ---------------------------------------------------------------------------
# Speed: vmapped vs one seed after the other.
# ---------------------------------------------------------------------------


def speed(config, seeds, images, labels, num_steps: int, rounds: int = 2) -> dict:
  """Training images/s of the seeds vmapped and one by one, on the same batches.

  Both ways are compiled and warmed up first, then timed in alternating
  blocks of `num_steps` steps (`rounds` each), so that load from other
  processes hits both alike; each way's best block counts. One process only
  (a benchmark of one machine; training itself runs in several).

  Returns:
    {'vmap_images_per_s', 'sequential_images_per_s', 'ratio' (vmap / sequential),
     'num_seeds', 'batch_size', 'steps_timed'}.
  """
  if jax.process_count() > 1:
    raise UserError('The vmapped-seeds speed benchmark runs in one process; run it '
                    'without --num_processes (training the seeds runs in several).')
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
  batches = [jax.tree.map(lambda x: sharding.put(x, batch_sharding(mesh)), b)
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
