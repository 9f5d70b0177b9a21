"""Sampling CLI, notebook API and applications, on tiny trained checkpoints."""

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import ROOT, load_config
import vaegan_jax
from vaegan_jax import api
from vaegan_jax import applications as apps
from vaegan_jax import images as images_lib
from vaegan_jax import sample
from vaegan_jax import viz
from vaegan_jax.errors import UserError

H, W, C = 28, 28, 1


def _train(workdir, data_dir, num_steps=20):
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.train.num_steps = num_steps
  if 'eval' in config:  # FID, IWAE etc. are not under test here.
    config.eval.generative_metrics = False
    config.eval.train_iwae_k = 0
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def vae_workdir(tmp_path_factory, data_dir):
  """A smoke VAE trained for 20 steps: checkpoints at steps 10 and 20."""
  return _train(tmp_path_factory.mktemp('vae'), data_dir)


def _cli(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'vaegan_jax.sample', *args],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def _png(path):
  return np.asarray(Image.open(path))


# ---------------------------------------------------------------------------
# Applications: pure functions.
# ---------------------------------------------------------------------------


def test_slerp_ends_norms_and_fallback():
  z0, z1 = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  np.testing.assert_allclose(apps.slerp(z0, z1, 0.0), z0, atol=1e-5)
  np.testing.assert_allclose(apps.slerp(z0, z1, 1.0), z1, atol=1e-5)
  mid = apps.slerp(z0, z1, 0.5)
  # Norms interpolate linearly; a straight line would shrink them.
  np.testing.assert_allclose(jnp.linalg.norm(mid, axis=-1),
                             0.5 * (jnp.linalg.norm(z0, axis=-1) + jnp.linalg.norm(z1, axis=-1)),
                             rtol=1e-5)
  assert jnp.all(jnp.linalg.norm(mid, axis=-1) > jnp.linalg.norm(0.5 * (z0 + z1), axis=-1))
  same = apps.slerp(z0, z0, 0.3)  # Parallel end points: no NaN.
  np.testing.assert_allclose(same, z0, atol=1e-5)
  lat = apps.interpolation_latents(jax.random.PRNGKey(1), 3, 4, 8)
  assert lat.shape == (12, 8)


def test_noise_and_masks():
  x = jnp.full((4, H, W, C), 0.5)
  key = jax.random.PRNGKey(0)
  g = apps.add_noise(key, x, 'gaussian', 0.1)
  assert g.shape == x.shape and float(g.min()) >= 0 and float(g.max()) <= 1
  assert abs(float(jnp.std(g)) - 0.1) < 0.01
  sp = apps.add_noise(key, x, 'salt_pepper', 0.3)
  hit = np.asarray(sp != 0.5)
  assert abs(hit.mean() - 0.3) < 0.03 and set(np.unique(np.asarray(sp)[hit])) == {0.0, 1.0}
  with pytest.raises(ValueError):
    apps.add_noise(key, x, 'speckle', 0.1)
  m = apps.center_mask(2, H, W)
  assert m.shape == (2, H, W, 1) and float(1 - m.mean()) == pytest.approx(14 * 14 / (H * W))
  assert m[0, H // 2, W // 2, 0] == 0 and m[0, 0, 0, 0] == 1
  b = apps.block_mask(key, 3, H, W)
  assert b.shape == (3, H, W, 1)
  missing = 1 - np.asarray(b).mean(axis=(1, 2, 3))
  assert np.all(missing > 0) and np.all(missing <= 4 * 7 * 7 / (H * W) + 1e-6)
  assert not np.array_equal(b[0], b[1])  # Blocks differ per image.


def test_psnr_weights():
  x = jnp.zeros((2, 4, 4, 1))
  y = x.at[:, :2].set(0.1)  # Error 0.1 on half the pixels.
  top = jnp.zeros((2, 4, 4, 1)).at[:, :2].set(1.0)
  assert float(apps.psnr(x, y, top)) == pytest.approx(20.0, abs=1e-3)
  assert float(apps.psnr(x, y)) == pytest.approx(10 * np.log10(1 / 0.005), abs=1e-3)
  assert float(apps.psnr(x, y, 1 - top)) == pytest.approx(100.0)


def test_inpaint_posterior_and_latent_recover_a_known_model():
  """With a model that knows the truth, both methods fill the hole exactly."""
  key = jax.random.PRNGKey(0)
  basis = jax.random.uniform(key, (3, H * W))  # A linear 'decoder' of rank 3.
  decode = lambda z: jax.nn.sigmoid(z @ basis).reshape(-1, H, W, C)
  z_true = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
  x = decode(z_true)
  mask = apps.center_mask(2, H, W)
  # Posterior iteration: a 'reconstruction' that projects onto x converges at once.
  out = apps.inpaint_posterior(lambda v: x, x, mask, num_iters=3)
  np.testing.assert_allclose(out, x, atol=1e-6)
  # An identity 'reconstruction' leaves the start: the hole holds the observed mean.
  out = apps.inpaint_posterior(lambda v: v, x, mask, num_iters=3)
  observed = np.asarray(x)[np.asarray(mask)[..., 0] == 1].reshape(2, -1).mean(axis=1)
  np.testing.assert_allclose(out[:, H // 2, W // 2, 0], observed, rtol=1e-5)
  # Latent optimisation from random starts recovers the hole from observed pixels.
  z0 = jax.random.normal(jax.random.PRNGKey(2), (2, 2, 3))
  out = apps.inpaint_latent(decode, x, mask, z0, num_steps=300, learning_rate=0.1,
                            prior_weight=0.0)
  before = float(apps.psnr(x, apps.apply_mask(x, mask), 1 - mask))
  after = float(apps.psnr(x, out, 1 - mask))
  assert after > before + 15, (before, after)
  np.testing.assert_array_equal(np.asarray(out * mask), np.asarray(x * mask))


def test_load_images(tmp_path):
  rgb = (np.arange(40 * 60 * 3) % 256).astype(np.uint8).reshape(40, 60, 3)
  Image.fromarray(rgb).save(tmp_path / 'b.png')
  Image.fromarray(rgb[:, :, 0]).save(tmp_path / 'a.jpg')
  (tmp_path / 'c.png').write_bytes(b'not a png')
  (tmp_path / 'notes.txt').write_text('skip me')
  x = images_lib.load_images(str(tmp_path), (28, 28, 1))
  assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32
  assert 0 <= x.min() and x.max() <= 1
  x = images_lib.load_images(str(tmp_path / 'b.png'), (32, 32, 3))
  assert x.shape == (1, 32, 32, 3)
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'x.png').write_bytes(b'junk')
  with pytest.raises(UserError, match='No readable PNG or JPEG'):
    images_lib.load_images(str(empty), (28, 28, 1))
  with pytest.raises(UserError, match='does not exist'):
    images_lib.load_images(str(tmp_path / 'missing'), (28, 28, 1))


# ---------------------------------------------------------------------------
# The API on a trained checkpoint.
# ---------------------------------------------------------------------------


def test_api_shapes_range_and_steps(vae_workdir):
  model = vaegan_jax.load(vae_workdir)
  assert model.step == 20 and model.has_encoder and model.image_shape == (H, W, C)
  x = model.sample(jax.random.PRNGKey(0), 5)
  assert x.shape == (5, H, W, C) and x.dtype == jnp.float32
  assert float(x.min()) >= 0 and float(x.max()) <= 1
  np.testing.assert_array_equal(x, model.sample(0, 5))  # int seeds work too.
  mean, logvar = model.encode(x)
  assert mean.shape == logvar.shape == (5, model.latent_dim)
  r = model.reconstruct((np.asarray(x) * 255).astype(np.uint8))
  assert r.shape == x.shape and float(r.min()) >= 0 and float(r.max()) <= 1
  assert model.decode(mean).shape == x.shape
  with pytest.raises(UserError, match=r'shape \(N, 28, 28, 1\)'):
    model.reconstruct(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(UserError, match=r'latents of shape'):
    model.decode(np.zeros((2, model.latent_dim + 1)))
  older = api.load(vae_workdir, step=10)
  assert older.step == 10
  assert not np.array_equal(older.sample(0, 5), x)
  with pytest.raises(UserError, match='available steps: 10, 20'):
    api.load(vae_workdir, step=7)


def test_load_errors(tmp_path, vae_workdir):
  with pytest.raises(UserError, match='does not exist'):
    api.load(str(tmp_path / 'nowhere'))
  with pytest.raises(UserError, match='config.json'):
    api.load(str(tmp_path))
  fresh = tmp_path / 'fresh'
  fresh.mkdir()
  (fresh / 'config.json').write_bytes(open(os.path.join(vae_workdir, 'config.json'), 'rb').read())
  with pytest.raises(UserError, match='No checkpoints'):
    api.load(str(fresh))
  with pytest.raises(UserError, match='No best checkpoint'):
    api.load(vae_workdir, step='best')
  with pytest.raises(UserError, match="neither a step number nor 'best'"):
    api.load(vae_workdir, step='latest')
  assert api.load(vae_workdir, step='10').step == 10  # As the CLI passes it.
  # A run from a version of the code that had fewer config keys.
  old = tmp_path / 'old'
  shutil.copytree(vae_workdir, old)
  stored = json.loads((old / 'config.json').read_text())
  del stored['model']['hidden']
  (old / 'config.json').write_text(json.dumps(stored))
  with pytest.raises(UserError, match="lacks the key 'hidden'"):
    api.load(str(old))


def test_damaged_checkpoint_is_one_error(tmp_path, vae_workdir):
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(vae_workdir, damaged)
  data = glob.glob(os.path.join(damaged, 'checkpoints', '20', 'default', '**', 'd', '*'),
                   recursive=True)
  assert data
  for f in data:
    with open(f, 'r+b') as fh:
      fh.truncate(10)
  with pytest.raises(UserError, match='Checkpoint 20 .* cannot be read.*other steps: 10'):
    api.load(damaged)
  assert api.load(damaged, step=10).step == 10


# ---------------------------------------------------------------------------
# The CLI's modes.
# ---------------------------------------------------------------------------

_TITLES = {'samples': ['samples'], 'interpolate': ['9 spherical interpolations of 3 steps'],
           'reconstruct': ['inputs', 'reconstructions'],
           'denoise': ['clean', 'noisy (salt_pepper 0.2)', 'restored'],
           'inpaint': ['clean', 'masked (', 'completed (']}


@pytest.mark.parametrize('mode,extra', [
    ('samples', {}),
    ('interpolate', {'steps': 3}),
    ('reconstruct', {}),
    ('denoise', {'noise': 'salt_pepper', 'noise_level': 0.2}),
    ('inpaint', {'mask': 'blocks'}),
    ('inpaint', {'inpaint_method': 'latent', 'inpaint_steps': 30, 'restarts': 2}),
    ('inpaint', {'mask': 'center', 'inpaint_steps': 30, 'restarts': 2}),
])
def test_each_mode(vae_workdir, tmp_path, mode, extra):
  out = str(tmp_path / f'{mode}.png')
  lines = []
  result = sample.run(vae_workdir, mode=mode, num=9, out=out, echo=lines.append, **extra)
  grid = _png(out)
  assert grid.shape[1] >= viz.MIN_WIDTH and result['scale'] >= 1
  assert grid.std() > 10  # Not a blank image.
  assert result['out'] == out and result['step'] == 20
  assert [t[:len(w)] for t, w in zip(result['titles'], _TITLES[mode])] == _TITLES[mode]
  assert len(result['titles']) == len(_TITLES[mode])
  assert result['num'] == (27 if mode == 'interpolate' else 9)
  if mode == 'denoise':
    assert 'psnr_noisy' in result and 'psnr_restored' in result
    assert any('PSNR vs clean' in l for l in lines)
  if mode == 'inpaint':
    auto = 'posterior' if extra.get('mask') == 'blocks' else 'latent'
    assert result['inpaint_method'] == extra.get('inpaint_method', auto)
    # Observed pixels are untouched, so the grid's middle panel shows the mask.
    assert np.isfinite(result['psnr_completed'])
    assert any('missing pixels' in l for l in lines)


def test_images_flag_and_default_out(vae_workdir, tmp_path):
  digits = tmp_path / 'digits'
  digits.mkdir()
  for i in range(3):
    img = np.zeros((56, 56), np.uint8)
    img[10 + 5 * i:40, 20:30] = 255
    Image.fromarray(img).save(digits / f'{i}.png')
  result = sample.run(vae_workdir, mode='reconstruct', num=64, images=str(digits),
                      echo=lambda _: None)
  assert result['num'] == 3 and result['out'] == os.path.join(vae_workdir, 'reconstruct_step20.png')
  assert os.path.exists(result['out'])
  bad = tmp_path / 'bad'
  bad.mkdir()
  with pytest.raises(UserError, match='No readable'):
    sample.run(vae_workdir, mode='denoise', images=str(bad), echo=lambda _: None)
  with pytest.raises(UserError, match='--images is used by'):
    sample.run(vae_workdir, mode='samples', images=str(digits), echo=lambda _: None)


def test_png_panels_hold_the_model_images_enlarged(vae_workdir, tmp_path):
  """The PNG is the model's images, each an integer nearest-neighbour
  enlargement, under titles; --scale picks the factor."""
  model = vaegan_jax.load(vae_workdir)
  key = jax.random.fold_in(jax.random.PRNGKey(5), sample._SAMPLES)  # pylint: disable=protected-access
  x = np.asarray(model.sample(key, 4))
  expected = viz.render([viz.Panel(x, 'samples')], scale=3)
  out = str(tmp_path / 's.png')
  result = sample.run(vae_workdir, num=4, seed=5, scale=3, out=out, echo=lambda _: None)
  png = _png(out)
  np.testing.assert_array_equal(png, expected.image[..., 0])
  for image, (top, left, h, w) in zip(viz.to_uint8(x), expected.tiles[0]):
    np.testing.assert_array_equal(png[top:top + h, left:left + w],
                                  np.repeat(np.repeat(image[..., 0], 3, 0), 3, 1))
  assert result['scale'] == 3 and png.shape[1] < viz.MIN_WIDTH  # 2 x 30 + 2 px, x3.
  auto = sample.run(vae_workdir, num=4, seed=5, out=str(tmp_path / 'a.png'),
                    echo=lambda _: None)
  assert auto['scale'] == 5 and _png(auto['out']).shape[1] >= viz.MIN_WIDTH  # ceil(256/62).
  # The title band: text above the grid, white in an untitled rendering.
  top = expected.tiles[0][0][0] - viz.PAD * 3
  assert png[:top].min() < 100
  untitled = viz.render([viz.Panel(x)], scale=3).image
  np.testing.assert_array_equal(untitled[..., 0], png[top:])


def test_interpolate_paths_steps_and_marked_ends(vae_workdir, tmp_path):
  out = str(tmp_path / 'i.png')
  lines = []
  result = sample.run(vae_workdir, mode='interpolate', num=3, steps=5, out=out,
                      echo=lines.append)
  assert (result['paths'], result['steps'], result['num']) == (3, 5, 15)
  assert '3 paths of 5 steps' in lines[-2]
  model = vaegan_jax.load(vae_workdir)
  z = apps.interpolation_latents(
      jax.random.fold_in(jax.random.PRNGKey(0), sample._INTERPOLATE), 3, 5, model.latent_dim)  # pylint: disable=protected-access
  decoded = viz.to_uint8(model.decode(z))[..., 0]  # 3 rows of 5 steps.
  s = result['scale']
  rendered = viz.render([viz.Panel(decoded[..., None], '', ncol=5)], s)  # Geometry only.
  png = _png(out)
  # Below the title and the start / end labels, tile i of the PNG is image i
  # enlarged s times; the ends (columns 0 and 4) are framed in grey, the
  # middle ones are not.
  offset = png.shape[0] - rendered.image.shape[0]
  assert offset == 2 * viz.line_height()
  assert len(rendered.tiles[0]) == 15
  for i, (top, left, h, w) in enumerate(rendered.tiles[0]):
    tile = png[offset + top:offset + top + h, left:left + w]
    np.testing.assert_array_equal(tile, np.repeat(np.repeat(decoded[i], s, 0), s, 1))
    frame = png[offset + top - 1, left + w // 2]
    assert frame == (viz.MARK[1][0] if i % 5 in (0, 4) else viz.WHITE), (i, frame)
  with pytest.raises(UserError, match='--steps=1 must be at least 2'):
    sample.run(vae_workdir, mode='interpolate', steps=1)
  with pytest.raises(UserError, match='--scale=17'):
    sample.run(vae_workdir, scale=17)


def test_png_bytes_are_deterministic(vae_workdir, tmp_path):
  run = functools.partial(sample.run, vae_workdir, num=16, echo=lambda _: None)
  for mode in ('samples', 'denoise'):
    a, b, c = (str(tmp_path / f'{mode}_{i}.png') for i in range(3))
    run(mode=mode, seed=3, out=a)
    run(mode=mode, seed=3, out=b)
    run(mode=mode, seed=4, out=c)
    assert open(a, 'rb').read() == open(b, 'rb').read()
    assert open(a, 'rb').read() != open(c, 'rb').read()


def test_restore_written_on_other_device_count(tmp_path, vae_workdir):
  """A checkpoint written by a process on 4 (or 1) forced CPU devices restores here."""
  other = 4 if jax.device_count() == 1 else 1
  workdir = str(tmp_path / 'other')
  script = textwrap.dedent(f"""
      import functools, json, os, shutil, numpy as np, jax, ml_collections
      from vaegan_jax import api, checkpoint, families, sharding
      assert jax.device_count() == {other}, jax.device_count()
      os.makedirs({workdir!r})
      shutil.copy({os.path.join(vae_workdir, 'config.json')!r}, {workdir!r})
      config = ml_collections.ConfigDict(json.load(open({workdir + '/config.json'!r})))
      family = families.get('vae')
      init = functools.partial(family.init_state, config)
      abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
      mesh = sharding.make_mesh()
      state = jax.jit(init, out_shardings=sharding.state_sharding(mesh, abstract))(
          jax.random.PRNGKey(0))
      assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == {other}
      # Not the init a fresh process would draw: the restore must bring these values.
      state = state.replace(step=state.step + 7,
                            params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.params))
      mngr = checkpoint.manager({workdir!r})
      checkpoint.save(mngr, 7, state, force=True)
      mngr.wait_until_finished()
      np.save({workdir + '/x.npy'!r}, np.asarray(api.load({workdir!r}).sample(0, 4)))
  """)
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={other}',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  model = api.load(workdir)
  assert model.step == 7
  assert len(jax.tree.leaves(model.state)[0].sharding.device_set) == jax.device_count()
  np.testing.assert_allclose(model.sample(0, 4), np.load(os.path.join(workdir, 'x.npy')),
                             atol=1e-5)
  assert not np.allclose(model.sample(0, 4), api.load(vae_workdir).sample(0, 4), atol=1e-3)


# ---------------------------------------------------------------------------
# The GAN and the VAE-GAN: the same modes where they apply.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def family_workdirs(tmp_path_factory):
  """{'gan': dir, 'vaegan': dir}: smoke configs, initial params saved at step 1
  (the modes' plumbing is under test, not the training)."""
  from vaegan_jax import checkpoint, families, run_config  # pylint: disable=g-import-not-at-top
  out = {}
  for name in ('gan', 'vaegan'):
    workdir = str(tmp_path_factory.mktemp(name))
    config = load_config(name, 'smoke')
    run_config.check_and_save(config, workdir)
    state = jax.jit(functools.partial(families.get(name).init_state, config))(
        jax.random.PRNGKey(config.seed))
    mngr = checkpoint.manager(workdir)
    checkpoint.save(mngr, 1, state, force=True)
    mngr.wait_until_finished()
    mngr.close()
    out[name] = workdir
  return out


def test_gan_modes(family_workdirs, data_dir, tmp_path):
  workdir = family_workdirs['gan']
  model = api.load(workdir)
  assert not model.has_encoder
  x = model.sample(0, 3)
  assert x.shape == (3, H, W, C) and float(x.min()) >= 0 and float(x.max()) <= 1
  with pytest.raises(UserError, match='no encoder'):
    model.encode(x)
  run = functools.partial(sample.run, workdir, num=4, data_dir=data_dir, echo=lambda _: None)
  for mode in ('samples', 'interpolate'):
    assert os.path.exists(run(mode=mode, out=str(tmp_path / f'{mode}.png'))['out'])
  result = run(mode='inpaint', inpaint_steps=5, restarts=2, out=str(tmp_path / 'i.png'))
  assert result['inpaint_method'] == 'latent' and np.isfinite(result['psnr_completed'])
  assert _png(result['out']).shape[1] >= viz.MIN_WIDTH
  assert result['titles'] == ['clean', 'masked (center)', 'completed (latent)']
  for mode in ('reconstruct', 'denoise'):
    with pytest.raises(UserError, match=f'--mode={mode} needs an encoder'):
      run(mode=mode)
  with pytest.raises(UserError, match='use --inpaint_method=latent'):
    run(mode='inpaint', inpaint_method='posterior')


def test_vaegan_modes(family_workdirs, data_dir, tmp_path):
  workdir = family_workdirs['vaegan']
  model = api.load(workdir)
  assert model.has_encoder
  x = model.sample(0, 3)
  assert x.shape == (3, H, W, C) and float(x.min()) >= 0 and float(x.max()) <= 1
  mean, _ = model.encode(x)
  assert mean.shape == (3, model.latent_dim)
  r = model.reconstruct(x)
  assert r.shape == x.shape and float(r.min()) >= 0 and float(r.max()) <= 1
  for mode, extra in [('samples', {}), ('interpolate', {}), ('reconstruct', {}),
                      ('denoise', {}), ('inpaint', {'inpaint_steps': 5})]:
    result = sample.run(workdir, mode=mode, num=4, data_dir=data_dir,
                        out=str(tmp_path / f'{mode}.png'), echo=lambda _: None, **extra)
    assert _png(result['out']).shape[1] >= viz.MIN_WIDTH
    assert len(result['titles']) == {'reconstruct': 2, 'denoise': 3, 'inpaint': 3}.get(mode, 1)


# ---------------------------------------------------------------------------
# The CLI's errors: one line, exit status 2 (bad flags) or 1 (failed run).
# ---------------------------------------------------------------------------


def _assert_one_error(proc, pattern, code=1):
  """One `error:` line; exit 2 for bad usage (flags), 1 for a failed run."""
  assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]
  assert pattern in lines[0], lines[0]


def test_cli_errors(vae_workdir, tmp_path):
  _assert_one_error(_cli(f'--workdir={vae_workdir}', '--mode=dream'), "Unknown --mode='dream'",
                    code=2)
  _assert_one_error(_cli(f'--workdir={vae_workdir}', '--step=7'),
                    'available steps: 10, 20')
  _assert_one_error(_cli(f'--workdir={tmp_path}'), 'No config.json', code=2)  # usage: not a run


def test_cli_reconstruct_on_a_gan(family_workdirs):
  _assert_one_error(_cli(f'--workdir={family_workdirs["gan"]}', '--mode=reconstruct'),
                    '--mode=reconstruct needs an encoder and the gan family has none')


def test_cli_writes_png(vae_workdir, tmp_path):
  out = str(tmp_path / 'interpolate.png')
  proc = _cli(f'--workdir={vae_workdir}', '--mode=interpolate', '--num=3', '--steps=4',
              f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '3 paths of 4 steps' in proc.stdout and os.path.exists(out)
  assert _png(out).shape[1] == 3 * (4 * 30 + 2)  # Auto scale 3: at least 256 px.
  assert 'Traceback' not in proc.stderr and 'orbax' not in proc.stderr, proc.stderr[-2000:]
