"""The standalone `python -m vaegan_jax.fid A B` command and the protocol fields.

The feature space here is the project's shipped mnist5k feature net (fast on
CPU) and, for reading folders of any size and mode, a tiny stub backbone;
the Inception and DINOv2 ports have their own golden tests."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config
from vaegan_jax import evaluate
from vaegan_jax import fid
from vaegan_jax import input_pipeline
from vaegan_jax import train
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import backbones
from vaegan_jax.metrics import generative

PROTOCOL = {'backbone', 'weights_sha256', 'resize', 'num_samples', 'reference',
            'num_reference'}
DIST = ('fid', 'kid', 'kid_std', 'precision', 'recall', 'density', 'coverage')


@pytest.fixture(scope='module')
def vae_workdir(tmp_path_factory, data_dir):
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.train.num_steps = 2
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 2
  config.train.sample_every_steps = 2
  config.eval.generative_metrics = False
  workdir = str(tmp_path_factory.mktemp('fid_run'))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def test_split(data_dir):
  return input_pipeline.load_split('mnist5k', 'test', data_dir)[0]


def _write_pngs(folder, images, nested=True):
  for i, x in enumerate(images):
    sub = os.path.join(folder, f'part{i % 3}') if nested else folder
    os.makedirs(sub, exist_ok=True)
    Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(
        os.path.join(sub, f'{i:05d}.png'))


def _npz(tmp_path, name, images):
  path = str(tmp_path / name)
  np.savez(path, images=images)
  return path


def _quiet(m):
  del m


def test_fid_of_a_workdir_and_a_folder_equals_evaluate(vae_workdir, test_split, tmp_path):
  """The same samples (evaluate's draws) against the test split written as PNGs
  in nested folders: fid's numbers are evaluate's."""
  ref = str(tmp_path / 'test_pngs')
  _write_pngs(ref, test_split, nested=False)  # File order = split order (KID subsets).
  ev = evaluate.run(vae_workdir, num_samples=64, iwae_k=0, echo=_quiet)
  out = str(tmp_path / 'fid.json')
  got = fid.run(vae_workdir, ref, features='own:mnist5k', num=64, out=out, echo=_quiet)
  for key in DIST:
    assert got[key] == pytest.approx(ev[key], rel=1e-5, abs=1e-6), key
  assert (got['a']['count'], got['b']['count']) == (64, len(test_split))
  assert got['a']['kind'] == 'workdir' and got['b']['kind'] == 'folder'
  with open(out) as f:
    assert json.load(f) == json.loads(json.dumps(got))
  # The protocol, in both JSONs and in the line to paste.
  for result, ref_label in ((got, 'test_pngs'), (ev, 'mnist5k test')):
    (proto,) = result['protocol'].values()
    assert PROTOCOL <= set(proto)
    assert (proto['backbone'], proto['resize'], proto['num_samples'], proto['reference'],
            proto['num_reference']) == ('own:mnist5k', 'none', 64, ref_label, len(test_split))
    assert proto['weights_sha256'] == ev['feature_net_sha256'] and len(proto['weights_sha256']) == 64
  assert got['line'] == (f'FID-64 (own mnist5k feature net, no resize, {os.path.basename(vae_workdir)} '
                         f'vs test_pngs {len(test_split)}) = {got["fid"]:.4g}')
  assert ev['lines'] == [f'FID-64 (own mnist5k feature net, no resize, vs mnist5k test '
                         f'{len(test_split)}) = {ev["fid"]:.4g}']


def test_two_folders_npz_and_saved_stats_agree(test_split, tmp_path):
  """Folders (nested) and .npz files of the same images give the same numbers
  as the distances on the features directly; statistics saved then loaded
  give them again, in place of either side."""
  a_img, b_img = test_split[:300], test_split[300:700]
  a_dir, b_dir = str(tmp_path / 'a'), str(tmp_path / 'b')
  _write_pngs(a_dir, a_img)
  _write_pngs(b_dir, b_img, nested=False)
  folders = fid.run(a_dir, b_dir, features='own:mnist5k', echo=_quiet)
  arrays = fid.run(_npz(tmp_path, 'a.npz', a_img), _npz(tmp_path, 'b.npz', b_img),
                   features='own:mnist5k', echo=_quiet)
  bb = backbones.get('own:mnist5k')
  nested_order = sorted(range(len(a_img)), key=lambda i: (i % 3, i))  # part0/, part1/, ...
  direct = generative.distribution_metrics(bb.features(b_img)['features'],
                                           bb.features(a_img[nested_order])['features'])
  for key in DIST:
    assert folders[key] == pytest.approx(direct[key], rel=1e-5, abs=1e-7), key
  assert arrays['fid'] == pytest.approx(direct['fid'], rel=1e-5)  # KID's subsets follow
  direct = generative.distribution_metrics(bb.features(b_img)['features'],  # the order.
                                           bb.features(a_img)['features'])
  for key in DIST:
    assert arrays[key] == pytest.approx(direct[key], rel=1e-5, abs=1e-7), key
  stats_a, stats_b = str(tmp_path / 'sa.npz'), str(tmp_path / 'sb.npz')
  fid.run(a_dir, '-', features='own:mnist5k', save_stats=stats_a, echo=_quiet)
  fid.run(b_dir, a_dir, features='own:mnist5k', save_stats=stats_b, echo=_quiet)
  for x, y in ((stats_a, b_dir), (a_dir, stats_b), (stats_a, stats_b)):
    again = fid.run(x, y, features='own:mnist5k', echo=_quiet)
    assert again['fid'] == pytest.approx(folders['fid'], rel=1e-9)
    assert again['kid'] == pytest.approx(folders['kid'], rel=1e-9)
  assert again['a']['kind'] == 'stats' and again['a']['source'] == os.path.abspath(a_dir)
  with np.load(stats_a) as data:
    assert data['features'].shape == (300, bb.features(a_img[:2])['features'].shape[1])
    assert str(data['backbone']) == 'own:mnist5k' and int(data['count']) == 300
  # Statistics of another feature space are refused in one line.
  other = dict(np.load(stats_a))
  other['weights_sha256'] = np.array('f' * 64)
  np.savez(tmp_path / 'other.npz', **other)
  with pytest.raises(UserError, match='computed with weights_sha256'):
    fid.run(str(tmp_path / 'other.npz'), b_dir, features='own:mnist5k', echo=_quiet)


def _stub_backbone(name='inception'):
  """Per-image channel means and spatial size as 'features': cheap, and it
  shows which pixels and which shape each image arrived with."""
  seen = []

  def featurize(images, mesh):
    del mesh
    seen.append(images.shape)
    x = np.asarray(images, np.float32)
    f = np.concatenate([x.mean((1, 2)), np.full((len(x), 2), x.shape[1:3], np.float32)], 1)
    return {'features': f}

  return backbones.Backbone(name, 'Stub', '_stub', 'pytorch_fid', 'ab' * 32, featurize), seen


def test_folders_of_any_size_and_mode_in_order(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'mixed'
  (folder / 'z' / 'deep').mkdir(parents=True)
  images = {  # path -> (image, mode)
      'a.png': rng.integers(0, 256, (20, 30), np.uint8),        # grey
      'b.jpg': rng.integers(0, 256, (40, 40, 3), np.uint8),     # colour, other size
      'z/deep/c.png': rng.integers(0, 256, (20, 30, 4), np.uint8),  # RGBA
      'z/d.bmp': rng.integers(0, 256, (20, 30, 3), np.uint8),
  }
  for rel, x in images.items():
    Image.fromarray(x).save(folder / rel, quality=100) if rel.endswith('.jpg') else \
        Image.fromarray(x).save(folder / rel)
  (folder / 'notes.txt').write_text('not an image')
  assert [os.path.relpath(p, folder) for p in fid.image_files(str(folder))] == [
      'a.png', 'b.jpg', 'z/d.bmp', 'z/deep/c.png']
  bb, seen = _stub_backbone()
  feats, count, _ = fid.folder_features(bb, str(folder), 0, None)
  assert count == 4 and sorted(seen) == [(1, 40, 40, 3), (3, 20, 30, 3)]  # One call per size.
  grey = images['a.png'].astype(np.float32).mean()
  np.testing.assert_allclose(feats['features'][0], [grey, grey, grey, 20, 30], rtol=1e-5)
  np.testing.assert_allclose(feats['features'][1][3:], [40, 40])  # Order kept.
  np.testing.assert_allclose(feats['features'][2][:3],
                             images['z/d.bmp'].reshape(-1, 3).mean(0), rtol=1e-5)
  np.testing.assert_allclose(feats['features'][3][:3],  # Alpha dropped.
                             images['z/deep/c.png'][..., :3].reshape(-1, 3).mean(0), rtol=1e-5)
  feats2, count2, _ = fid.folder_features(bb, str(folder), 2, None)
  assert count2 == 2 and np.array_equal(feats2['features'], feats['features'][:2])


def test_bad_inputs_are_named_in_one_line(tmp_path, monkeypatch):
  folder = tmp_path / 'imgs'
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / 'ok.png')
  (folder / 'broken.png').write_bytes(b'\x89PNG not really')
  (folder / 'empty.jpg').write_bytes(b'')
  bb, _ = _stub_backbone()
  with pytest.raises(UserError) as e:
    fid.folder_features(bb, str(folder), 0, None)
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith('2 file(s) in ') and 'broken.png' in msg
  assert 'empty.jpg' in msg
  with pytest.raises(UserError, match='holds no image files'):
    fid.folder_features(bb, str(tmp_path / 'imgs' / '..' / 'imgs' / '..'), 0, None) \
        if False else fid.folder_features(bb, str(_empty(tmp_path)), 0, None)
  with pytest.raises(UserError, match='does not exist'):
    fid.kind_of(str(tmp_path / 'missing'))
  with pytest.raises(UserError, match='must lie in \\[0, 1\\]'):
    fid.npz_images(_npz(tmp_path, 'f.npz', np.full((2, 4, 4), 3.0, np.float32)))
  # The CLI: usage and unreadable inputs are one `error:` line.
  for args, code, text in (
      ([str(folder)], 2, 'usage: python -m vaegan_jax.fid A B'),
      ([str(folder), str(folder), '--features=own:mnist5k'], 1, 'broken.png'),
      ([str(folder), str(folder), '--features=vgg'], 2, 'must be inception, dinov2 or own'),
      ([str(folder), str(folder), '--features=own:mnist5k', '--resize=clean'], 2,
       'does not apply')):
    proc = subprocess.run([sys.executable, '-m', 'vaegan_jax.fid', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == code and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith('error: ') and text in lines[0], lines


def _empty(tmp_path):
  path = tmp_path / 'empty_dir'
  path.mkdir()
  return path


def test_protocol_line_and_key_names():
  bb, _ = _stub_backbone()
  proto = backbones.protocol(bb, 50000, 'cifar10 train', 50000)
  assert set(proto) == PROTOCOL
  bb.title = 'Inception'
  assert backbones.line(bb, 9.0123, proto) == (
      'FID-50k (Inception, pytorch_fid resize, vs cifar10 train 50000) = 9.012')
  dino = backbones.Backbone('dinov2', 'DINOv2 ViT-L/14', '_dinov2', 'dgm_eval', 'x', None,
                            fd_name='FD')
  assert [dino.key(k) for k in ('fid', 'kid', 'kid_std', 'precision', 'coverage')] == [
      'fd_dinov2', 'kd_dinov2', 'kd_dinov2_std', 'precision_dinov2', 'coverage_dinov2']
  assert backbones.line(dino, 100.0, {**proto, 'num_samples': 10000}).startswith(
      'FD-10k (DINOv2 ViT-L/14, dgm_eval resize, vs cifar10 train 50000)')
  assert backbones.count_label(12) == '12' and backbones.count_label(1500) == '1500'


# ---------------------------------------------------------------------------
# config.eval.features during training; the protocol in the eval rows.
# ---------------------------------------------------------------------------


def _folder_config(tmp_path, data_dir, features):
  rng = np.random.default_rng(1)
  folder = tmp_path / 'pics'
  folder.mkdir(exist_ok=True)
  for i in range(48):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(folder / f'{i:03d}.png')
  config = load_config('vae', 'smoke')
  config.data.name = f'folder:{folder}'
  config.data.image_size = 32
  config.data.data_dir = data_dir
  config.train.batch_size = 8
  config.train.num_steps = 2
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 2
  config.train.sample_every_steps = 2
  config.eval.num_samples = 8
  config.eval.train_iwae_k = 0
  config.eval.features = features
  config.eval.best_metric = ''
  return config


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_folder_dataset_training_gets_inception_numbers_with_protocol(
    tmp_path, data_dir, monkeypatch, capsys):
  # The Inception port itself is tested in test_inception; here the wiring,
  # with a cheap stand-in for its features.
  weights = tmp_path / 'w.npz'
  weights.write_bytes(b'at hand')
  monkeypatch.setenv('VAEGAN_JAX_INCEPTION', str(weights))
  stub, seen = _stub_backbone('inception')
  stub.title, stub.suffix = 'Inception', '_inception'
  monkeypatch.setattr(backbones, 'get', lambda name, *a, **k: stub if name == 'inception'
                      else pytest.fail(name))
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  config = _folder_config(tmp_path, data_dir, 'inception')
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  (row,) = [r for r in _rows(str(tmp_path / 'run')) if 'eval/fid_inception' in r]
  assert np.isfinite(row['eval/fid_inception']) and 'eval/kid_inception_std' in row
  assert row['eval/protocol_inception/backbone'] == 'inception'
  assert row['eval/protocol_inception/resize'] == 'pytorch_fid'
  assert row['eval/protocol_inception/num_samples'] == 8
  assert row['eval/protocol_inception/reference'] == f'{config.data.name} test'
  assert row['eval/protocol_inception/num_reference'] > 0
  assert row['eval/protocol_inception/weights_sha256'] == 'ab' * 32
  assert 'eval/fid' not in row  # No own feature net for a folder;
  assert 'eval/recon' in row and 'eval/elbo' in row  # reconstruction and likelihood all the same.
  assert (8, 32, 32, 3) in seen  # The samples, featurised once per eval.
  assert capsys.readouterr().out.count('note:') == 0


def test_folder_dataset_without_weights_says_which_command_once(tmp_path, data_dir,
                                                                monkeypatch, capsys):
  monkeypatch.delenv('VAEGAN_JAX_INCEPTION', raising=False)
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'empty_cache'))
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  images = np.zeros((4, 32, 32, 3), np.uint8)
  config = _folder_config(tmp_path, data_dir, 'own')
  evaluator = generative.training_evaluator(config, families.get('vae'), images, None)
  assert not evaluator.sample_metrics  # Reconstruction and likelihood all the same.
  notes = [l for l in capsys.readouterr().out.splitlines() if l.startswith('note:')]
  assert len(notes) == 1 and 'python -m vaegan_jax.metrics.weights inception' in notes[0]
  assert "config.eval.features='inception'" in notes[0]
  config = _folder_config(tmp_path, data_dir, 'inception')
  evaluator = generative.training_evaluator(config, families.get('vae'), images, None)
  assert not evaluator.sample_metrics
  notes = [l for l in capsys.readouterr().out.splitlines() if l.startswith('note:')]
  assert sum('python -m vaegan_jax.metrics.weights inception' in n for n in notes) == 1
  assert any('$VAEGAN_JAX_INCEPTION' in n for n in notes)
  assert not os.path.exists(tmp_path / 'empty_cache')  # Training never downloads.


def test_eval_features_is_validated():
  from vaegan_jax import validation  # pylint: disable=g-import-not-at-top
  config = load_config('vae', 'smoke')
  config.eval.features = 'vgg'
  with pytest.raises(UserError, match="eval.features.*'own', 'inception', 'dinov2'"):
    validation.validate(config)


def test_four_devices_give_one_devices_numbers(test_split, tmp_path):
  """The batches are split over every device: 4 forced CPU devices (a
  subprocess) give the single device's numbers."""
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1
  a = _npz(tmp_path, 'a.npz', test_split[:200])
  b = _npz(tmp_path, 'b.npz', test_split[200:450])
  one = fid.run(a, b, features='own:mnist5k', echo=_quiet)
  out = str(tmp_path / 'four.json')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  proc = subprocess.run([sys.executable, '-c', (
      'import jax, sys; assert jax.device_count() == 4; from vaegan_jax import fid; '
      f'fid.run({a!r}, {b!r}, features="own:mnist5k", out={out!r}, echo=print)')],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(out) as f:
    four = json.load(f)
  for key in DIST:
    assert four[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
