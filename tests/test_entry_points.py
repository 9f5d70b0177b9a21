"""What a new user meets first: --help, config variants, wrong workdirs."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, user_env
from vaegan_jax import config_files


def run(module, *args):
  return subprocess.run([sys.executable, '-m', f'vaegan_jax.{module}', *args], cwd=ROOT,
                        env=user_env(), capture_output=True, text=True, timeout=300)


def last_line(proc):
  return proc.stderr.strip().splitlines()[-1]


def config_module(name):
  return config_files.load_module(os.path.join(ROOT, 'configs', f'{name}.py'))


def test_main_help_exits_0_and_names_the_commands_and_every_variant():
  proc = run('main', '--help')
  assert proc.returncode == 0, proc.stderr[-2000:]
  for command in ('vaegan-sample', 'vaegan-evaluate', 'vaegan-plot', 'vaegan-train', 'vaegan-fid'):
    assert command in proc.stdout, command
  lines = proc.stdout.splitlines()
  for name in ('vae', 'gan', 'vaegan'):
    start = next(i for i, l in enumerate(lines) if l.startswith(f'  configs/{name}.py '))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith('    '))
    listed = ' '.join(lines[start:end]).split()
    for variant in config_module(name).VARIANTS:
      assert f':{variant}' in listed, (name, variant)


def test_an_unknown_variant_lists_the_valid_ones():
  proc = run('main', '--config=configs/gan.py:smok', '--workdir=/tmp/unused')
  assert proc.returncode == 2
  line = last_line(proc)
  assert line.startswith('error: ') and line.endswith('.'), line
  assert 'valid variants: smoke, conditional, conditional_smoke' in line, line


@pytest.mark.parametrize('name', ['vae', 'gan', 'vaegan'])
def test_conditional_smoke_is_the_smoke_run_made_conditional(name):
  module = config_module(name)
  smoke, cond = module.get_config('smoke'), module.get_config('conditional_smoke')
  assert cond.model.conditional and 'conditional' not in smoke.model
  del cond.model['conditional']
  assert cond.to_dict() == smoke.to_dict()


def test_a_key_of_another_variant_names_that_variant():
  proc = run('main', '--config=configs/vae.py:smoke', '--config.model.conditional=True',
             '--workdir=/tmp/unused')
  assert proc.returncode == 2
  line = last_line(proc)
  assert 'configs/vae.py:conditional_smoke' in line and line.endswith('.'), line


@pytest.mark.parametrize('module', ['sample', 'evaluate'])
def test_an_empty_directory_as_workdir_is_a_usage_error(module, tmp_path):
  proc = run(module, f'--workdir={tmp_path}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = last_line(proc)
  assert line.startswith('error: No config.json in ') and line.endswith('.'), line
