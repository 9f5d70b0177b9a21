"""Runs the trainer and SIGKILLs (or signals) itself at a chosen point (for
resume tests).

  python tests/kill_run.py POINT STEP [PROCESS] -- <vaegan_jax.main flags>

POINT: 'step' (killed when the input pipeline hands out batch STEP, before any
later save), 'after_save' (right after the save of step STEP has finished),
'during_save' (right after the asynchronous save of STEP has started), or
'worker_fault' (not killed: the input pipeline's worker raises when it makes
batch STEP, and prints `fault injected at <time.time()>` first).

Or it sends itself a signal, in process PROCESS only where given (a
multi-process run): 'sigint' / 'sigterm' when the input pipeline hands out
batch STEP; 'sigint_eval' / 'sigterm_eval' after the first batch of the
evaluation of step STEP; 'sigint_twice' a Ctrl-C at batch STEP and a second
one when the save of STEP that the first one asked for has started.
"""

import os
import signal
import sys


def die():
  os.kill(os.getpid(), signal.SIGKILL)


def main():
  point, step = sys.argv[1], int(sys.argv[2])
  process = int(sys.argv[3]) if sys.argv[3] != '--' else None
  sys.argv = [sys.argv[0]] + sys.argv[sys.argv.index('--') + 1:]
  from vaegan_jax import checkpoint, input_pipeline, main as main_lib  # pylint: disable=g-import-not-at-top
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top

  def send(sig):
    import jax  # pylint: disable=g-import-not-at-top
    if process is None or jax.process_index() == process:
      print(f'sending {sig.name} at step {step}', flush=True)
      os.kill(os.getpid(), sig)

  if point.startswith('sig'):
    from vaegan_jax import train  # pylint: disable=g-import-not-at-top
    sig = signal.SIGINT if point.startswith('sigint') else signal.SIGTERM
    if point.endswith('_eval'):
      original_evaluate = train.evaluate
      original_batches = input_pipeline.eval_batches

      def evaluate(config, family, eval_fn, state, *args, **kwargs):
        import jax  # pylint: disable=g-import-not-at-top
        if int(jax.device_get(state.step)) == step:
          def batches(*a, **k):
            for i, b in enumerate(original_batches(*a, **k)):
              yield b
              if i == 0:
                send(sig)
          input_pipeline.eval_batches = batches
        try:
          return original_evaluate(config, family, eval_fn, state, *args, **kwargs)
        finally:
          input_pipeline.eval_batches = original_batches
      train.evaluate = evaluate
    else:
      original_next = input_pipeline.TrainIterator.__next__

      sent = []

      def next_and_signal(self):
        if self.step == step and not sent:  # Once (vmapped seeds: one iterator each).
          sent.append(True)
          send(sig)
        return original_next(self)
      input_pipeline.TrainIterator.__next__ = next_and_signal
      if point == 'sigint_twice':
        original_save = checkpoint.save

        def save_and_signal(mngr, s, state, force=False):
          started = original_save(mngr, s, state, force=force)
          if s == step:
            send(sig)
          return started
        checkpoint.save = save_and_signal
  elif point == 'worker_fault':
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
