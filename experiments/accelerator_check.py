"""The accelerator check's Python part: step timings and a short training run on random data.

  python experiments/accelerator_check.py --part=bench --out=check.jsonl --peak_tflops=989
  python experiments/accelerator_check.py --part=train --train_seconds=60 --out=check.jsonl
  python experiments/accelerator_check.py --part=all --dry_run   # CPU, tiny, < 1 min

Run by experiments/accelerator_check.sh, which also runs the device-independent
tests on the accelerator first. No dataset is needed: batches are uniform
random images of each config's exact shape, made on the device.

--part=bench: for every family's CIFAR-10 and CelebA-64 configs (BENCH), at
the config's own batch size, in float32 and bfloat16 (`train.compute_dtype`),
the train step is built as vaegan_jax/train.py builds it (init_state under
jit, jit(train_step, donate_argnums=0) with the mesh's shardings), compiled
ahead of time (its FLOPs from XLA's cost analysis), run `--warmup` times and
timed over `--steps` steps. One JSON line per (config, dtype):
  {"kind": "bench", "config": "gan.py:cifar10_sngan", "dtype": "bfloat16",
   "batch": 64, "images_per_s", "step_ms", "compile_s", "model_flops_per_step",
   "tflops_per_s", "mfu", "backend", "device_kind", "num_devices"}
or {"kind": "bench_skipped", ...} once `--bench_budget_s` is spent (or an
error, with its message).
--part=train: `configs/gan.py:cifar10_dcgan` trains for `--train_seconds` on a
fixed pool of random images (so D should win; the point is finite, moving
losses and the speed), logging {"kind": "train", "step", "elapsed_s",
"d_loss", "g_loss", "d_real", "d_fake"} every `--train_log_every` steps and
ends with {"kind": "train_summary", "steps", "images_per_s", "finite": bool}.
Every line is printed and appended to `--out` (JSON lines).
"""

import functools
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import families  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_enum('part', 'all', ['bench', 'train', 'all'], 'What to run.')
flags.DEFINE_string('out', '', 'Append every JSON line to this file too.')
flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s of all devices together, for mfu; 0 = null.')
flags.DEFINE_integer('steps', 20, 'Timed steps per (config, dtype).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_float('bench_budget_s', 180.0, 'Skip the remaining bench entries after this long.')
flags.DEFINE_float('train_seconds', 60.0, 'Wall time of the cifar10_dcgan training run.')
flags.DEFINE_integer('train_log_every', 50, 'Log a train line every N steps.')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes to time.')
flags.DEFINE_bool('dry_run', False, 'CPU check of the script itself: gan.py:smoke in both dtypes, '
                  'batch 2, 2 steps, then 5 s of training it (the float32 step reused).')

# Every family's CIFAR-10 and CelebA-64 configs (file, variant).
BENCH = [('vae', 'cifar10'), ('gan', 'cifar10_dcgan'), ('gan', 'cifar10_sngan'),
         ('vaegan', 'cifar10'), ('vae', 'celeb_a64'), ('gan', 'celeb_a64'),
         ('vaegan', 'celeb_a64')]


def load_config(name, arg):
  from vaegan_jax import config_base  # pylint: disable=g-import-not-at-top
  return config_base.load(os.path.join(ROOT, 'configs', f'{name}.py'), arg)


def dry_run_config(name, arg):
  """Narrow versions for --dry_run (same code paths, seconds on CPU)."""
  config = load_config(name, arg)
  config.train.batch_size = 2
  if config.model.get('arch') == 'resnet':
    config.model.g_conv_dim = config.model.d_conv_dim = 2
    config.gan.d_steps = 1
  return config


def random_batch(key, config, mesh):
  """{'image', 'label'}: uniform images in [0, 1] of the config's shape, sharded like real data."""
  shape = (config.train.batch_size, *input_pipeline.image_shape(config))
  data = sharding.data_sharding(mesh)
  make = jax.jit(lambda k: {'image': jax.random.uniform(k, shape),
                            'label': jax.numpy.zeros(shape[:1], jax.numpy.int32)},
                 out_shardings=data)
  return make(key)


def build(config, mesh):
  """(state, compiled step, FLOPs, compile seconds) as vaegan_jax/train.py builds the step."""
  family = families.get(config.model.family)
  init_fn = functools.partial(family.init_state, config)
  key = jax.random.PRNGKey(config.seed)
  state_sharding = sharding.state_sharding(mesh, jax.eval_shape(init_fn, key))
  state = jax.jit(init_fn, out_shardings=state_sharding)(key)
  step = jax.jit(functools.partial(family.train_step, config),
                 in_shardings=(state_sharding, sharding.data_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  batch = random_batch(jax.random.PRNGKey(1), config, mesh)
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  return state, compiled, throughput.step_flops(compiled), compile_s


class Writer:
  """Prints JSON lines and appends them to --out."""

  def __init__(self, path, common):
    self.path, self.common = path, common

  def __call__(self, record):
    line = json.dumps({**record, **self.common})
    print(line, flush=True)
    if self.path:
      with open(self.path, 'a') as f:
        f.write(line + '\n')


_BUILT = {}  # --dry_run: (file, variant, dtype) -> (state, step) left by bench, reused by train.


def bench(write, mesh, entries, dtypes, steps, warmup, budget_s, peak_tflops):
  start = time.perf_counter()
  for name, arg in entries:
    for dtype in dtypes:
      label = f'{name}.py:{arg}'
      if time.perf_counter() - start > budget_s:
        write({'kind': 'bench_skipped', 'config': label, 'dtype': dtype,
               'reason': f'bench budget of {budget_s:.0f} s spent'})
        continue
      try:
        config = (dry_run_config if FLAGS.dry_run else load_config)(name, arg)
        config.train.compute_dtype = dtype
        state, step, flops, compile_s = build(config, mesh)
        batches = [random_batch(jax.random.PRNGKey(2 + i), config, mesh) for i in range(2)]
        for i in range(warmup):
          state, metrics = step(state, batches[i % 2])
        jax.block_until_ready(state)
        times = []
        for i in range(steps):
          t = time.perf_counter()
          state, metrics = step(state, batches[i % 2])
          jax.block_until_ready((state, metrics))
          times.append(time.perf_counter() - t)
        step_ms = 1e3 * float(np.median(times))
        finite = all(bool(np.isfinite(np.asarray(v)).all()) for v in jax.tree.leaves(metrics))
        write({'kind': 'bench', 'config': label, 'family': config.model.family, 'dtype': dtype,
               'batch': config.train.batch_size, 'steps': steps,
               'images_per_s': round(config.train.batch_size / step_ms * 1e3, 1),
               'step_ms': round(step_ms, 3), 'compile_s': round(compile_s, 2),
               'finite': finite, **throughput.flops_fields(flops, step_ms, peak_tflops)})
        if FLAGS.dry_run:
          _BUILT[(name, arg, dtype)] = (state, step)
        del state, step
      except Exception as e:  # pylint: disable=broad-except
        write({'kind': 'bench_skipped', 'config': label, 'dtype': dtype,
               'reason': f'{type(e).__name__}: {str(e)[:300]}'})


def train(write, mesh, seconds, log_every):
  """cifar10_dcgan (gan.py:smoke with --dry_run) on a fixed pool of random images for `seconds`."""
  label = 'gan.py:smoke' if FLAGS.dry_run else 'gan.py:cifar10_dcgan'
  config = dry_run_config('gan', 'smoke') if FLAGS.dry_run else load_config('gan', 'cifar10_dcgan')
  if FLAGS.dry_run and ('gan', 'smoke', 'float32') in _BUILT:
    (state, step), compile_s = _BUILT.pop(('gan', 'smoke', 'float32')), 0.0
  else:
    state, step, _, compile_s = build(config, mesh)
  pool = [random_batch(jax.random.PRNGKey(100 + i), config, mesh) for i in range(8)]
  write({'kind': 'train_start', 'config': label,
         'batch': config.train.batch_size, 'compile_s': round(compile_s, 2)})
  start = time.perf_counter()
  n, finite = 0, True
  while True:
    state, metrics = step(state, pool[n % len(pool)])
    n += 1
    elapsed = time.perf_counter() - start
    done = elapsed >= seconds
    if n % log_every == 0 or done or n == 1:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      finite = finite and all(np.isfinite(v) for v in m.values())
      write({'kind': 'train', 'step': n, 'elapsed_s': round(elapsed, 2),
             **{k: round(m[k], 5) for k in ('d_loss', 'g_loss', 'd_real', 'd_fake')}})
    if done:
      break
  write({'kind': 'train_summary', 'config': label, 'steps': n,
         'seconds': round(elapsed, 2), 'finite': bool(finite),
         'images_per_s': round(n * config.train.batch_size / elapsed, 1)})


def main(argv):
  del argv
  kernels.setup()
  devices = jax.devices()
  write = Writer(FLAGS.out, {'backend': jax.default_backend(),
                             'device_kind': devices[0].device_kind,
                             'num_devices': len(devices), 'dry_run': FLAGS.dry_run})
  mesh = sharding.make_mesh()
  if FLAGS.dry_run:
    entries, steps, warmup = [('gan', 'smoke')], 2, 1
    seconds, log_every = min(FLAGS.train_seconds, 5.0), 500
  else:
    entries, steps, warmup = BENCH, FLAGS.steps, FLAGS.warmup
    seconds, log_every = FLAGS.train_seconds, FLAGS.train_log_every
  if FLAGS.part in ('bench', 'all'):
    bench(write, mesh, entries, FLAGS.dtypes, steps, warmup, FLAGS.bench_budget_s,
          FLAGS.peak_tflops)
  if FLAGS.part in ('train', 'all'):
    train(write, mesh, seconds, log_every)


if __name__ == '__main__':
  app.run(main)
