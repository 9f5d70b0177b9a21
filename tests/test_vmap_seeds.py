"""Seeds as a batch dimension (vaegan_jax/vmap_seeds.py): vmapped == one by one."""

import functools

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
  vmap_seeds._check_same_config([a, b])  # pylint: disable=protected-access
  b.train.batch_size = 64
  with pytest.raises(UserError, match='except `seed`'):
    vmap_seeds._check_same_config([a, b])  # pylint: disable=protected-access


def test_ctrl_c_saves_every_seeds_step_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
  """Ctrl-C in the vmapped loop saves each seed's state at the step reached
  (periodic checkpoints 3 and 6, then 7); rerunning resumes there and ends
  with the states of a run never stopped."""
  from test_validation import tiny  # pylint: disable=g-import-not-at-top
  configs = []
  for seed in (3, 5):
    config = tiny(data_dir)
    config.seed = seed
    configs.append(config)
  straight, _ = vmap_seeds.train_and_evaluate(
      configs, [str(tmp_path / f'straight{s}') for s in (3, 5)], echo=lambda _: None)
  original = vmap_seeds.seed_batches

  def interrupt_at_8(images, labels, batch_size, seeds, step):
    if step == 7:
      raise KeyboardInterrupt
    return original(images, labels, batch_size, seeds, step)

  workdirs = [str(tmp_path / f'stopped{s}') for s in (3, 5)]
  monkeypatch.setattr(vmap_seeds, 'seed_batches', interrupt_at_8)
  with pytest.raises(train.Interrupted, match=r'^Interrupted \(Ctrl-C\) at step 7; saved it '
                                              r'for every seed; rerun the same command'):
    vmap_seeds.train_and_evaluate(configs, workdirs, echo=lambda _: None)
  for w in workdirs:
    assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(w)) == [3, 6, 7]
  monkeypatch.setattr(vmap_seeds, 'seed_batches', original)
  resumed, info = vmap_seeds.train_and_evaluate(configs, workdirs, echo=lambda _: None)
  assert info['start_step'] == 7
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))


def test_sigterm_during_an_evaluation_saves_every_seed_and_resumes_exactly(
    tmp_path, data_dir, monkeypatch):
  """SIGTERM during the vmapped loop's evaluation abandons it and saves each
  seed's step; the rerun's metrics rows past it are logged once."""
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from test_validation import tiny  # pylint: disable=g-import-not-at-top
  configs = []
  for seed in (3, 5):
    config = tiny(data_dir, num_steps=6)
    config.seed = seed
    config.train.eval_every_steps = 4
    config.train.log_every_steps = 4
    config.eval.best_metric, config.eval.best_mode = 'elbo', 'max'  # As train keeps one.
    configs.append(config)
  straight, _ = vmap_seeds.train_and_evaluate(
      configs, [str(tmp_path / f'straight{s}') for s in (3, 5)], echo=lambda _: None)
  original = train.evaluate

  def evaluate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

  workdirs = [str(tmp_path / f'stopped{s}') for s in (3, 5)]
  monkeypatch.setattr(train, 'evaluate', evaluate)
  with pytest.raises(train.Terminated, match=r'^Terminated \(SIGTERM\) at step 4; saved it'):
    vmap_seeds.train_and_evaluate(configs, workdirs, echo=lambda _: None)
  for w in workdirs:
    assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(w)) == [3, 4]
  monkeypatch.setattr(train, 'evaluate', original)
  resumed, info = vmap_seeds.train_and_evaluate(configs, workdirs, echo=lambda _: None)
  assert info['start_step'] == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  for w in workdirs:
    assert checkpoint.finalized_steps(checkpoint.best_checkpoint_dir(w)) == [6]
