"""Runs the trainer and SIGKILLs itself at a chosen point (for resume tests).

  python tests/kill_run.py POINT STEP -- <vaegan_jax.main flags>

POINT: 'step' (killed when the input pipeline hands out batch STEP, before any
later save), 'after_save' (right after the save of step STEP has finished),
'during_save' (right after the asynchronous save of STEP has started), or
'worker_fault' (not killed: the input pipeline's worker raises when it makes
batch STEP, and prints `fault injected at <time.time()>` first).
"""

import os
import signal
import sys


def die():
  os.kill(os.getpid(), signal.SIGKILL)


def main():
  point, step = sys.argv[1], int(sys.argv[2])
  sys.argv = [sys.argv[0]] + sys.argv[sys.argv.index('--') + 1:]
  from vaegan_jax import checkpoint, input_pipeline, main as main_lib  # pylint: disable=g-import-not-at-top
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top

  if point == 'worker_fault':
    import time  # pylint: disable=g-import-not-at-top

    def faulty(self, s):
      if s == step:
        print(f'fault injected at {time.time()}', flush=True)
        raise RuntimeError(f'injected fault at batch {s}')
      return original_host_batch(self, s)
    original_host_batch = input_pipeline.TrainIterator.host_batch
    input_pipeline.TrainIterator.host_batch = faulty
  elif point == 'step':
    original_next = input_pipeline.TrainIterator.__next__

    def next_or_die(self):
      if self.step == step:
        die()
      return original_next(self)
    input_pipeline.TrainIterator.__next__ = next_or_die
  else:
    original_save = checkpoint.save

    def save_then_die(mngr, s, state, force=False):
      started = original_save(mngr, s, state, force=force)
      if s == step:
        if point == 'after_save':
          mngr.wait_until_finished()
        die()
      return started
    checkpoint.save = save_then_die
  cli.run(main_lib.main)


if __name__ == '__main__':
  main()
