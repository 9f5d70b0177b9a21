"""Training throughput of the project's real train step, beside Keras (and PyTorch).

  python experiments/throughput.py --config=configs/bench/dcgan28.py --reference=keras
  python experiments/throughput.py --config=configs/bench/convvae28.py --reference=keras \
      --jax_impls=auto,xla --steps=60

Builds the step exactly as vaegan_jax/train.py does (family.init_state,
jax.jit(partial(family.train_step, config), donate_argnums=0) with the same
shardings) and feeds it from the real input pipeline
(input_pipeline.TrainIterator over config.data.name's train split, decoded
into memory or streamed as training would: data.cache_mb). Every framework gets its
own iterator over the same batches. After `--warmup` steps, the frameworks run
`--steps` steps each, interleaved in `--rounds` rounds, so that load from
other processes on a shared machine hits all of them alike. Each step is timed
from asking the iterator for a batch to the step's outputs being ready
(`block_until_ready` / `.numpy()`).

Prints one JSON line per framework on stdout:
  framework         'vaegan_jax' (the config's conv_impl), 'vaegan_jax[conv_impl=xla]',
                    'keras' (tf.function), 'keras_xla' (tf.function(jit_compile=True)),
                    'torch', 'torch_compile'
  images_per_s      batch / median step time
  step_ms_median, step_ms_p10, step_ms_p90
  compile_s         first call (trace + compile + one step) minus the median step
  data_wait_frac    time spent in next(iterator) / total step time
  model_flops_per_step  (project only) FLOPs of the compiled train step from
                    XLA's cost analysis (`jit(...).lower(...).compile().cost_analysis()`)
  tflops_per_s      model_flops_per_step / median step time / 1e12
  mfu               tflops_per_s / --peak_tflops (null without the flag): the
                    model-FLOPs utilisation against the peak the user gives
                    (e.g. 989 for an H100 SXM's dense bf16, 197 for a TPU v5e)
plus images_per_s_mean, batch, steps, config, load_avg (1-min load average at
start and end), step_cpu_ms_median and compile_cpu_s (process CPU time, all
threads: a rough load-independent measure on a busy machine). A summary with ratios to Keras goes to stderr.

--config.KEY=VALUE overrides work as for vaegan_jax.main.
"""

import functools
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from vaegan_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import families  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import validation  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.errors import UsageError, UserError  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script)."""
  config_flags.DEFINE_config_file(
      'config', None, 'A config file, e.g. configs/bench/dcgan28.py.', lock_config=False)
  flags.DEFINE_integer('batch', 256, 'Global batch size (overrides config.train.batch_size).')
  flags.DEFINE_enum('reference', 'keras', ['keras', 'torch', 'all', 'none'],
                    'Frameworks to time beside the project: keras (needs '
                    'requirements-tf.txt), torch (if importable), all (those '
                    'importable) or none.')
  flags.DEFINE_bool('keras_xla', True, 'Also time Keras with tf.function(jit_compile=True).')
  flags.DEFINE_bool('torch_compile', True, 'Also time torch.compile (with --reference=torch).')
  flags.DEFINE_list('jax_impls', [], 'conv_impl values to time for the project '
                    '(auto, xla, fast, gemm, onednn), e.g. auto,onednn; default: the '
                    'config\'s own.')
  flags.DEFINE_bool('keep_host_memory', True, 'Keep freed host memory in the '
                    'process (vaegan_jax/host_memory.py: no page faults on '
                    'every step), as vaegan_jax.main does; applies to every '
                    'framework timed. --nokeep_host_memory: glibc\'s default.')
  flags.DEFINE_integer('steps', 30, 'Timed steps per framework.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps per framework after the first call.')
  flags.DEFINE_integer('rounds', 5, 'Interleaving rounds (steps are split over them).')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir (overrides config.data.data_dir).')
  flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s of the device (all devices together) '
                     'for the MFU column; 0 = unknown (mfu null).')


KEYS = ('framework', 'images_per_s', 'step_ms_median', 'step_ms_p10', 'step_ms_p90',
        'compile_s', 'data_wait_frac')


class Runner:
  """One framework's step fed from its own TrainIterator.

  Subclasses set `self.iterator` and implement `first_call()` (compile and
  run one step) and `run(batch)` (one step, synchronised).
  """
  name = ''

  def __init__(self):
    self.wait_s, self.step_s, self.cpu_s = [], [], []
    self.first_call_s = self.first_call_cpu_s = 0.0

  def start(self, warmup: int):
    t, c = time.perf_counter(), time.process_time()
    self.first_call()
    self.first_call_s = time.perf_counter() - t
    self.first_call_cpu_s = time.process_time() - c
    for _ in range(warmup):
      self.run(self.next_batch())

  def next_batch(self):
    return next(self.iterator)

  def timed_steps(self, n: int):
    for _ in range(n):
      c0, t0 = time.process_time(), time.perf_counter()
      batch = self.next_batch()
      t1 = time.perf_counter()
      self.run(batch)
      t2, c2 = time.perf_counter(), time.process_time()
      self.wait_s.append(t1 - t0)
      self.step_s.append(t2 - t0)
      self.cpu_s.append(c2 - c0)

  def close(self):
    self.iterator.close()

  def result(self, batch_size: int) -> dict:
    ms = 1e3 * np.asarray(self.step_s)
    median = float(np.median(ms))
    cpu_median = float(np.median(self.cpu_s))
    return {
        'framework': self.name,
        'images_per_s': round(batch_size / median * 1e3, 1),
        'step_ms_median': round(median, 2),
        'step_ms_p10': round(float(np.percentile(ms, 10)), 2),
        'step_ms_p90': round(float(np.percentile(ms, 90)), 2),
        'compile_s': round(max(self.first_call_s - median / 1e3, 0.0), 2),
        'data_wait_frac': round(float(np.sum(self.wait_s) / np.sum(self.step_s)), 4),
        'images_per_s_mean': round(batch_size * len(ms) / float(np.sum(ms)) * 1e3, 1),
        'steps': len(ms),
        # CPU seconds of this process (all threads): less sensitive to other
        # processes' load than wall time, but counts spin-waiting threads too.
        'step_cpu_ms_median': round(1e3 * cpu_median, 2),
        'compile_cpu_s': round(max(self.first_call_cpu_s - cpu_median, 0.0), 2),
    }


def step_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled jax function (XLA's cost analysis), or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per device program.
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def flops_fields(flops, step_ms, peak_tflops=0.0) -> dict:
  """model_flops_per_step, tflops_per_s and mfu for a median step time."""
  if flops is None or step_ms <= 0:
    return {'model_flops_per_step': None, 'tflops_per_s': None, 'mfu': None}
  tflops = flops / (step_ms / 1e3) / 1e12
  return {'model_flops_per_step': flops, 'tflops_per_s': round(tflops, 6),
          'mfu': round(tflops / peak_tflops, 6) if peak_tflops > 0 else None}


def train_iterator(config, images, labels, batch_sharding):
  return input_pipeline.TrainIterator(images, labels, config.train.batch_size,
                                      config.seed, batch_sharding, 0)


class JaxRunner(Runner):
  """The project's step, built as vaegan_jax/train.py builds it."""

  def __init__(self, config, images, labels, conv_impl=None):
    super().__init__()
    config = config.copy_and_resolve_references()
    if conv_impl:
      config.model.conv_impl = conv_impl
    self.name = 'vaegan_jax' if not conv_impl else f'vaegan_jax[conv_impl={conv_impl}]'
    if conv_impl == 'onednn' and layers.resolve_impl(conv_impl) != conv_impl:
      self.name = 'vaegan_jax[conv_impl=gemm (onednn unavailable)]'
    family = families.get(config.model.family)
    mesh = sharding.make_mesh()
    init_fn = functools.partial(family.init_state, config)
    root_key = jax.random.PRNGKey(config.seed)
    state_sharding = sharding.state_sharding(mesh, jax.eval_shape(init_fn, root_key))
    batch_sharding = sharding.data_sharding(mesh)
    self.state = jax.jit(init_fn, out_shardings=state_sharding)(root_key)
    self.step_fn = jax.jit(functools.partial(family.train_step, config),
                           in_shardings=(state_sharding, batch_sharding),
                           out_shardings=(state_sharding, sharding.replicated(mesh)),
                           donate_argnums=0)
    self.iterator = train_iterator(config, images, labels, batch_sharding)
    self.flops = None
    self.peak_tflops = 0.0

  def first_call(self):
    batch = self.next_batch()
    # Compiled ahead of time so that XLA's cost analysis gives the step's FLOPs.
    self.step_fn = self.step_fn.lower(self.state, batch).compile()
    self.flops = step_flops(self.step_fn)
    self.run(batch)

  def run(self, batch):
    self.state, metrics = self.step_fn(self.state, batch)
    jax.block_until_ready((self.state, metrics))

  def result(self, batch_size: int) -> dict:
    r = super().result(batch_size)
    r.update(flops_fields(self.flops, r['step_ms_median'], self.peak_tflops))
    return r


class KerasRunner(Runner):
  """experiments/keras_reference.py's tf.function step."""

  def __init__(self, config, images, labels, jit_compile: bool):
    super().__init__()
    import keras_reference  # pylint: disable=g-import-not-at-top
    self.name = 'keras_xla' if jit_compile else 'keras'
    self.step_fn = keras_reference.build(config, jit_compile)
    mesh = sharding.make_mesh()
    self.iterator = train_iterator(config, images, labels, sharding.data_sharding(mesh))

  def next_batch(self):
    return np.asarray(next(self.iterator)['image'])

  def first_call(self):
    self.run(self.next_batch())

  def run(self, batch):
    self.step_fn(batch).numpy()


class TorchRunner(Runner):
  """experiments/torch_reference.py's step (eager or torch.compile)."""

  def __init__(self, config, images, labels, compile_: bool):
    super().__init__()
    import torch_reference  # pylint: disable=g-import-not-at-top
    self.name = 'torch_compile' if compile_ else 'torch'
    self.step_fn = torch_reference.build(config, compile_)
    mesh = sharding.make_mesh()
    self.iterator = train_iterator(config, images, labels, sharding.data_sharding(mesh))

  def next_batch(self):
    return np.asarray(next(self.iterator)['image'])

  def first_call(self):
    self.run(self.next_batch())

  def run(self, batch):
    self.step_fn(batch)


def _torch_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def measure(config, reference='keras', jax_impls=(), steps=30, warmup=3, rounds=5,
            keras_xla=True, torch_compile=True, log=print, name='', peak_tflops=0.0) -> list:
  """Times the frameworks on `config`; returns one result dict per framework."""
  if steps < 1 or warmup < 0 or rounds < 1:
    raise UsageError('--steps and --rounds must be at least 1, --warmup at least 0.')
  input_pipeline.get_spec(config.data.name)
  validation.check_devices(config)  # The batch splits over the devices and processes.
  load_start = os.getloadavg()[0]
  # The train split as training reads it (decoded into memory when it fits
  # config.data.cache_mb, else streamed); labels=None.
  images, labels = input_pipeline.open_train_source(config), None

  makers = [functools.partial(JaxRunner, config, images, labels, impl or None)
            for impl in (jax_impls or [''])]
  if reference in ('keras', 'all'):
    import keras_reference  # pylint: disable=g-import-not-at-top
    try:
      keras_reference.import_tf()
    except UserError:
      if reference == 'keras':
        raise
      log(keras_reference.TF_MISSING.replace('needs', 'is skipped: it needs'))
      reference = 'torch'
  if reference in ('keras', 'all'):
    makers.append(functools.partial(KerasRunner, config, images, labels, False))
    if keras_xla:
      makers.append(functools.partial(KerasRunner, config, images, labels, True))
  if reference in ('torch', 'all'):
    if _torch_available():
      makers.append(functools.partial(TorchRunner, config, images, labels, False))
      if torch_compile:
        makers.append(functools.partial(TorchRunner, config, images, labels, True))
    else:
      log('torch is not importable: no PyTorch reference.')

  runners = []
  try:
    for make in makers:
      runner = make()
      if isinstance(runner, JaxRunner):
        runner.peak_tflops = peak_tflops
      runners.append(runner)
      runner.start(warmup)
      log(f'{runner.name}: first call {runner.first_call_s:.1f} s')
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for i, n in enumerate(per_round):
      for runner in runners:
        runner.timed_steps(n)
      log(f'round {i + 1}/{rounds} done')
  finally:
    for runner in runners:
      runner.close()
  load_end = os.getloadavg()[0]
  results = []
  for runner in runners:
    r = runner.result(config.train.batch_size)
    r.update(batch=config.train.batch_size, config=name,
             load_avg=[round(load_start, 2), round(load_end, 2)])
    results.append(r)
  return results


def summary(results) -> str:
  """A small text table with each framework's speed relative to Keras."""
  keras = next((r for r in results if r['framework'] == 'keras'), None)
  lines = [f'{"framework":34s} {"img/s":>8s} {"ms p10/50/90":>22s} {"compile s":>9s} '
           f'{"data wait":>9s} {"vs keras":>8s}']
  for r in results:
    ratio = f'{r["images_per_s"] / keras["images_per_s"]:.2f}x' if keras else ''
    ms = f'{r["step_ms_p10"]:.0f}/{r["step_ms_median"]:.0f}/{r["step_ms_p90"]:.0f}'
    lines.append(f'{r["framework"]:34s} {r["images_per_s"]:8.1f} {ms:>22s} '
                 f'{r["compile_s"]:9.1f} {r["data_wait_frac"]:9.3f} {ratio:>8s}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.config is None:
    raise UsageError('--config is required, e.g. --config=configs/bench/dcgan28.py.')
  kernels.setup()
  if FLAGS.keep_host_memory and not host_memory.keep_freed_memory():
    # As vaegan_jax.main: where glibc's mallopt is absent, its default stays.
    print('note: --keep_host_memory needs glibc (Linux); timing with the '
          'default malloc policy.', file=sys.stderr)
  config = FLAGS.config
  config.train.batch_size = FLAGS.batch
  if FLAGS.data_dir:
    config.data.data_dir = FLAGS.data_dir
  name = os.path.splitext(os.path.basename(FLAGS['config'].config_filename))[0]
  log = functools.partial(print, file=sys.stderr, flush=True)
  log(f'{name}: batch {FLAGS.batch}, backend {jax.default_backend()}, '
      f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}')
  results = measure(config, FLAGS.reference, FLAGS.jax_impls, FLAGS.steps, FLAGS.warmup,
                    FLAGS.rounds, FLAGS.keras_xla, FLAGS.torch_compile, log, name,
                    FLAGS.peak_tflops)
  for r in results:
    print(json.dumps(r), flush=True)
  log(summary(results))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
