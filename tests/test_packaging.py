"""pyproject.toml: `pip install .` gives the package, its data and the commands."""

import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT

COMMANDS = ('vaegan-train', 'vaegan-sample', 'vaegan-evaluate', 'vaegan-plot', 'vaegan-fid')


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """A non-editable `pip install --no-deps .` into a temporary target."""
  target = str(tmp_path_factory.mktemp('site'))
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-compile',
       '--disable-pip-version-check', '--target', target, ROOT],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return target


def run_installed(target, cwd, *args):
  """A console script of the install (or `python -c` with args[0] '-c'), run
  from `cwd` with only the install (and this interpreter's dependencies)."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=target, JAX_PLATFORMS='cpu')
  script = args[0] if args[0] == '-c' else os.path.join(target, 'bin', args[0])
  return subprocess.run([sys.executable, script, *args[1:]],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_install_holds_the_package_data_and_the_commands(installed):
  package = os.path.join(installed, 'vaegan_jax')
  assert os.path.isfile(os.path.join(package, 'kernels', 'onednn_conv.cc'))
  assert glob.glob(os.path.join(package, 'metrics', 'weights', '*.msgpack'))
  assert not os.path.exists(os.path.join(installed, 'configs'))  # Not a package.
  for command in COMMANDS:
    assert os.path.isfile(os.path.join(installed, 'bin', command)), command


def test_the_install_is_what_runs(installed, tmp_path):
  proc = run_installed(installed, tmp_path, '-c', 'import vaegan_jax; print(vaegan_jax.__file__)')
  assert proc.stdout.strip() == os.path.join(installed, 'vaegan_jax', '__init__.py')


def test_commands_run_from_another_directory(installed, tmp_path):
  """After a non-editable install, from a directory that is not the checkout:
  --help works, and --config= points into the checkout's configs/ (the file,
  its shared keys and a config that reads another one load; the bad value is
  reported before anything starts)."""
  proc = run_installed(installed, tmp_path, 'vaegan-train', '--help')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'vaegan-sample' in proc.stdout
  config = os.path.join(ROOT, 'configs', 'bench', 'dcgan28.py')
  proc = run_installed(installed, tmp_path, 'vaegan-train', f'--config={config}',
                       f'--workdir={tmp_path}/run', '--config.train.num_steps=-1')
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ') and 'num_steps' in lines[-1], proc.stderr[-2000:]
  proc = run_installed(installed, tmp_path, 'vaegan-evaluate', f'--workdir={tmp_path}/none')
  assert proc.returncode == 2 and 'does not exist' in proc.stderr, proc.stderr[-2000:]


def _import_graph():
  """{module: modules of vaegan_jax it imports (anywhere in the file)}."""
  import ast  # pylint: disable=g-import-not-at-top
  package = os.path.join(ROOT, 'vaegan_jax')
  files = {}
  for folder, _, names in os.walk(package):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        files[module.removesuffix('.__init__')] = path
  graph = {}
  for module, path in files.items():
    edges = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('vaegan_jax'):
        for alias in node.names:
          full = f'{node.module}.{alias.name}'
          edges.add(full if full in files else node.module)
      elif isinstance(node, ast.Import):
        edges.update(a.name for a in node.names if a.name.startswith('vaegan_jax'))
    graph[module] = edges & set(files)
  return graph


def test_no_import_circle():
  """No module of vaegan_jax imports, even lazily, one that imports it back
  (a rule book gathered from its owners, kernels below the models, ...)."""
  graph = _import_graph()
  assert 'vaegan_jax.validation' not in set().union(*(
      graph[m] for m in graph if m.startswith('vaegan_jax.families')))
  assert not any(m.startswith('vaegan_jax.models') for m in graph['vaegan_jax.kernels.conv_cpu'])
  state, cycles = {}, []

  def visit(module, path):
    state[module] = 'open'
    for other in sorted(graph[module]):
      if state.get(other) == 'open':
        cycles.append(path[path.index(other):] + [other])
      elif other not in state:
        visit(other, path + [other])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, cycles
