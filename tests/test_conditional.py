"""Class-conditional models (config.model.conditional): layers, param trees,
the projection and ACGAN losses, conditioning strength, sampling and errors."""

import functools
import hashlib
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import ROOT, load_config
import vaegan_jax
from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import objectives
from vaegan_jax import sample
from vaegan_jax import viz
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import feature_net
from vaegan_jax.metrics import generative
from vaegan_jax.models import conditioning
from vaegan_jax.models import gan as gan_models

K = 10  # mnist5k classes.


def _conditional(name, arg='smoke', **overrides):
  config = load_config(name, arg)
  config.model.conditional = True
  for key, value in overrides.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  return config


def _init(name, config):
  return jax.jit(functools.partial(families.get(name).init_state, config))(
      jax.random.PRNGKey(config.seed))


def _abstract(name, config):
  return jax.eval_shape(functools.partial(families.get(name).init_state, config),
                        jax.random.PRNGKey(config.seed))


def _state_digest(state) -> str:
  """sha256 over every leaf's path, shape, dtype and bytes (keys as key data)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    a = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.shape).encode())
    h.update(str(a.dtype).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _shapes(tree):
  return {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------------------
# Param trees.
# ---------------------------------------------------------------------------

# `_state_digest` of `init_state(get_config('smoke'), PRNGKey(0))` (params,
# batch stats, optimiser states, key) computed with main's code before
# conditioning existed (commit 2fb5b29): conditional=False must reproduce it
# byte for byte, so every checkpoint written before loads unchanged.
MAIN_DIGESTS = {'vae': '946a1e814d02cf01', 'gan': '71eb7b2b9df49b8a',
                'vaegan': '257a540cc898ef26'}


@pytest.mark.parametrize('name', sorted(MAIN_DIGESTS))
def test_unconditional_state_is_byte_identical_to_before(name):
  old_style = load_config(name, 'smoke')  # A stored config without the key.
  assert 'conditional' not in old_style.model
  assert _state_digest(_init(name, old_style)) == MAIN_DIGESTS[name]
  explicit = load_config(name, 'smoke')
  explicit.model.conditional = False
  assert _state_digest(_init(name, explicit)) == MAIN_DIGESTS[name]


def test_conditional_trees_hold_the_conditioning_params():
  base = {n: _shapes(_abstract(n, load_config(n, 'smoke')).params) for n in MAIN_DIGESTS}
  cond = {n: _shapes(_abstract(n, _conditional(n)).params) for n in MAIN_DIGESTS}
  acgan = _shapes(_abstract('gan', _conditional('gan', **{'gan.aux_weight': 1.0})).params)

  def changed(old, new):
    added = {k: v for k, v in new.items() if k not in old}
    resized = {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}
    return added, resized, sorted(set(old) - set(new))

  # CVAE: a one-hot label joins the encoder's Dense input and z.
  added, resized, removed = changed(base['vae'], cond['vae'])
  assert not added and not removed
  enc_in = base['vae']["['encoder']['Dense_0']['kernel']"][0]
  z_dim = load_config('vae', 'smoke').model.latent_dim
  assert resized == {
      "['encoder']['Dense_0']['kernel']": ((enc_in, 32), (enc_in + K, 32)),
      "['decoder']['Dense_0']['kernel']": ((z_dim, 32), (z_dim + K, 32))}

  # GAN: G's label embedding (its width joins z), D's Dense head -> projection.
  added, resized, removed = changed(base['gan'], cond['gan'])
  g_in = load_config('gan', 'smoke').model.latent_dim
  phi = base['gan']["['discriminator']['Dense_0']['kernel']"][0]
  assert added == {
      "['generator']['label_embed']['embedding']": (K, 32),
      "['discriminator']['projection']['psi']['kernel']": (phi, 1),
      "['discriminator']['projection']['psi']['bias']": (1,),
      "['discriminator']['projection']['embed']['embedding']": (K, phi)}
  assert removed == ["['discriminator']['Dense_0']['bias']",
                     "['discriminator']['Dense_0']['kernel']"]
  dense = "['generator']['Dense_0']['kernel']"
  assert resized == {dense: ((g_in, base['gan'][dense][1]), (g_in + 32, base['gan'][dense][1]))}
  assert set(acgan) - set(cond['gan']) == {
      "['discriminator']['aux_classifier']['kernel']",
      "['discriminator']['aux_classifier']['bias']"}
  assert acgan["['discriminator']['aux_classifier']['kernel']"] == (phi, K)

  # VAE-GAN: both.
  added, _, removed = changed(base['vaegan'], cond['vaegan'])
  assert set(added) == {"['decoder']['label_embed']['embedding']",
                        "['discriminator']['projection']['psi']['kernel']",
                        "['discriminator']['projection']['psi']['bias']",
                        "['discriminator']['projection']['embed']['embedding']"}
  assert removed == ["['discriminator']['Dense_0']['bias']",
                     "['discriminator']['Dense_0']['kernel']"]


# ---------------------------------------------------------------------------
# Layers and losses, closed forms.
# ---------------------------------------------------------------------------


def test_label_embedding_rows_and_invalid_labels():
  table = jnp.arange(12.0).reshape(3, 4)
  out = conditioning.LabelEmbedding(3, 4).apply({'params': {'embedding': table}},
                                                jnp.array([2, 0, -1]))
  np.testing.assert_array_equal(out, np.stack([table[2], table[0], np.zeros(4)]))


def test_projection_head_closed_form():
  phi = jnp.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
  w, b = jnp.array([[0.2], [-0.1], [0.3]]), jnp.array([0.05])
  v = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
  params = {'psi': {'kernel': w, 'bias': b}, 'embed': {'embedding': v}}
  y = jnp.array([1, 0])
  out = conditioning.ProjectionHead(2).apply({'params': params}, phi, y)
  # psi(phi) = phi @ w + b = [-0.25, 1.05]; y^T V phi = [2 - 1, 0.5] = [1, 0.5].
  np.testing.assert_allclose(out, [-0.25 + 1.0, 1.05 + 0.5], rtol=1e-6)


def test_discriminator_logit_is_psi_plus_class_projection():
  d = gan_models.Discriminator(width_mult=1 / 16, num_classes=K)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1), minval=-1, maxval=1)
  y = jnp.array([0, 3, 9, 3])
  params = d.init(jax.random.PRNGKey(1), x, labels=y)['params']
  logits, inter = d.apply({'params': params}, x, labels=y,
                          capture_intermediates=lambda m, _: isinstance(m, gan_models.Dropout),
                          mutable=['intermediates'])
  phi = np.asarray(inter['intermediates']['Dropout_1']['__call__'][0]).reshape(4, -1)
  p = jax.tree.map(np.asarray, params['projection'])
  expected = (phi @ p['psi']['kernel'])[:, 0] + p['psi']['bias'][0] + np.sum(
      p['embed']['embedding'][np.asarray(y)] * phi, axis=-1)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  other = d.apply({'params': params}, x, labels=jnp.array([1, 1, 1, 1]))
  assert not np.allclose(logits, other)  # The label moves the logit.


def test_acgan_class_loss_closed_form():
  logits = jnp.array([[0.0, np.log(3.0)], [2.0, 0.0], [1.0, 1.0]])
  labels = jnp.array([1, 0, 1])
  expected = -np.mean([np.log(3 / 4), np.log(np.e**2 / (np.e**2 + 1)), np.log(0.5)])
  np.testing.assert_allclose(objectives.class_cross_entropy(logits, labels), expected,
                             rtol=1e-6)


def test_acgan_terms_enter_both_losses():
  config = _conditional('gan', **{'gan.aux_weight': 0.5})
  fam = families.get('gan')
  state = _init('gan', config)
  batch = {'image': jnp.full((4, 28, 28, 1), 0.5), 'label': jnp.array([0, 1, 2, 3], jnp.int32)}
  _, metrics = jax.jit(functools.partial(fam.train_step, config))(state, batch)
  assert metrics['d_class_loss'] > 0 and metrics['g_class_loss'] > 0
  # At init every class is about equally likely: CE near log K.
  np.testing.assert_allclose(metrics['g_class_loss'], np.log(K), rtol=0.5)
  unconditional = load_config('gan', 'smoke')
  unconditional.gan.aux_weight = 1.0
  with pytest.raises(UserError, match=r'aux_weight=1.0 needs model.conditional=True'):
    fam.init_state(unconditional, jax.random.PRNGKey(0))


# ---------------------------------------------------------------------------
# Conditioning per family, and errors.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(MAIN_DIGESTS))
def test_labels_steer_samples_and_steps_use_batch_labels(name):
  config = _conditional(name)
  fam = families.get(name)
  state = _init(name, config)
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(2), (4, 28, 28, 1)),
           'label': jnp.array([0, 1, 2, 3], jnp.int32), 'mask': jnp.ones(4)}
  state, metrics = jax.jit(functools.partial(fam.train_step, config))(state, batch)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  key = jax.random.PRNGKey(5)
  threes, sevens = fam.sample(config, state, key, 3, 3), fam.sample(config, state, key, 3, 7)
  assert threes.shape == (3, 28, 28, 1) and not np.allclose(threes, sevens)
  np.testing.assert_array_equal(threes, fam.sample(config, state, key, 3, jnp.full(3, 3)))
  eval_a = fam.eval_step(config, state, batch)
  eval_b = fam.eval_step(config, state, {**batch, 'label': jnp.array([9, 9, 9, 9], jnp.int32)})
  assert any(not np.isclose(float(eval_a[k]), float(eval_b[k])) for k in eval_a)
  if hasattr(fam, 'encode'):
    with pytest.raises(ValueError, match='needs labels to encode'):
      fam.encode(config, state, batch['image'])


def test_dataset_without_labels_is_one_error():
  for name in MAIN_DIGESTS:
    config = _conditional(name)
    config.data.name = 'celeb_a'
    with pytest.raises(UserError, match=r"needs class labels and (dataset )?'?celeb_a'? has none"):
      families.get(name).init_state(config, jax.random.PRNGKey(0))
  proc = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:conditional',
       '--config.data.name=celeb_a', '--workdir=/nonexistent/never_created'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  # Refused by the config validation, before any work: bad usage, exit 2.
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert errors == ["error: config.model.conditional=True needs class labels and dataset "
                    "'celeb_a' has none; allowed: False for this dataset, or a labelled "
                    "dataset (config file configs/vae.py:conditional)."]
  assert not os.path.exists('/nonexistent/never_created')


# ---------------------------------------------------------------------------
# Conditioning strength: a short CVAE run on mnist5k.
# ---------------------------------------------------------------------------


def _short_cvae(data_dir, shuffle_labels: bool, steps: int = 300):
  config = _conditional('vae')
  config.data.data_dir = data_dir
  # A 2-D latent leaves the class to the label, so conditioning shows quickly.
  config.model.width, config.model.hidden, config.model.latent_dim = 16, 64, 2
  config.vae.kl_warmup_steps = 0
  config.train.batch_size = 64
  fam = families.get('vae')
  x, y = input_pipeline.load_split('mnist5k', 'train', data_dir)
  if shuffle_labels:  # Labels carry no information about the images.
    y = np.random.default_rng(1).permutation(y)
  state = fam.init_state(config, jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(fam.train_step, config), donate_argnums=0)
  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(x), 64)
    state, _ = step(state, {'image': input_pipeline.to_float(x[idx]), 'label': y[idx]})
  return config, fam, state


def test_cvae_reaches_cond_accuracy_well_above_chance(data_dir):
  """Measured (a loaded 2-core CPU, 300 steps of batch 64, 500
  samples, 50 per class): cond_accuracy 0.82 with the true labels and 0.088
  with shuffled ones (chance 0.10); intra_fid 22.6 against 63.4 (feature map
  'l2'). About 10 s per run."""
  test_x, test_y = input_pipeline.load_split('mnist5k', 'test', data_dir)
  net = feature_net.load(feature_net.shipped_path('mnist5k'))
  results = {}
  for shuffled in (False, True):
    config, fam, state = _short_cvae(data_dir, shuffled)
    evaluator = generative.Evaluator(config, fam, test_x, net=net, test_labels=test_y)
    results[shuffled] = evaluator(state, 500)
  true, shuffled = results[False], results[True]
  assert true['cond_accuracy'] > 0.6, true['cond_accuracy']
  assert shuffled['cond_accuracy'] < 0.25, shuffled['cond_accuracy']
  assert true['intra_fid'] < shuffled['intra_fid']
  assert set(f'cond_accuracy/{k}' for k in range(K)) <= set(true)
  assert 'elbo' not in true  # IWAE bounds log p(x), not the CVAE's log p(x|y).


# ---------------------------------------------------------------------------
# Sampling from a checkpoint alone.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def cond_workdirs(tmp_path_factory):
  """{'vae', 'gan', 'vaegan'}: conditional smoke configs, initial params saved
  at step 1 (the plumbing is under test); 'plain_vae': an unconditional smoke
  config.json alone (the label checks come before a checkpoint is read)."""
  from vaegan_jax import checkpoint, run_config  # pylint: disable=g-import-not-at-top
  out = {'plain_vae': str(tmp_path_factory.mktemp('plain_vae'))}
  run_config.check_and_save(load_config('vae', 'smoke'), out['plain_vae'])
  for name in ('vae', 'gan', 'vaegan'):
    config = _conditional(name)
    workdir = str(tmp_path_factory.mktemp(name))
    run_config.check_and_save(config, workdir)
    mngr = checkpoint.manager(workdir)
    checkpoint.save(mngr, 1, _init(name, config), force=True)
    mngr.wait_until_finished()
    mngr.close()
    out[name] = workdir
  return out


def test_api_sample_with_labels(cond_workdirs):
  model = vaegan_jax.load(cond_workdirs['gan'])
  assert model.num_classes == K
  a = model.sample(0, 4, labels=7)
  np.testing.assert_array_equal(a, model.sample(0, 4, labels=np.full(4, 7)))
  z = jax.random.normal(jax.random.PRNGKey(0), (4, model.latent_dim))
  np.testing.assert_allclose(a, model.decode(z, 7), atol=1e-6)  # sample = decode(z ~ key).
  assert not np.allclose(a, model.sample(0, 4, labels=2))
  assert model.sample(0, 4).shape == a.shape  # Labels drawn when not given.
  with pytest.raises(UserError, match='Label 10 is out of range'):
    model.sample(0, 4, labels=10)
  with pytest.raises(UserError, match='class-conditional: give the labels'):
    model.decode(z)
  with pytest.raises(UserError, match='Expected 4 labels'):
    model.sample(0, 4, labels=[1, 2])
  config = load_config('vae', 'smoke')
  plain = vaegan_jax.api.Model('', 0, config, families.get('vae'), state=None)
  assert plain.num_classes == 0 and plain.check_labels(None, 2, required=True) is None
  with pytest.raises(UserError, match='model.conditional=False'):
    plain.sample(0, 2, labels=1)


def _png(path):
  return np.asarray(Image.open(path))


def test_class_grid_rows_share_latents(cond_workdirs, tmp_path):
  workdir = cond_workdirs['vaegan']
  out = str(tmp_path / 'grid.png')
  result = sample.run(workdir, mode='class_grid', num=30, out=out, echo=lambda _: None)
  assert result['num'] == 30 and result['num_classes'] == K
  grid = _png(out)
  model = vaegan_jax.load(workdir)
  z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), sample._CLASS_GRID),  # pylint: disable=protected-access
                        (3, model.latent_dim))
  row7 = np.asarray(model.decode(z, 7))
  # 10 rows of 3, each row labelled with its class: the layout viz draws.
  rendered = viz.render([viz.Panel(np.zeros((K * 3, 28, 28, 1)), result['titles'][0], ncol=3,
                                   row_labels=[str(k) for k in range(K)])], result['scale'])
  assert grid.shape == rendered.image.shape[:2] and grid.shape[1] >= viz.MIN_WIDTH
  s = result['scale']
  top, left, h, w = rendered.tiles[0][7 * 3]  # Row 7, column 0.
  cell = grid[top:top + h:s, left:left + w:s].astype(np.float32) / 255.0
  np.testing.assert_allclose(cell, row7[0, :, :, 0], atol=1.5 / 255)
  assert grid[top:top + h, :left].min() < 100  # The label '7' left of the row.


def test_modes_pass_the_label(cond_workdirs, data_dir, tmp_path):
  run = functools.partial(sample.run, num=4, data_dir=data_dir, echo=lambda _: None)
  vae = cond_workdirs['vae']
  for mode, extra in [('samples', {'label': 7}), ('interpolate', {}), ('reconstruct', {}),
                      ('denoise', {'label': 3}), ('inpaint', {'inpaint_steps': 3}),
                      ('inpaint', {'mask': 'blocks', 'inpaint_steps': 3})]:
    result = run(vae, mode=mode, out=str(tmp_path / f'{mode}.png'), **extra)
    assert os.path.exists(result['out'])
  # Reconstructions use the true test labels unless --label overrides them.
  true = run(vae, mode='reconstruct', out=str(tmp_path / 'a.png'))
  forced = run(vae, mode='reconstruct', label=0, out=str(tmp_path / 'b.png'))
  model = vaegan_jax.load(vae)
  x, y = sample.load_inputs_and_labels(model, 4, 0, data_dir=data_dir, echo=lambda _: None)
  np.testing.assert_allclose(true['psnr'], float(vaegan_jax.applications.psnr(
      x, model.reconstruct(x, y))), rtol=1e-5)
  assert true['psnr'] != forced['psnr']
  result = run(cond_workdirs['gan'], mode='inpaint', inpaint_steps=3, restarts=2,
               label=5, out=str(tmp_path / 'g.png'))
  assert np.isfinite(result['psnr_completed'])
  with pytest.raises(UserError, match='give their class with --label'):
    run(vae, mode='reconstruct', images=str(tmp_path / 'a.png'))


def _one_line_error(*args):
  proc = subprocess.run([sys.executable, '-m', 'vaegan_jax.sample', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith('error: ')
  return lines[0]


def test_label_cli_errors(cond_workdirs):
  line = _one_line_error(f'--workdir={cond_workdirs["gan"]}', '--label=10')
  assert '--label=10 is out of range' in line and '10 classes, 0-9' in line
  line = _one_line_error(f'--workdir={cond_workdirs["gan"]}', '--label=-1')
  assert '--label=-1 is out of range' in line
  line = _one_line_error(f'--workdir={cond_workdirs["plain_vae"]}', '--label=7')
  assert 'needs a class-conditional checkpoint' in line
  line = _one_line_error(f'--workdir={cond_workdirs["plain_vae"]}', '--mode=class_grid')
  assert '--mode=class_grid needs a class-conditional checkpoint' in line


# ---------------------------------------------------------------------------
# Training loop and evaluate CLI.
# ---------------------------------------------------------------------------


def test_training_and_evaluate_report_conditioning(tmp_path, data_dir):
  from vaegan_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  config = _conditional('gan', **{'gan.aux_weight': 1.0})
  config.data.data_dir = data_dir
  config.train.num_steps = 10
  config.eval.num_samples = 100
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  evals = [r for r in rows if 'eval/cond_accuracy' in r]
  assert [r['step'] for r in evals] == [10]
  assert 0 <= evals[0]['eval/cond_accuracy'] <= 1 and evals[0]['eval/intra_fid'] > 0
  assert 'g_class_loss' in rows[0] and 'd_class_loss' in rows[0]
  result = evaluate.run(workdir, num_samples=100, echo=lambda _: None)
  assert 0 <= result['cond_accuracy'] <= 1 and np.isfinite(result['intra_fid'])


def test_compare_study_gains_a_conditional_row_per_family():
  import compare  # pylint: disable=g-import-not-at-top
  study = _compare_study()
  assert compare.entries(study) == ['vae', 'gan', 'vaegan']
  study.conditional = True
  compare.check_study(study)
  assert compare.entries(study) == ['vae', 'gan', 'vaegan', 'vae_conditional',
                                    'gan_conditional', 'vaegan_conditional']
  config = compare.run_config(study, 'gan_conditional', 1)
  assert config.model.family == 'gan' and config.model.conditional and config.seed == 1
  assert 'conditional' not in compare.run_config(study, 'gan', 1).model
  assert compare.run_dir('/o', 'gan_conditional', 1) == '/o/runs/gan_conditional/seed_1'
  assert compare.param_counts(study, 'gan_conditional')['total'] > compare.param_counts(
      study, 'gan')['total']


def _compare_study():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      '_compare_study_config', os.path.join(ROOT, 'experiments', 'configs', 'compare.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config('smoke')
