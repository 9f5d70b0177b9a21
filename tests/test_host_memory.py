"""vaegan_jax/host_memory: freed memory is reused, not faulted in again."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

# A worker thread allocates, touches and frees 64 MB twice (as XLA:CPU's
# temporaries are, every step); prints the minor page faults of the second round.
SCRIPT = '''
import ctypes, resource, sys, threading
import numpy as np
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KB pages.
if {keep}:
  from vaegan_jax import host_memory
  assert host_memory.keep_freed_memory()
faults = []
def rounds():
  for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(16 * 2**20, np.float32)
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start(); t.join()
print(faults[1])
'''


def second_round_faults(keep):
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}  # glibc's defaults.
  out = subprocess.run([sys.executable, '-c', SCRIPT.format(root=ROOT, keep=keep)],
                       capture_output=True, text=True, timeout=120, check=True, env=env)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_freed_memory_is_reused_without_page_faults():
  # 64 MB is 16 384 pages: glibc's default unmaps and faults them in again.
  assert second_round_faults(False) > 8000
  assert second_round_faults(True) < 1000


# vaegan_jax.main with train.train_and_evaluate replaced: does it set the policy?
MAIN_SCRIPT = '''
import sys
from vaegan_jax import cli, host_memory, main, train
host_memory.keep_freed_memory = lambda: print('keep', flush=True) or True
train.train_and_evaluate = lambda config, workdir: print('train', flush=True)
sys.argv = ['main', '--config=configs/vae.py:smoke', '--workdir=' + {workdir!r}] + {extra!r}
cli.run(main.main)
'''


@pytest.mark.parametrize('extra, expected', [
    ([], 'keep,train'),
    (['--config.train.keep_host_memory=False'], 'train'),
])
def test_main_sets_the_policy_unless_turned_off(tmp_path, extra, expected):
  script = MAIN_SCRIPT.format(root=ROOT, workdir=str(tmp_path / 'w'), extra=extra)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, check=True)
  assert ','.join(out.stdout.split()) == expected
