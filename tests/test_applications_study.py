"""The applications benchmark in evaluate (--applications) and in the study's
report (experiments/report.py "Applications")."""

import numpy as np
from PIL import Image
import pytest

from conftest import load_config

from vaegan_jax.applications import benchmark

TINY = benchmark.Settings(num_images=4, inpaint_steps=2, restarts=1, posterior_iters=2,
                          ppl_samples=8)


def _results():
  """A study's results with applications: two seeds of a VAE and a GAN."""
  keys = benchmark.metric_keys()
  def run(family, seed):
    metrics = {k: 10.0 + seed + (1.0 if family == 'vae' else 0.0) for k in keys}
    metrics['ppl/inception'] = metrics['ppl/inception_std'] = None
    if family == 'gan':
      for k in keys:
        if k.startswith(('denoise/', 'reconstruct/')):
          metrics[k] = None
    out = {f'app/{k}': v for k, v in metrics.items()}
    out['app_inpaint_methods'] = {'center_0.25': 'latent', 'blocks_0.15': 'posterior'}
    return out
  baselines = {name: dict.fromkeys(keys) for name in ('damaged', 'median', 'biharmonic')}
  for k in keys:
    if k.startswith('denoise/'):
      baselines['damaged'][k], baselines['median'][k] = 5.0, 20.0  # The median wins denoising.
    elif k.startswith('inpaint/'):
      baselines['damaged'][k], baselines['biharmonic'][k] = 5.0, 7.0
  return {'families': {f: {'runs': {str(s): run(f, s) for s in range(2)}} for f in ('vae', 'gan')},
          'applications': {'settings': benchmark.Settings().to_dict(), 'baselines': baselines}}


def test_report_has_the_applications_tables(tmp_path):
  import report  # pylint: disable=g-import-not-at-top
  lines = report.applications_section(_results(), str(tmp_path))
  text = '\n'.join(lines)
  assert lines[0] == '## Applications'
  for title, *_ in report.APPLICATION_TABLES:
    assert f'### {title}' in text
  table = text.split('### Denoising: PSNR')[1].split('###')[0]
  rows = {line.split('|')[1].strip(): line.split('|')[2:-1] for line in table.splitlines()
          if line.startswith('| ') and not line.startswith('| method')}
  # Families: mean ± std over seeds; the GAN cannot denoise: n/a, not a number.
  assert rows['vae'][0].strip() == '11.50 ± 0.71'
  assert all(c.strip() == 'n/a' for c in rows['gan'])
  # Baselines as rows, one value; the best mean in bold (here the median filter).
  assert rows['median filter 3x3'][0].strip() == '**20.00**'
  assert rows['damaged input (unrestored)'][0].strip() == '5.00'
  assert 'biharmonic inpainting' not in rows  # Does not denoise: no row.
  hole = text.split('### Inpainting: PSNR (dB) on the hole')[1].split('###')[0]
  assert '**11.50 ± 0.71**' in hole and '| biharmonic inpainting | 7.00 |' in hole
  fid = text.split('### Inpainting: FID')[1].split('###')[0]
  assert '| damaged input (unrestored) | **5.00** |' in fid  # Lower is better for FID.
  # The summary answers by how much the best family beats the classical methods.
  assert '**vae** 11.50 dB, 8.50 dB below the median filter 3x3' in text
  assert '**vae** 11.50 dB, 4.50 dB above the biharmonic inpainting' in text
  names = [line.split('|')[1].strip() for line in table.splitlines() if line.startswith('| ')]
  assert names == ['method', 'vae', 'gan', 'damaged input (unrestored)', 'median filter 3x3']
  assert 'PPL, Inception' not in text  # No Inception weights: no column.
  assert report.applications_section({'families': {'vae': {'runs': {'0': {}}}}}, '') == []


def test_applications_figure_is_drawn_with_blanks_for_na(tmp_path):
  import report  # pylint: disable=g-import-not-at-top
  img = np.full((28, 28, 1), 200, np.uint8)
  grid = {'images': [[img, img, img, None], [img, img, None, img]],
          'row_titles': ['gaussian 0.25', 'center 0.5'],
          'col_titles': ['clean', 'damaged', 'gan', 'biharmonic inpainting']}
  path = str(tmp_path / 'applications.png')
  report.applications_figure(grid, path)
  png = np.asarray(Image.open(path))
  assert png.shape[1] >= 4 * 28 * 3  # Four columns, enlarged 3x.


def test_evaluate_applications_on_a_trained_checkpoint(tmp_path, data_dir):
  from vaegan_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  config = load_config('gan', 'smoke')
  config.data.data_dir = data_dir
  config.train.num_steps = 2
  config.train.checkpoint_every_steps = 2
  config.eval.generative_metrics = False
  workdir = str(tmp_path / 'gan')
  train.train_and_evaluate(config, workdir)
  result = evaluate.run(workdir, num_samples=10, iwae_k=0, echo=lambda m: None,
                        applications=True, applications_settings=TINY)
  apps = result['applications']
  assert list(apps['metrics']) == benchmark.metric_keys(TINY)
  assert apps['metrics']['denoise/gaussian_0.1/psnr'] is None  # No encoder.
  assert apps['metrics']['inpaint/center_0.5/psnr_hole'] > 0
  assert set(apps['baselines']) == {'damaged', 'median', 'gaussian', 'nl_means', 'biharmonic'}
  assert apps['settings']['num_images'] == 4
