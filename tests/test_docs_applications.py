"""docs/evaluation.md "Applications benchmark" and docs/study.md "Applications"
say what the code does."""

import os
import re

from conftest import ROOT
from vaegan_jax.applications import baselines
from vaegan_jax.applications import benchmark


def _section(page, title):
  with open(os.path.join(ROOT, 'docs', page)) as f:
    text = f.read()
  assert f'## {title}\n' in text, (page, title)
  return text.split(f'## {title}\n')[1].split('\n## ')[0]


def test_evaluation_page_names_the_keys_and_settings():
  text = _section('evaluation.md', 'Applications benchmark')
  assert 'python -m vaegan_jax.evaluate --workdir=DIR --applications' in text
  keys = set(benchmark.metric_keys())
  for key in re.findall(r'`((?:denoise|inpaint|reconstruct|ppl)/[^`]*)`', text):
    prefix = key.split('<')[0].split('{')[0].rstrip('*')
    assert any(k.startswith(prefix) for k in keys), key
  settings = {benchmark.setting_name(k, l) for k, l in benchmark.NOISE + benchmark.MASKS}
  for name in re.findall(r'`((?:gaussian|salt_pepper|center|blocks)_[0-9.]+)`', text):
    assert name in settings, name
  for name in (*baselines.DENOISERS, *baselines.INPAINTERS, benchmark.DAMAGED):
    assert f'`{name}`' in text, name
  s = benchmark.Settings()
  assert f'{s.num_images} test images' in text
  assert f'{s.inpaint_steps} Adam steps from {s.restarts} starts' in text
  assert f'std {baselines.GAUSSIAN_SIGMA:g} px' in text
  assert 'eps = 1e-4' in text and f'({s.ppl_samples} pairs)' in text


def test_study_page_names_the_study_keys():
  import compare  # pylint: disable=g-import-not-at-top,unused-import
  import importlib.util  # pylint: disable=g-import-not-at-top
  text = _section('study.md', 'Applications')
  spec = importlib.util.spec_from_file_location(
      '_study_config_docs', os.path.join(ROOT, 'experiments', 'configs', 'compare.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  study = module.get_config(None)
  for key in ('applications_num_images', 'applications_inpaint_steps', 'applications_restarts',
              'applications_ppl_samples'):
    assert f'`{key}` ({study[key]})' in text, key
  assert compare.APPLICATIONS_FILE in text and compare.BASELINES_FILE in text
