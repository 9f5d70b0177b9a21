"""Seeds as a batch dimension (vaegan_jax/vmap_seeds.py): vmapped == one by one."""

import functools
import json
import os
import signal

import jax
import numpy as np
import pytest

from conftest import load_config

from vaegan_jax import checkpoint
from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import train
from vaegan_jax import vmap_seeds
from vaegan_jax.errors import UserError


@pytest.mark.parametrize('family_name', ['vae', 'gan'])
def test_vmapped_seeds_equal_one_by_one(family_name):
  """Two seeds vmapped reach the params of the same seeds trained one by one."""
  config = load_config(family_name, 'smoke')
  config.train.batch_size = 8
  family = families.get(family_name)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
  labels = np.zeros((40,), np.int32)
  seeds = [3, 5]
  stacked = vmap_seeds.init_states(config, seeds)
  vstep = vmap_seeds.make_train_step(config)
  step = jax.jit(functools.partial(family.train_step, config))
  singles = [family.init_state(config, jax.random.PRNGKey(s)) for s in seeds]
  for t in range(3):
    batches = vmap_seeds.seed_batches(images, labels, 8, seeds, t)
    stacked, metrics = vstep(stacked, batches)
    singles = [step(state, vmap_seeds.unstack(batches, i))[0]
               for i, state in enumerate(singles)]
    assert all(np.shape(v) == (2,) for v in jax.tree.leaves(metrics))
  for i, single in enumerate(singles):
    vmapped = vmap_seeds.unstack(stacked, i)
    assert int(vmapped.step) == int(single.step) == 3
    for a, b in zip(jax.tree.leaves(vmapped.params), jax.tree.leaves(single.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
    for a, b in zip(jax.tree.leaves(vmapped.batch_stats), jax.tree.leaves(single.batch_stats)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
  # The seeds really differ (init and data order), so the comparison means something.
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(singles[0].params), jax.tree.leaves(singles[1].params)))
  assert diff > 0.1


def test_seed_batches_follow_each_seeds_data_order():
  images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1) * 5
  labels = np.arange(50, dtype=np.int32)
  batch = vmap_seeds.seed_batches(images, labels, 8, [0, 1], 7)
  assert batch['image'].shape == (2, 8, 1, 1, 1)
  for i, seed in enumerate([0, 1]):
    np.testing.assert_array_equal(
        batch['label'][i], input_pipeline.global_batch_indices(50, 8, seed, 7))
  assert not np.array_equal(batch['label'][0], batch['label'][1])


def test_vmapped_configs_must_differ_only_in_seed():
  a, b = load_config('vae', 'smoke'), load_config('vae', 'smoke')
  b.seed = 1
  vmap_seeds.check_same_config([a, b])
  b.train.batch_size = 64
  with pytest.raises(UserError, match='except `seed`'):
    vmap_seeds.check_same_config([a, b])
  with pytest.raises(UserError, match=r'must differ: seeds \[0, 0\]'):
    vmap_seeds.check_same_config([a, a])


def _seed_configs(data_dir, seeds=(3, 5), **kwargs):
  from test_validation import tiny  # pylint: disable=g-import-not-at-top
  configs = []
  for seed in seeds:
    config = tiny(data_dir, **kwargs)
    config.seed = seed
    configs.append(config)
  return configs


def _quiet(_):
  pass


def test_seed_iterator_stacks_each_seeds_own_batches(data_dir):
  """Row s of a vmapped batch is the batch a single run of seed s reads."""
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  configs = _seed_configs(data_dir)
  data = input_pipeline.Data(configs[0])
  mesh = sharding.make_mesh()
  shard = sharding.data_sharding(mesh)
  it = vmap_seeds.SeedIterator([data.train_iterator(shard, 4, s) for s in (3, 5)], mesh)
  batch = next(it)
  it.close()
  assert batch['image'].shape[:2] == (2, 16)
  for i, config in enumerate(configs):
    single = input_pipeline.Data(config).train_iterator(shard, 4)
    want = next(single)
    single.close()
    for k in ('image', 'label'):
      np.testing.assert_array_equal(np.asarray(batch[k])[i], np.asarray(want[k]))


def test_ctrl_c_saves_every_seeds_step_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
  """Ctrl-C in the vmapped loop saves each seed's state at the step reached
  (periodic checkpoints 3 and 6, then 7); rerunning resumes there and ends
  with the states of a run never stopped."""
  configs = _seed_configs(data_dir)
  straight, _ = train.train_seeds(
      configs, [str(tmp_path / f'straight{s}') for s in (3, 5)], echo=_quiet)
  original = input_pipeline.TrainIterator.__next__

  def interrupt_at_7(self):
    if self.step == 7:
      raise KeyboardInterrupt
    return original(self)

  workdirs = [str(tmp_path / f'stopped{s}') for s in (3, 5)]
  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', interrupt_at_7)
  with pytest.raises(train.Interrupted, match=r'^Interrupted \(Ctrl-C\) at step 7; saved it '
                                              r'for every seed; the last good checkpoint of '
                                              r'every seed is step 7 in .*; rerun the same '
                                              r'command to resume from it\.$'):
    train.train_seeds(configs, workdirs, echo=_quiet)
  for w in workdirs:
    assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(w)) == [3, 6, 7]
  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', original)
  lines = []
  resumed, info = train.train_seeds(configs, workdirs, echo=lines.append)
  assert info['start_step'] == 7
  assert 'Resuming every seed from checkpoint at step 7.' in lines
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight), jax.device_get(resumed))
  # Each seed's log has every step once, with the same means as the run never stopped.
  for s in (3, 5):
    want, got = [[r for r in map(json.loads, open(tmp_path / f'{name}{s}' / 'metrics.jsonl'))
                  if 'loss' in r] for name in ('straight', 'stopped')]
    assert [r['step'] for r in got] == list(range(1, 13))
    for a, b in zip(want, got):
      assert a['loss'] == b['loss'], (s, a['step'])


def test_sigterm_during_an_evaluation_saves_every_seed_and_resumes_exactly(
    tmp_path, data_dir, monkeypatch):
  """SIGTERM during the vmapped loop's evaluation abandons it and saves each
  seed's step; the rerun's metrics rows past it are logged once."""
  configs = _seed_configs(data_dir, num_steps=6)
  for config in configs:
    config.train.eval_every_steps = 4
    config.train.log_every_steps = 4
    config.eval.best_metric, config.eval.best_mode = 'elbo', 'max'  # As train keeps one.
  straight, _ = train.train_seeds(
      configs, [str(tmp_path / f'straight{s}') for s in (3, 5)], echo=_quiet)
  original = train.evaluate

  def evaluate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

  workdirs = [str(tmp_path / f'stopped{s}') for s in (3, 5)]
  monkeypatch.setattr(train, 'evaluate', evaluate)
  with pytest.raises(train.Terminated, match=r'^Terminated \(SIGTERM\) at step 4; saved it'):
    train.train_seeds(configs, workdirs, echo=_quiet)
  for w in workdirs:
    assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(w)) == [3, 4]
  monkeypatch.setattr(train, 'evaluate', original)
  resumed, info = train.train_seeds(configs, workdirs, echo=_quiet)
  assert info['start_step'] == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  for w in workdirs:
    assert checkpoint.finalized_steps(checkpoint.best_checkpoint_dir(w)) == [6]


def test_vmapped_seeds_keep_a_best_checkpoint_and_do_the_evaluation_a_restored_step_owes(
    tmp_path, data_dir, monkeypatch):
  """Vmapped seeds interrupted during the evaluation of their last step:
  the rerun evaluates each seed at that step (once), keeps each seed's best
  checkpoint and grid, and says what it did."""
  configs = _seed_configs(data_dir, num_steps=4)
  for config in configs:
    config.train.eval_every_steps = 2
    config.train.sample_every_steps = 4
    config.eval.best_metric, config.eval.best_mode = 'elbo', 'max'
  original = train.evaluate

  def evaluate(config, family, eval_fn, state, *args, **kwargs):
    if int(jax.device_get(state.step)) == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(config, family, eval_fn, state, *args, **kwargs)

  workdirs = [str(tmp_path / f'w{s}') for s in (3, 5)]
  monkeypatch.setattr(train, 'evaluate', evaluate)
  with pytest.raises(train.Terminated, match=r'^Terminated \(SIGTERM\) at step 4; saved it'):
    train.train_seeds(configs, workdirs, echo=_quiet)
  monkeypatch.setattr(train, 'evaluate', original)
  for w in workdirs:
    assert checkpoint.last_good_step(w) == 4
    assert not any('eval/elbo' in json.loads(l) and json.loads(l)['step'] == 4
                   for l in open(os.path.join(w, 'metrics.jsonl')))
  lines = []
  _, info = train.train_seeds(configs, workdirs, echo=lines.append)
  assert info['steps'] == 0
  assert lines[-1].startswith('Done: step 4 had its evaluation still to do; workdirs ')
  assert sum(l.startswith('seed 3: eval at step 4') for l in lines) == 1
  assert sum(l.startswith('seed 5: eval at step 4') for l in lines) == 1
  elbos = []
  for w in workdirs:
    rows = [json.loads(l) for l in open(os.path.join(w, 'metrics.jsonl'))]
    evals = [r for r in rows if 'eval/elbo' in r]
    assert [r['step'] for r in evals] == [2, 4]
    best_step = max(evals, key=lambda r: r['eval/elbo'])['step']
    assert checkpoint.finalized_steps(checkpoint.best_checkpoint_dir(w)) == [best_step]
    assert os.path.exists(os.path.join(w, 'samples', 'step_0000004.png'))
    elbos.append(evals[-1]['eval/elbo'])
  assert elbos[0] != elbos[1]  # Each seed's own evaluation.


def test_non_finite_metric_names_the_seed(tmp_path, data_dir, monkeypatch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  family = families.get('vae')
  original = family.train_step

  def poisoned(config, state, batch):  # Seed 5 (key [0, 5]) goes NaN at step 2.
    state, metrics = original(config, state, batch)
    bad = (state.step == 2) & (state.key[1] == 5)
    metrics['loss'] = jnp.where(bad, jnp.nan, metrics['loss'])
    return state, metrics

  monkeypatch.setattr(family, 'train_step', poisoned)
  configs = _seed_configs(data_dir, num_steps=4)
  with pytest.raises(train.NonFiniteError, match=r'^Non-finite loss=nan for seed 5 at step 2;'
                     ) as info:
    train.train_seeds(configs, [str(tmp_path / f'w{s}') for s in (3, 5)], echo=_quiet)
  assert (info.value.seed, info.value.step) == (5, 2)


@pytest.mark.parametrize('value', ['3,x', '3,3'])
def test_bad_seeds_flag_is_one_usage_error_line(value, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp_path}', f'--seeds={value}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  [line] = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert line.startswith(f'error: --seeds={value}: give ')
