"""Feature spaces the sample-quality metrics are measured in, one small entry each.

    bb = backbones.get('inception')            # or 'dinov2', 'own:mnist5k'
    feats = bb.features(images, mesh)          # {'features': (N, D), ...}
    out = bb.metrics(ref_feats, feats)         # fid_inception, kid_inception, ...

An entry names the backbone, loads it (weights through
vaegan_jax/metrics/weights.py), featurises uint8 or [0, 1] float images of one
shape in batches split over every device of the mesh, and says how its
metric keys are spelt. The maths is one copy for all of them
(`distances.distribution_metrics`).

  name          metric keys                                        resize default
  inception     fid_inception, kid_inception(_std), precision_     pytorch_fid
                inception, recall_, density_, coverage_inception,
                is_inception(_std)
  dinov2        fd_dinov2, kd_dinov2(_std), precision_dinov2, ...  dgm_eval
  own:DATASET   fid, kid(_std), precision, recall, density,        (the net's own
                coverage (the project's feature net of DATASET)    input size)

`protocol` gives the fields every JSON with these numbers carries (backbone,
weights sha256, resize, sample count, reference and its count) and `line`
the one line a paper can paste.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any, Callable

import numpy as np

from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

# How evaluation draws samples (generative.py uses the same): a fixed key
# purpose, so every evaluation sees the same latents, and batches of at least
# MIN_BATCH images.
SAMPLE_KEY = 0x5EED5
MIN_BATCH = 256

NAMES = ('inception', 'dinov2', 'own')
STATS_FORMAT = 1


@dataclasses.dataclass
class Backbone:
  """A loaded feature extractor.

  Attributes:
    name: 'inception', 'dinov2' or 'own:DATASET'.
    title: for the protocol line ('Inception', 'DINOv2 ViT-L/14', ...).
    suffix: appended to the metric keys ('_inception', '_dinov2', '').
    resize: the resize convention applied to the inputs.
    weights_sha256: sha256 of the official weights file (or the feature
      net's msgpack): names the feature space.
    featurize: fn(images (N, H, W, C) uint8 or float in [0, 1], mesh) ->
      {'features': (N, D) float32[, 'logits_unbiased': (N, K)]}.
    input_shape: (H, W, C) every image must have (own nets), else None.
    fd_name: the Fréchet distance's name in the protocol line.
  """
  name: str
  title: str
  suffix: str
  resize: str
  weights_sha256: str
  featurize: Callable[[Any, Any], dict]
  input_shape: tuple | None = None
  fd_name: str = 'FID'
  net: Any = None  # The loaded network (InceptionNetwork, DinoV2Network, FeatureNetwork).

  def features(self, images, mesh=None) -> dict:
    from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
    return self.featurize(images, mesh or sharding.make_mesh())

  def key(self, metric: str) -> str:
    """'fid' -> 'fid_inception', 'kid_std' -> 'kd_dinov2_std', ..."""
    std = metric.endswith('_std')
    base = metric[:-4] if std else metric
    if self.fd_name == 'FD' and base in ('fid', 'kid'):
      base = {'fid': 'fd', 'kid': 'kd'}[base]
    return base + self.suffix + ('_std' if std else '')

  @property
  def fd_key(self) -> str:
    return self.key('fid')

  def metrics(self, ref: dict, fake: dict) -> dict:
    """Distribution metrics of `fake` against `ref` (feature dicts), and the
    Inception Score of `fake` where the backbone has logits."""
    from vaegan_jax.metrics import distances  # pylint: disable=g-import-not-at-top
    from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    out = distances.distribution_metrics(ref['features'], fake['features'])
    out = {self.key(k): v for k, v in out.items()}
    if 'logits_unbiased' in fake:
      n = len(fake['logits_unbiased'])
      out[self.key('is')], out[self.key('is_std')] = inception.inception_score(
          fake['logits_unbiased'], splits=min(10, n))
    return out


def _batch(mesh, per_device: int) -> int:
  n = mesh.devices.size
  return n * max(1, math.ceil(per_device / n))


def check_resize(name: str, resize: str) -> str:
  """The resize convention `resize` ('' = the backbone's default), checked."""
  conventions = _conventions()
  if name.startswith('own'):
    if resize not in ('', 'none'):
      raise UsageError(f"--resize={resize!r} does not apply to --features={name}: the "
                       "project's feature nets take images at their dataset's size.")
    return 'none'
  default = {'inception': 'pytorch_fid', 'dinov2': 'dgm_eval'}[name]
  resize = resize or default
  if resize not in conventions:
    raise UsageError(f'--resize={resize!r} must be one of {", ".join(conventions)}.')
  return resize


def _conventions() -> tuple:
  try:
    from vaegan_jax.metrics import resize as resize_lib  # pylint: disable=g-import-not-at-top
    return tuple(resize_lib.CONVENTIONS)
  except ImportError:
    return ('pytorch_fid',)


def _map_batches(fn, images, mesh, per_call: int) -> dict:
  """`fn` (jitted, uint8 (B, H, W, 3) -> {name: (B, ...)}) over `images` in
  batches split over every device of every process (`sharding.map_batches`:
  one all-gather at the end); float images in [0, 1] are quantised to uint8
  first, as saving them to PNG would."""
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  images = np.asarray(images)
  prepare = None if images.dtype == np.uint8 else inception.quantize
  # Few images: a smaller batch (a power of two, so few shapes compile).
  batch = _batch(mesh, min(per_call, 1 << (len(images) - 1).bit_length()))
  return sharding.map_batches(fn, images, batch, mesh, prepare)


def inception_backbone(net) -> Backbone:
  """The Backbone of a loaded `inception.InceptionNetwork` (its resize)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top

  @jax.jit
  def fn(params, x):  # The weights an argument, not constants of the program.
    pool3, _, logits_unbiased = net.module.apply(
        {'params': params}, inception.preprocess(x, net.resize))
    return {'features': pool3, 'logits_unbiased': logits_unbiased}

  return Backbone('inception', 'Inception', '_inception', net.resize,
                  net.source_sha256 or net.sha256,
                  lambda images, mesh: _map_batches(functools.partial(fn, net.params), images,
                                                    mesh, 32), net=net)


def _inception(path: str, resize: str, echo) -> Backbone:
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  return inception_backbone(inception.load(path or None, echo=echo, resize=resize))


def dinov2_backbone(net, weights_sha256: str = '') -> Backbone:
  """The Backbone of a loaded `dinov2.DinoV2Network` (its resize). The
  released ViT-L/14 is 'DINOv2 ViT-L/14'; another DINOv2 ViT (smaller
  random ones in the tests) is named by its shape in the protocol line."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import dinov2  # pylint: disable=g-import-not-at-top
  c = net.config
  title = ('DINOv2 ViT-L/14' if c == dinov2.VITL14 else
           f'DINOv2 ViT/{c.patch_size} (width {c.embed_dim}, depth {c.depth})')
  fn = jax.jit(lambda params, x: {'features': dinov2.features(params, x, resize=net.resize,
                                                              config=c)})
  return Backbone('dinov2', title, '_dinov2', net.resize, weights_sha256 or net.sha256,
                  lambda images, mesh: _map_batches(functools.partial(fn, net.params), images,
                                                    mesh, 16), fd_name='FD', net=net)


def _dinov2(path: str, resize: str, echo) -> Backbone:
  from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
  try:
    from vaegan_jax.metrics import dinov2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError('--features=dinov2 needs vaegan_jax/metrics/dinov2.py, which this '
                    'installation lacks.') from None
  npz = weights.ensure('dinov2', path, echo=echo)
  try:
    with np.load(npz, allow_pickle=False) as data:
      state = {k: data[k] for k in data.files}
    source = str(state.pop('__source_sha256__', ''))
    state.pop('__format_version__', None)
    params = dinov2.convert(state)  # The architecture the arrays have (ViT-L/14 released).
  except Exception as e:  # pylint: disable=broad-except  # zip/npy errors, wrong keys
    raise UserError(f'DINOv2 weights file {npz} is not a converted DINOv2 ViT .npz '
                    f'({type(e).__name__}: {e}): pass the official '
                    f'{weights.DINOV2.file} or its .npz with --dinov2_weights.') from None
  net = dinov2.DinoV2Network(params, resize=resize, path=npz, sha256=source)
  return dinov2_backbone(net, source or weights.file_sha256(npz))


def _own(dataset: str, data_dir: str | None) -> Backbone:
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import feature_net  # pylint: disable=g-import-not-at-top
  if dataset not in input_pipeline.DATASETS:
    raise UsageError(f'--features=own:{dataset}: the project has feature nets for the '
                     f'labelled datasets {", ".join(sorted(input_pipeline.DATASETS))}.')
  net = feature_net.get(dataset, data_dir)

  def featurize(images, mesh):
    feats, probs = net.compute(images, _batch(mesh, 256), sharding.data_sharding(mesh))
    return {'features': feats, 'probs': probs}

  return Backbone(f'own:{dataset}', f'own {dataset} feature net', '', 'none',
                  net.metadata.get('sha256', ''), featurize,
                  input_shape=tuple(input_pipeline.get_spec(dataset).image_shape), net=net)


def get(name: str, resize: str = '', weights_path: str = '', data_dir: str | None = None,
        echo: Callable = print) -> Backbone:
  """Loads a backbone by name ('inception', 'dinov2', 'own:DATASET').

  Args:
    name: the --features value.
    resize: resize convention ('' = the backbone's default).
    weights_path: a weights file at hand (.npz or the official .pth); '' =
      the environment variable, else the cache, else a download.
    data_dir: TFDS data dir (own nets trained on first use).
    echo: where to say what happens (downloads, conversions).

  Raises:
    UsageError: unknown name or resize; UserError: no weights (one line).
  """
  kind = name.split(':', 1)[0]
  if kind not in NAMES or (kind == 'own') != (':' in name and bool(name.split(':', 1)[1])):
    raise UsageError(f'--features={name!r} must be inception, dinov2 or own:DATASET '
                     '(e.g. own:mnist5k).')
  resize = check_resize(name if kind != 'own' else 'own', resize)
  if kind == 'inception':
    return _inception(weights_path, resize, echo)
  if kind == 'dinov2':
    return _dinov2(weights_path, resize, echo)
  return _own(name.split(':', 1)[1], data_dir)


# ---------------------------------------------------------------------------
# Protocol.
# ---------------------------------------------------------------------------


def count_label(n: int) -> str:
  """50000 -> '50k', 12 -> '12'."""
  return f'{n // 1000}k' if n >= 1000 and n % 1000 == 0 else str(n)


def protocol(bb: Backbone, num_samples: int, reference: str, num_reference: int,
             samples: str = '') -> dict:
  """The fields every JSON with sample-quality numbers carries."""
  out = {'backbone': bb.name, 'weights_sha256': bb.weights_sha256, 'resize': bb.resize,
         'num_samples': int(num_samples), 'reference': reference,
         'num_reference': int(num_reference)}
  if samples:
    out['samples'] = samples
  return out


def line(bb: Backbone, value: float, proto: dict) -> str:
  """'FID-50k (Inception, pytorch_fid resize, vs cifar10 train 50000) = 9.01'."""
  resize = 'no resize' if bb.resize == 'none' else f'{bb.resize} resize'
  what = f'{proto["samples"]} ' if proto.get('samples') else ''
  return (f'{bb.fd_name}-{count_label(proto["num_samples"])} ({bb.title}, {resize}, '
          f'{what}vs {proto["reference"]} {proto["num_reference"]}) = {value:.4g}')


# ---------------------------------------------------------------------------
# Saved statistics.
# ---------------------------------------------------------------------------


def save_stats(path: str, bb: Backbone, feats: dict, source: str):
  """Writes the features (all the metrics need them, not only FID's mean and
  covariance) with the backbone, weights, resize and source, as a plain .npz."""
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import distances  # pylint: disable=g-import-not-at-top
  mu, sigma = sharding.to_host(distances.feature_stats(feats['features']))
  arrays = {k: np.asarray(v) for k, v in feats.items()}
  arrays.update(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                __vaegan_stats__=np.array(STATS_FORMAT), backbone=np.array(bb.name),
                weights_sha256=np.array(bb.weights_sha256), resize=np.array(bb.resize),
                source=np.array(source), count=np.array(len(feats['features'])))
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  except OSError as e:
    raise UserError(f'Cannot write statistics {path} ({e.strerror or e}).') from None


def is_stats(path: str) -> bool:
  try:
    with np.load(path, allow_pickle=False) as data:
      return '__vaegan_stats__' in data.files
  except Exception:  # pylint: disable=broad-except
    return False


def load_stats(path: str, bb: Backbone) -> tuple[dict, str]:
  """(features dict, source) of statistics saved by `save_stats`; refuses
  statistics of another backbone, weights or resize."""
  with np.load(path, allow_pickle=False) as data:
    meta = {k: str(data[k]) for k in ('backbone', 'weights_sha256', 'resize', 'source')}
    feats = {k: data[k] for k in ('features', 'logits_unbiased', 'probs') if k in data.files}
  for key, want in (('backbone', bb.name), ('weights_sha256', bb.weights_sha256),
                    ('resize', bb.resize)):
    if meta[key] != want:
      raise UserError(f'Statistics {path} were computed with {key} {meta[key]!r}, not '
                      f'{want!r}: recompute them with the same --features and --resize.')
  return feats, meta['source']


def cache_key(*parts) -> str:
  return hashlib.sha256('|'.join(map(str, parts)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Model samples and reference sets.
# ---------------------------------------------------------------------------


def draw_samples(config, family, state, num: int, mesh, desc: str = 'samples'):
  """`num` samples of a model state, drawn exactly as `generative.Evaluator`
  draws them (its fixed key, its batch size, batch i from fold_in(key, i)),
  so every backbone sees the samples the project's own metrics see.

  Returns:
    float32 numpy (num, H, W, C) in [0, 1].
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import progress  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  train_bs = int(config.train.batch_size)
  b = train_bs * math.ceil(MIN_BATCH / train_bs)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_KEY)
  sample = jax.jit(lambda state, key: family.sample(config, state, key, b),
                   out_shardings=sharding.data_sharding(mesh))
  out = []
  for i in progress.iterate(range(math.ceil(num / b)), desc, unit='batch'):
    out.append(sharding.to_host(sample(state, jax.random.fold_in(key, i))))
  return np.concatenate(out)[:num]


def featurize_array(bb: Backbone, images, mesh, desc: str = '', chunk: int = 2048) -> dict:
  """Features of an (N, H, W, C) array (uint8, or float in [0, 1]) in chunks,
  with a progress bar labelled `desc`."""
  from vaegan_jax import progress  # pylint: disable=g-import-not-at-top
  if bb.input_shape is None and images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)  # As the networks do; one shape for all.
  out = []
  with progress.bar(len(images), desc, 'img') as bar:
    for start in range(0, len(images), chunk):
      part = images[start:start + chunk]
      out.append(bb.features(part, mesh))
      bar.update(len(part))
  return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def reference_features(bb: Backbone, dataset: str, split: str, load_images: Callable,
                       num: int | None, mesh, echo: Callable = print) -> dict:
  """Features of a dataset split, computed once and cached as statistics in
  ``<cache>/fid_refs/`` (keyed by dataset, split, count, backbone, weights and
  resize: other weights or another resize never reuse them).

  Returns:
    the features dict (``features`` (N, D), ...).
  """
  from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
  count = int(num) if num else 'all'
  name = (f'{dataset.replace("/", "-").replace(":", "-")}_{split.replace("/", "-")}_{count}_'
          f'{bb.name.replace(":", "-")}_{bb.resize}_{bb.weights_sha256[:12]}.npz')
  path = os.path.join(weights.cache_dir(), 'fid_refs', name)
  if os.path.isfile(path):
    try:
      feats, _ = load_stats(path, bb)
      echo(f'{bb.title} features of {dataset} {split} from {path}.')
      return feats
    except Exception:  # pylint: disable=broad-except  # a damaged cache is recomputed
      pass
  images = load_images()
  images = images[:num] if num else images
  echo(f'Computing {bb.title} features of {len(images)} {dataset} {split} images '
       f'(once; cached in {os.path.dirname(path)}).')
  feats = featurize_array(bb, images, mesh, f'{bb.name} features of {dataset}/{split}')
  try:
    save_stats(path, bb, feats, f'{dataset} {split}')
  except UserError as e:
    echo(f'note: reference features not cached ({e}).')
  return feats


class SampleMetrics:
  """A backbone's metrics of model samples against fixed reference features;
  built once, called per evaluation (training's and evaluate's)."""

  def __init__(self, config, family, mesh, bb: Backbone, reference: dict,
               reference_label: str):
    self.config, self.family, self.mesh, self.bb = config, family, mesh, bb
    self.reference, self.reference_label = reference, reference_label

  def protocol(self, num_samples: int) -> dict:
    return protocol(self.bb, num_samples, self.reference_label,
                    len(self.reference['features']))

  def __call__(self, state, num_samples: int) -> dict:
    images = draw_samples(self.config, self.family, state, num_samples, self.mesh,
                          f'samples -> {self.bb.name} features')
    return self.bb.metrics(self.reference, featurize_array(self.bb, images, self.mesh))


# ---------------------------------------------------------------------------
# Training-time evaluation (config.eval.features).
# ---------------------------------------------------------------------------

EVAL_FEATURES = ('own', 'inception', 'dinov2')


def weights_at_hand(name: str) -> bool:
  """Whether `name`'s weights are available without a download (its
  environment variable, or the cache holds the .npz or the .pth)."""
  from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
  entry = weights.get(name)
  if os.environ.get(entry.env):
    return os.path.isfile(os.path.expanduser(os.environ[entry.env]))
  cache = weights.cache_dir()
  return any(os.path.isfile(os.path.join(cache, f)) for f in (entry.npz, entry.file))


def protocol_scalars(proto: dict, suffix: str = '') -> dict:
  """The protocol as flat row fields: 'protocol<suffix>/backbone', ..."""
  return {f'protocol{suffix}/{k}': v for k, v in proto.items()}


def own_protocol(evaluator, num_samples: int) -> dict:
  """The protocol of a `generative.Evaluator`'s own-feature-net metrics."""
  name = evaluator.config.data.name
  bb = Backbone(f'own:{name}', f'own {name} feature net', '', 'none',
                evaluator.net.metadata.get('sha256', ''), None)
  return protocol(bb, num_samples, f'{name} test', evaluator.num_reference)


class TrainingEvaluator:
  """The project's own metrics (a `generative.Evaluator`, or None where the
  dataset has no feature net) and a backbone's (a `SampleMetrics`, or None),
  each with its protocol fields in the row."""

  def __init__(self, own=None, extra: SampleMetrics | None = None):
    self.own, self.extra = own, extra
    # What generative.available_metrics / best_metric read of an Evaluator.
    self.sample_metrics = bool(own is not None and own.sample_metrics)
    self.iwae_k = own.iwae_k if own is not None else 0

  def __call__(self, state, num_samples: int) -> dict:
    out = {}
    if self.own is not None:
      out.update(self.own(state, num_samples))
      if self.own.sample_metrics:
        out.update(protocol_scalars(own_protocol(self.own, num_samples)))
    if self.extra is not None:
      out.update(self.extra(state, num_samples))
      out.update(protocol_scalars(self.extra.protocol(num_samples), self.extra.bb.suffix))
    return out


def training_metrics(config, family, test_images, mesh, echo: Callable = print):
  """`SampleMetrics` of config.eval.features ('inception' / 'dinov2') against
  the test split, or None (with one note) when its weights are not at hand:
  training never downloads."""
  from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
  name = (config.get('eval') or {}).get('features', 'own') or 'own'
  if name == 'own':
    return None
  if not weights_at_hand(name):
    entry = weights.get(name)
    echo(f'note: no {entry.title} metrics during training: its weights are not at hand. '
         f'Fetch them once with `python -m vaegan_jax.metrics.weights {name}` (or set '
         f'${entry.env}=PATH).')
    return None
  bb = get(name, echo=echo)
  dataset = config.data.name
  digest = hashlib.sha256(np.ascontiguousarray(test_images).tobytes()).hexdigest()[:12]
  ref = reference_features(bb, dataset, f'test-{digest}', lambda: test_images, None, mesh,
                           echo=echo)
  return SampleMetrics(config, family, mesh, bb, ref, f'{dataset} test')
