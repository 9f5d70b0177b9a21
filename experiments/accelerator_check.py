"""The accelerator check's Python part: one JSON line per measurement.

  python experiments/accelerator_check.py --part=bench --out=check.jsonl --peak_tflops=989
  python experiments/accelerator_check.py --part=train --train_seconds=60 --out=check.jsonl
  python experiments/accelerator_check.py --part=all --dry_run   # CPU, tiny

Run by experiments/accelerator_check.sh, one process per part (so that a part
that fails or hangs costs only its own time), after the device-independent
tests. Only the embedded mnist5k is read (part real); every other part makes
its data.

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
error, with its message). With --dry_run, gan.py:smoke is timed and every
BENCH config is traced at full size ({"kind": "bench_traced", "params"}).
--part=train: `configs/gan.py:cifar10_dcgan` trains for `--train_seconds` on a
fixed pool of random images (so D should win; the point is finite, moving
losses and the speed), logging {"kind": "train", "step", "elapsed_s",
"d_loss", "g_loss", "d_real", "d_fake"} every `--train_log_every` steps and
ends with {"kind": "train_summary", "steps", "images_per_s", "finite": bool}.
--part=real: `vaegan_jax.train.train_and_evaluate` on real data
(configs/vae.py on the embedded mnist5k, `--real_steps` steps, its
evaluations on), then the resume check: the same config trained for half the
steps in a second workdir and rerun to the end, which restores the
checkpoint and continues. Lines: {"kind": "real_train", "loss_curve":
[[step, loss], ...], "eval": {...}, "images_per_s", "seconds"} and
{"kind": "resume", "bit_exact": bool, "max_abs_diff", "leaves"} (params,
optimiser states, batch stats, step and key compared leaf by leaf).
--part=features: feature throughput of the FID Inception (weights from
$VAEGAN_JAX_INCEPTION when set, else random) on 32 px images resized to 299,
and of DINOv2 (vaegan_jax/metrics/dinov2.py; weights from --dinov2_weights or
$VAEGAN_JAX_DINOV2 when set, else random) at 224 px: {"kind": "features", "backbone", "weights":
"real"|"random", "images_per_s", "feature_dim", "compile_s", "finite"}; or
{"kind": "features_skipped", "backbone", "reason"}.
--part=pipeline: `pipeline.TrainIterator` alone (no model) on 64x64x3 images
from memory and streamed from an array_record file
(experiments/data_scale.py), as global arrays on the device:
{"kind": "pipeline", "source": "memory"|"array_record", "images_per_s"}.
Every line is printed and appended to `--out` (JSON lines).
"""

import functools
import json
import os
import tempfile
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
PARTS = ['bench', 'train', 'real', 'features', 'pipeline']
flags.DEFINE_enum('part', 'all', PARTS + ['all'], 'What to run.')
flags.DEFINE_string('out', '', 'Append every JSON line to this file too.')
flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s of all devices together, for mfu; 0 = null.')
flags.DEFINE_integer('steps', 20, 'Timed steps per (config, dtype).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_float('bench_budget_s', 180.0, 'Skip the remaining bench entries after this long.')
flags.DEFINE_float('train_seconds', 60.0, 'Wall time of the cifar10_dcgan training run.')
flags.DEFINE_integer('train_log_every', 50, 'Log a train line every N steps.')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes to time.')
flags.DEFINE_integer('real_steps', 400, 'Steps of the real training run (the resume check '
                     'stops at half of them).')
flags.DEFINE_string('dinov2_weights', '', 'DINOv2 weights file for --part=features '
                    '(default $VAEGAN_JAX_DINOV2; none: random weights).')
flags.DEFINE_integer('feature_images', 2000, 'Images per feature-throughput measurement.')
flags.DEFINE_integer('pipeline_steps', 100, 'Batches per input-pipeline measurement.')
flags.DEFINE_bool('dry_run', False, 'CPU check of the script itself: every part on tiny sizes '
                  '(gan.py:smoke in both dtypes, batch 2, 2 steps; 5 s of training it; '
                  'vae.py:smoke for 4 steps; a few feature and pipeline batches).')

# Every family's CIFAR-10 and CelebA-64 configs (file, variant).
BENCH = [('vae', 'cifar10'), ('gan', 'cifar10_dcgan'), ('gan', 'cifar10_sngan'),
         ('vaegan', 'cifar10'), ('vae', 'celeb_a64'), ('gan', 'celeb_a64'),
         ('vaegan', 'celeb_a64')]


def load_config(name, arg):
  from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.load(os.path.join(ROOT, 'configs', f'{name}.py'), arg)


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
        del state, step
      except Exception as e:  # pylint: disable=broad-except
        write({'kind': 'bench_skipped', 'config': label, 'dtype': dtype,
               'reason': f'{type(e).__name__}: {str(e)[:300]}'})


def trace(write, mesh, entries, dtypes):
  """--dry_run: every bench config at full size, traced (init and train step
  under jax.eval_shape, no compilation): catches a config that cannot build."""
  for name, arg in entries:
    for dtype in dtypes:
      label = f'{name}.py:{arg}'
      try:
        config = load_config(name, arg)
        config.train.compute_dtype = dtype
        family = families.get(config.model.family)
        t = time.perf_counter()
        state = jax.eval_shape(functools.partial(family.init_state, config),
                               jax.random.PRNGKey(config.seed))
        shape = (config.train.batch_size, *input_pipeline.image_shape(config))
        batch = {'image': jax.ShapeDtypeStruct(shape, jax.numpy.float32),
                 'label': jax.ShapeDtypeStruct(shape[:1], jax.numpy.int32)}
        _, metrics = jax.eval_shape(functools.partial(family.train_step, config), state, batch)
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        write({'kind': 'bench_traced', 'config': label, 'dtype': dtype,
               'batch': config.train.batch_size, 'params': params,
               'metrics': sorted(metrics), 'trace_s': round(time.perf_counter() - t, 2)})
      except Exception as e:  # pylint: disable=broad-except
        write({'kind': 'bench_skipped', 'config': label, 'dtype': dtype,
               'reason': f'{type(e).__name__}: {str(e)[:300]}'})


def train(write, mesh, seconds, log_every):
  """cifar10_dcgan (gan.py:smoke with --dry_run) on a fixed pool of random images for `seconds`."""
  label = 'gan.py:smoke' if FLAGS.dry_run else 'gan.py:cifar10_dcgan'
  config = dry_run_config('gan', 'smoke') if FLAGS.dry_run else load_config('gan', 'cifar10_dcgan')
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


def _tree_diff(a, b):
  """(bit_exact, max_abs_diff, leaves) of two pytrees of host arrays."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  if len(leaves_a) != len(leaves_b):
    return False, float('inf'), len(leaves_a)
  exact, diff = True, 0.0
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
      return False, float('inf'), len(leaves_a)
    exact = exact and x.tobytes() == y.tobytes()
    if x.size and np.issubdtype(x.dtype, np.floating):
      diff = max(diff, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
  return exact, diff, len(leaves_a)


def real_config(num_steps, half):
  """configs/vae.py (vae.py:smoke with --dry_run) on the embedded mnist5k,
  evaluated, sampled and saved every `half` steps."""
  config = load_config('vae', 'smoke' if FLAGS.dry_run else None)
  config.train.num_steps = num_steps
  config.train.log_every_steps = max(1, num_steps // 20)
  config.train.eval_every_steps = config.train.sample_every_steps = half
  config.train.checkpoint_every_steps = half
  return config


def real(write, workroot, steps):
  """A real training run (loss curve, evaluations), then the resume check."""
  from vaegan_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  half = steps // 2
  label = 'vae.py:smoke' if FLAGS.dry_run else 'vae.py'
  straight_dir = os.path.join(workroot, 'straight')
  t = time.perf_counter()
  straight = jax.device_get(train_lib.train_and_evaluate(real_config(steps, half), straight_dir))
  seconds = time.perf_counter() - t
  with open(os.path.join(straight_dir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  curve = [[r['step'], round(r['loss'], 4)] for r in rows if 'loss' in r]
  speeds = [r['images_per_s'] for r in rows if 'images_per_s' in r]
  evals = [r for r in rows if any(k.startswith('eval/') for k in r)]
  write({'kind': 'real_train', 'config': label, 'data': 'mnist5k', 'steps': steps,
         'seconds': round(seconds, 1), 'loss_curve': curve,
         'images_per_s': round(float(np.median(speeds[1:] or speeds)), 1) if speeds else None,
         'finite': bool(curve) and all(np.isfinite(l) for _, l in curve),
         'eval': {k: round(v, 4) for k, v in (evals[-1] if evals else {}).items()
                  if isinstance(v, (int, float))}})
  resumed_dir = os.path.join(workroot, 'resumed')
  train_lib.train_and_evaluate(real_config(half, half), resumed_dir)
  resumed = jax.device_get(train_lib.train_and_evaluate(real_config(steps, half), resumed_dir))
  exact, diff, leaves = _tree_diff(straight, resumed)
  write({'kind': 'resume', 'config': label, 'steps': steps, 'resumed_at': half,
         'bit_exact': exact, 'max_abs_diff': diff, 'leaves': leaves,
         'xla_flags': os.environ.get('XLA_FLAGS', '')})


def _time_features(write, backbone, weights, net_compute, images, batch):
  """Compiles on one batch, then times `net_compute` over `images`."""
  t = time.perf_counter()
  net_compute(images[:batch], batch)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  feats = net_compute(images, batch)
  seconds = time.perf_counter() - t
  feats = feats['pool3'] if isinstance(feats, dict) else feats
  write({'kind': 'features', 'backbone': backbone, 'weights': weights,
         'image_size': images.shape[1], 'images': len(images), 'batch': batch,
         'images_per_s': round(len(images) / seconds, 1), 'feature_dim': int(feats.shape[1]),
         'compile_s': round(compile_s, 2), 'finite': bool(np.isfinite(feats).all())})


def inception_network():
  """(network, 'real'|'random'): $VAEGAN_JAX_INCEPTION's weights, else random."""
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  if os.environ.get(inception.ENV_VAR):
    return inception.load(), 'real'
  x = jax.numpy.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3))
  params = jax.jit(inception.FIDInceptionV3().init)(jax.random.PRNGKey(0), x)['params']
  return inception.InceptionNetwork(params), 'random'


def dinov2_network():
  """(network, 'real'|'random'), or (None, why not): DINOv2 ViT-L/14 (a
  2-block, 64-wide one with --dry_run), with the weights of --dinov2_weights
  or $VAEGAN_JAX_DINOV2 (dinov2.load: the official .pth or a converted .npz)
  where given, else random."""
  try:
    from vaegan_jax.metrics import dinov2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f'vaegan_jax.metrics.dinov2 is absent ({e})'
  path = FLAGS.dinov2_weights or os.environ.get('VAEGAN_JAX_DINOV2', '')
  if path and not FLAGS.dry_run:
    return dinov2.load(path), 'real'
  config = (dinov2.Config(embed_dim=64, depth=2, num_heads=1, pos_grid=4) if FLAGS.dry_run
            else dinov2.VITL14)
  params = jax.jit(functools.partial(dinov2.init_params, config=config))(jax.random.PRNGKey(0))
  return dinov2.DinoV2Network(params), 'random'


def features(write, mesh):
  """Inception (32 px in, resized to 299) and DINOv2 (224 px) images/s."""
  data = sharding.data_sharding(mesh)
  n = 4 if FLAGS.dry_run else FLAGS.feature_images
  batch = 2 * jax.device_count() if FLAGS.dry_run else 100 * jax.device_count()
  rng = np.random.default_rng(0)
  try:
    net, weights = inception_network()
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    _time_features(write, 'inception', weights,
                   lambda x, b: net.compute(x, batch_size=b, sharding=data), images, batch)
  except Exception as e:  # pylint: disable=broad-except
    write({'kind': 'features_skipped', 'backbone': 'inception',
           'reason': f'{type(e).__name__}: {str(e)[:300]}'})
  try:
    net, weights = dinov2_network()
    if net is None:
      write({'kind': 'features_skipped', 'backbone': 'dinov2', 'reason': weights})
      return
    images = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    _time_features(write, 'dinov2', weights,
                   lambda x, b: net.compute(x, batch_size=b, sharding=data), images, batch)
  except Exception as e:  # pylint: disable=broad-except
    write({'kind': 'features_skipped', 'backbone': 'dinov2',
           'reason': f'{type(e).__name__}: {str(e)[:300]}'})


def pipeline_part(write, mesh, workroot):
  """TrainIterator alone: 64x64x3 batches from memory and from an array_record file."""
  import data_scale  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import sources  # pylint: disable=g-import-not-at-top
  n, batch, steps = (256, 16, 4) if FLAGS.dry_run else (8192, 256, FLAGS.pipeline_steps)
  images = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
  path = os.path.join(workroot, 'images.array_record')
  data_scale.write(path, n)
  for name, source in (('memory', sources.ArraySource(images, np.zeros(n, np.int32))),
                       ('array_record', data_scale.RecordSource(path))):
    it = input_pipeline.TrainIterator(source, None, batch, 0, sharding.data_sharding(mesh))
    jax.block_until_ready(next(it))
    t = time.perf_counter()
    for _ in range(steps):
      b = next(it)
    jax.block_until_ready(b)
    seconds = time.perf_counter() - t
    it.close()
    write({'kind': 'pipeline', 'source': name, 'num_images': n, 'batch': batch,
           'steps': steps, 'images_per_s': round(steps * batch / seconds, 1),
           'reader_threads': data_pipeline.default_num_threads()})


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
    if FLAGS.dry_run:
      trace(write, mesh, BENCH, FLAGS.dtypes)
  if FLAGS.part in ('train', 'all'):
    train(write, mesh, seconds, log_every)
  with tempfile.TemporaryDirectory(prefix='accelerator_check_') as workroot:
    if FLAGS.part in ('real', 'all'):
      real(write, workroot, 4 if FLAGS.dry_run else FLAGS.real_steps)
    if FLAGS.part in ('features', 'all'):
      features(write, mesh)
    if FLAGS.part in ('pipeline', 'all'):
      pipeline_part(write, mesh, workroot)


if __name__ == '__main__':
  app.run(main)
