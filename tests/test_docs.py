"""The README and docs/: every config key documented, only flags that exist,
the quick start's two commands, the README's size, and the site builds."""

import importlib
import os
import re
import shutil
import subprocess
import sys

from conftest import ROOT

PAGES = ('configs', 'datasets', 'evaluation', 'study', 'reproducing', 'speed', 'scale',
         'reliability')


def read(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return f.read()


README = read('README.md')
DOCS = {name: read(f'docs/{name}.md') for name in PAGES}


def flatten(d, prefix=''):
  out = []
  for k, v in d.items():
    out += flatten(v, f'{prefix}{k}.') if hasattr(v, 'items') else [prefix + k]
  return out


def test_every_config_key_is_in_the_config_reference():
  missing = []
  for name in ('vae', 'gan', 'vaegan'):
    for key in flatten(importlib.import_module(name).get_config().to_dict()):
      if f'`{key}`' not in DOCS['configs']:
        missing.append(f'{name}:{key}')
  assert not missing, missing


def test_quick_start_opens_the_readme_with_two_commands():
  blocks = re.findall(r'```bash\n(.*?)\n```', README, re.S)
  assert 'python -m vaegan_jax.main --config=configs/vae.py' in blocks[0]
  assert 'python -m pytest tests -q' in blocks[1]
  ci = read('.ci/run')
  install, test = blocks[1].split('&& ')[-2:]
  assert test in ci  # CI runs exactly the README's test command ...
  assert install.replace('pip install', 'python -m pip install -q').strip() in ci  # ... after its install.


def test_the_readme_is_a_front_page():
  assert len(README.encode('utf-8')) <= 15 * 1024
  for name in PAGES:
    assert f'(docs/{name}.md)' in README, name
  for section in ('## Code layout', '## How it compares', '## A five-minute tour'):
    assert section in README
  for picture in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', README):
    assert os.path.isfile(os.path.join(ROOT, picture)), picture


def test_every_documented_flag_exists():
  modules = {'vaegan_jax.main': [], 'vaegan_jax.sample': [], 'vaegan_jax.evaluate': [],
             'vaegan_jax.plot': []}
  for text in (README, *DOCS.values()):
    for line in text.splitlines():
      for module in modules:
        if f'python -m {module} ' in line:
          modules[module] += re.findall(r'(?<![\w.])--(\w+)', line.split(module, 1)[1])
  for module, names in modules.items():
    helpfull = subprocess.run([sys.executable, '-m', module, '--helpfull'], cwd=ROOT,
                              capture_output=True, text=True, timeout=120).stdout
    for name in set(names):
      assert f'--{name}' in helpfull or f'--[no]{name}' in helpfull, f'{module} has no flag --{name}'


def test_the_site_builds_strict(tmp_path):
  """`mkdocs build --strict`: every page in the nav, no broken link."""
  site = tmp_path / 'site'
  proc = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-q',
                         '--site-dir', str(site)], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, NO_MKDOCS_2_WARNING='1'),
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for name in PAGES:
    assert (site / name / 'index.html').is_file(), name
  shutil.rmtree(site)
