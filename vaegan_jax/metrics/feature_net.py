"""The project's own feature network: a small CNN classifier per dataset.

The generative metrics (FID, KID, precision/recall, density/coverage,
classifier score, mode coverage) are computed in the feature space of this
network, not of Inception-v3: Inception weights cannot be downloaded offline,
so the project trains its own classifier on each dataset's train split. Its
numbers are comparable within this project only (same dataset, same weights);
they are *not* "Inception FID" and must not be compared with published values.

  features = the penultimate layer (ReLU activations, `feature_dim` wide),
             L2-normalised per image and multiplied by sqrt(feature_dim)
             (feature map 'l2', the default since format 2): every image's
             feature vector has mean square exactly 1 per dimension, so KID's
             polynomial kernel sees O(1) inner products, and only its
             direction counts, not its length
  probs    = softmax of the logits

Why the direction only: blurring an image lowers the contrast of every
stroke and with it the length of the penultimate vector, so in the raw
space a soft but perfectly legible digit (Gaussian blur, sigma 1 px: the
network still reads 90 % of them) moved further from the real digits than
an illegible one (an elastic warp the network reads 34 % of, or a digit
with 40 % of its strokes erased): FID ranked blur worse than broken or
scrambled strokes, against the eye. The direction keeps what the network
sees in the image; experiments/metric_sanity.py checks every metric along
controlled degradations (README "Evaluation"). Format-1 files (the raw
features divided by one scale, `feature_map` 'scaled') still load and keep
their old feature map, and their own checksum.

Training is deterministic from a seed (data order from
`input_pipeline.global_batch_indices`, augmentation keys `fold_in(key, step)`).
Weights are stored with `flax.serialization` msgpack (never pickle), together
with `<name>.msgpack.sha256` (sha256sum format) and `<name>.json` (metadata:
test accuracy, training settings). The msgpack holds the architecture and the
feature map too, so the checksum covers everything that defines the features
(a metric's `feature_net_sha256` names its feature space).

Where the weights come from (`get`):
  1. shipped with the package: vaegan_jax/metrics/weights/<dataset>.msgpack
     (mnist5k only), so every user's mnist5k numbers are comparable;
  2. the cache, ~/.cache/vaegan_jax/feature_nets/<dataset>-v2.msgpack;
  2b. a format-1 network in the old cache file <dataset>.msgpack is re-saved
     there once with the 'l2' feature map (same weights, no training);
  3. otherwise trained once on first use and written to the cache (by `get`,
     e.g. from the evaluate CLI; the training loop only uses `find` and
     skips its generative metrics until the network exists).

CLI (trains and writes weights, checksum and metadata):

  python -m vaegan_jax.metrics.feature_net --dataset=mnist5k [--out=PATH.msgpack]
"""

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaegan_jax import input_pipeline
from vaegan_jax import progress
from vaegan_jax import sharding as sharding_lib
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'vaegan_jax',
                                 'feature_nets')
FORMAT_VERSION = 2
FEATURE_MAPS = ('l2', 'scaled')  # 'l2': sqrt(D) x unit vector; 'scaled': raw / feature_scale.
DEFAULT_FEATURE_MAP = 'l2'

# Training defaults: steps per dataset (batch 128). mnist5k: ~43 epochs.
DEFAULT_TRAIN_STEPS = {'mnist5k': 1500}
DEFAULT_OTHER_STEPS = 6000


class FeatureNet(nn.Module):
  """Small CNN classifier; works for any (H, W, C) through global pooling.

  x (B, H, W, C) in [0, 1]
    -> 2 x [Conv3x3(w) ReLU] -> MaxPool2 -> 2 x [Conv3x3(2w) ReLU] -> MaxPool2
    -> Conv3x3(4w) ReLU -> global mean -> Dense(feature_dim) ReLU = features
    -> Dense(num_classes) = logits.
  """
  num_classes: int = 10
  width: int = 16
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x):
    """Returns (features (B, feature_dim), logits (B, num_classes)), float32."""
    x = (x.astype(jnp.float32) - 0.5) * 2.0
    for mult in (1, 2):
      for _ in range(2):
        x = nn.relu(nn.Conv(self.width * mult, (3, 3), padding='SAME')(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(self.width * 4, (3, 3), padding='SAME')(x))
    x = jnp.mean(x, axis=(1, 2))
    feats = nn.relu(nn.Dense(self.feature_dim)(x))
    return feats, nn.Dense(self.num_classes)(feats)


def map_features(raw, feature_map: str, feature_scale=1.0):
  """The feature map applied to raw penultimate activations.

  Args:
    raw: (B, D) penultimate ReLU activations.
    feature_map: 'l2' (raw / ||raw|| * sqrt(D), a zero vector stays zero) or
      'scaled' (raw / feature_scale).
    feature_scale: used by 'scaled'.

  Returns:
    (B, D) features.
  """
  if feature_map == 'l2':
    norm = jnp.sqrt(jnp.sum(jnp.square(raw), axis=-1, keepdims=True))
    return raw * (jnp.sqrt(jnp.float32(raw.shape[-1])) / jnp.maximum(norm, 1e-12))
  return raw / feature_scale


@functools.partial(jax.jit, static_argnums=(0, 1))
def _features_and_probs(module, feature_map, params, feature_scale, images):
  feats, logits = module.apply({'params': params}, images)
  return map_features(feats, feature_map, feature_scale), jax.nn.softmax(logits, axis=-1)


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """A loaded feature network.

  Attributes:
    module: the `FeatureNet` (architecture).
    params: its parameters.
    metadata: the metadata dict (dataset, test_accuracy, sha256, …).
    feature_scale: the root mean square of the raw penultimate activations on
      the train split (the 'scaled' map divides by it).
    feature_map: 'l2' or 'scaled' (`map_features`).
  """
  module: FeatureNet
  params: Any
  metadata: dict
  feature_scale: float = 1.0
  feature_map: str = DEFAULT_FEATURE_MAP

  @property
  def feature_dim(self) -> int:
    return self.module.feature_dim

  @property
  def num_classes(self) -> int:
    return self.module.num_classes

  def __call__(self, images):
    """One batch: images (B, H, W, C) in [0, 1] -> (features (B, D), probs (B, K)).

    Jitted; keeps the sharding of `images` (batch axis over devices).
    """
    return _features_and_probs(self.module, self.feature_map, self.params,
                               jnp.float32(self.feature_scale), images)

  def compute(self, images: np.ndarray, batch_size: int = 500, sharding=None, mesh=None,
              on_batch=None):
    """Features and probabilities of a whole host array, in batches.

    The batches are split over the devices of `mesh` (every device of every
    process with `sharding.make_mesh()`) and the results gathered once
    (`sharding.map_batches`); in several processes every process calls this
    with the same images and gets the same result.

    Args:
      images: uint8 (N, H, W, C) or float in [0, 1], the same in every process.
      batch_size: images per jitted call (the last batch is zero-padded, so
        only one shape is compiled); a multiple of the mesh's device count.
      sharding: optional batch sharding (a NamedSharding over 'data'); its
        mesh is used.
      mesh: the devices to split the batches over; default (with no
        `sharding`) this process's first device.
      on_batch: optional callback(num_images) after each batch (progress).

    Returns:
      (features float32 (N, D), probs float32 (N, K)), numpy arrays.
    """
    mesh = sharding.mesh if sharding is not None else mesh
    if mesh is None:
      mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), (sharding_lib.DATA_AXIS,))
    prepare = lambda x: input_pipeline.to_float(x) if x.dtype == np.uint8 else np.asarray(
        x, np.float32)
    return sharding_lib.map_batches(self, images, batch_size, mesh, prepare, on_batch)


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def _augment(key, x, max_shift: int = 2):
  """Random translation by up to `max_shift` pixels (zero fill), per image."""
  b, h, w, _ = x.shape
  shifts = jax.random.randint(key, (b, 2), -max_shift, max_shift + 1)
  padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))

  def crop(img, s):
    return jax.lax.dynamic_slice(img, (max_shift + s[0], max_shift + s[1], 0),
                                 (h, w, img.shape[-1]))

  return jax.vmap(crop)(padded, shifts)


def accuracy(net: FeatureNetwork, images, labels, batch_size: int = 500) -> float:
  """Top-1 accuracy of `net` on uint8 images (N, H, W, C) with labels (N,)."""
  _, probs = net.compute(images, batch_size)
  return float(np.mean(np.argmax(probs, axis=1) == labels))


def train(dataset: str, seed: int = 0, num_steps: int | None = None,
          batch_size: int = 128, learning_rate: float = 2e-3, width: int = 16,
          feature_dim: int = 128, data_dir: str | None = None,
          max_train_examples: int | None = None, verbose: bool = True):
  """Trains the feature network on `dataset`'s train split, deterministically.

  Adam with warm-up and cosine decay, cross-entropy, random shifts of up to
  2 pixels. The result is a pure function of the arguments (and the data).

  Args:
    dataset: a dataset name with class labels (see input_pipeline.DATASETS).
    seed: seeds the initialisation, data order and augmentation.
    num_steps: training steps; default DEFAULT_TRAIN_STEPS or
      DEFAULT_OTHER_STEPS.
    batch_size: images per step.
    learning_rate: peak learning rate.
    width: channels of the first convolution.
    feature_dim: width of the feature (penultimate) layer.
    data_dir: TFDS data dir (see input_pipeline.resolve_data_dir).
    max_train_examples: train on the first N examples only (tests).
    verbose: print progress.

  Returns:
    A FeatureNetwork whose metadata holds train settings, the training time
    and `test_accuracy` on the dataset's test split.
  """
  spec = input_pipeline.get_spec(dataset)
  if not spec.num_classes:
    raise UserError(
        f'Dataset {dataset!r} has no class labels, so the project cannot train '
        f'its feature network on it; evaluate on a labelled dataset instead.')
  num_steps = num_steps or DEFAULT_TRAIN_STEPS.get(dataset, DEFAULT_OTHER_STEPS)
  t0 = time.time()
  images, labels = input_pipeline.load_split(dataset, 'train', data_dir, max_train_examples)
  test_images, test_labels = input_pipeline.load_split(dataset, 'test', data_dir)

  module = FeatureNet(num_classes=spec.num_classes, width=width, feature_dim=feature_dim)
  key = jax.random.PRNGKey(seed)
  init_key, aug_key = jax.random.split(key)
  params = module.init(init_key, jnp.zeros((1, *spec.image_shape), jnp.float32))['params']
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, min(100, num_steps // 10 + 1), num_steps)
  tx = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step_fn(params, opt_state, x, y, step):
    x = _augment(jax.random.fold_in(aug_key, step), x)

    def loss_fn(p):
      _, logits = module.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for step in progress.iterate(range(num_steps), f'feature net {dataset}', unit='step'):
    idx = input_pipeline.global_batch_indices(len(images), batch_size, seed, step)
    params, opt_state, loss = step_fn(params, opt_state,
                                      input_pipeline.to_float(images[idx]),
                                      labels[idx], step)
    losses.append(loss)
    if verbose and ((step + 1) % 200 == 0 or step + 1 == num_steps):
      print(f'feature net {dataset}: step {step + 1}/{num_steps} '
            f'loss {float(np.mean(sharding_lib.to_host(losses[-200:]))):.4f}', flush=True)

  net = FeatureNetwork(module, sharding_lib.to_host(params), {}, feature_map='scaled')
  raw_feats, _ = net.compute(images)
  feature_scale = float(np.sqrt(np.mean(np.square(raw_feats.astype(np.float64)))))
  test_acc = accuracy(net, test_images, test_labels)
  metadata = {
      'dataset': dataset,
      'note': "The project's own classifier, not Inception-v3; metrics in its feature "
              'space are comparable within this project only. Features: the penultimate '
              'layer, L2-normalised per image and scaled by sqrt(feature_dim) (feature map '
              f"'{DEFAULT_FEATURE_MAP}', format {FORMAT_VERSION}).",
      'test_accuracy': test_acc,
      'num_test_examples': int(len(test_labels)),
      'num_train_examples': int(len(labels)),
      'seed': seed, 'num_steps': num_steps, 'batch_size': batch_size,
      'learning_rate': learning_rate, 'augmentation': 'random shifts up to 2 px',
      'architecture': _arch(module), 'feature_scale': feature_scale,
      'feature_map': DEFAULT_FEATURE_MAP,
      'num_params': int(sum(np.size(p) for p in jax.tree.leaves(params))),
      'train_seconds': round(time.time() - t0, 1),
      'jax_version': jax.__version__, 'flax_version': flax.__version__,
  }
  if verbose:
    print(f'feature net {dataset}: test accuracy {test_acc:.4f} on '
          f'{len(test_labels)} test images ({metadata["train_seconds"]} s).', flush=True)
  return FeatureNetwork(module, net.params, metadata, feature_scale, DEFAULT_FEATURE_MAP)


# ---------------------------------------------------------------------------
# Saving and loading, with checksums.
# ---------------------------------------------------------------------------


def _arch(module: FeatureNet) -> dict:
  return {'num_classes': module.num_classes, 'width': module.width,
          'feature_dim': module.feature_dim}


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def checksum_path(path: str) -> str:
  return path + '.sha256'


def metadata_path(path: str) -> str:
  return os.path.splitext(path)[0] + '.json'


def _write_atomic(path: str, data: bytes):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def save(net: FeatureNetwork, path: str) -> str:
  """Writes `path` (msgpack), `path.sha256` and the metadata JSON next to it.

  Returns:
    The sha256 hex digest of the msgpack file.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if net.feature_map not in FEATURE_MAPS:
    raise ValueError(f'feature_map must be one of {FEATURE_MAPS}; got {net.feature_map!r}.')
  payload = {'format_version': FORMAT_VERSION, 'architecture': _arch(net.module),
             'feature_scale': float(net.feature_scale), 'feature_map': net.feature_map,
             'params': jax.tree.map(np.asarray, net.params)}
  data = flax.serialization.msgpack_serialize(payload)
  digest = _sha256(data)
  _write_atomic(path, data)
  _write_atomic(checksum_path(path), f'{digest}  {os.path.basename(path)}\n'.encode())
  meta = {**net.metadata, 'weights_file': os.path.basename(path), 'sha256': digest,
          'size_bytes': len(data), 'format': 'flax.serialization msgpack',
          'format_version': FORMAT_VERSION, 'feature_map': net.feature_map}
  meta.pop('path', None)
  _write_atomic(metadata_path(path), (json.dumps(meta, indent=2, sort_keys=True) + '\n').encode())
  return digest


def load(path: str) -> FeatureNetwork:
  """Loads weights written by `save`, verifying the sha256 checksum first.

  Raises:
    UserError: the weights or checksum file is missing, the checksum does not
      match (file altered or corrupt), or the contents are not a feature net.
  """
  fix = ('Re-train it with `python -m vaegan_jax.metrics.feature_net '
         '--dataset=NAME --out=PATH`, or restore the file from the repository.')
  if not os.path.exists(path):
    raise UserError(f'Feature-net weights {path} are missing. {fix}')
  sums = checksum_path(path)
  if not os.path.exists(sums):
    raise UserError(f'Checksum file {sums} of the feature-net weights is missing, so '
                    f'they cannot be verified. {fix}')
  with open(path, 'rb') as f:
    data = f.read()
  with open(sums) as f:
    expected = f.read().split()[:1]
  actual = _sha256(data)
  if expected != [actual]:
    raise UserError(
        f'Feature-net weights {path} do not match their checksum (sha256 '
        f'{actual[:12]}…, expected {(expected or ["<empty>"])[0][:12]}…): the file '
        f'was altered or is corrupt. {fix}')
  try:
    payload = flax.serialization.msgpack_restore(data)
    module = FeatureNet(**{k: int(v) for k, v in payload['architecture'].items()})
    params = payload['params']
    feature_scale = float(payload['feature_scale'])
    feature_map = str(payload.get('feature_map', 'scaled'))  # Format 1: the raw map.
    if feature_map not in FEATURE_MAPS:
      raise ValueError(f'unknown feature_map {feature_map!r}')
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'Feature-net weights {path} are not a feature network '
                    f'({type(e).__name__}: {e}). {fix}') from None
  meta_file = metadata_path(path)
  metadata = {}
  if os.path.exists(meta_file):
    with open(meta_file) as f:
      metadata = json.load(f)
  metadata['sha256'] = actual
  metadata['path'] = path
  metadata['feature_map'] = feature_map
  return FeatureNetwork(module, jax.tree.map(jnp.asarray, params), metadata, feature_scale,
                        feature_map)


def shipped_path(dataset: str, weights_dir: str = WEIGHTS_DIR) -> str:
  return os.path.join(weights_dir, f'{dataset}.msgpack')


def cache_path(dataset: str, cache_dir: str | None = None) -> str:
  """<cache>/<dataset>-v2.msgpack: the key names the format (and feature map)."""
  return os.path.join(cache_dir or DEFAULT_CACHE_DIR, f'{dataset}-v{FORMAT_VERSION}.msgpack')


def legacy_cache_path(dataset: str, cache_dir: str | None = None) -> str:
  """Where format-1 networks ('scaled' feature map) were cached."""
  return os.path.join(cache_dir or DEFAULT_CACHE_DIR, f'{dataset}.msgpack')


def _convert_legacy(dataset: str, cache_dir: str | None) -> FeatureNetwork | None:
  """A format-1 cached network, verified and re-saved with the 'l2' feature
  map under `cache_path` (the same weights: the training recipe did not
  change), or None if there is none. The old file is left alone."""
  old = legacy_cache_path(dataset, cache_dir)
  if not os.path.exists(old):
    return None
  net = load(old)
  new = cache_path(dataset, cache_dir)
  save(dataclasses.replace(net, feature_map=DEFAULT_FEATURE_MAP), new)
  print(f'note: feature network {old} re-saved as {new} with the {DEFAULT_FEATURE_MAP!r} '
        'feature map (same weights; metrics in it differ from the old file\'s).', flush=True)
  return load(new)


def _check_dataset(dataset: str):
  """UserError for unknown datasets and for folder:PATH (no feature net yet)."""
  if input_pipeline.is_folder(dataset):
    raise UserError(f'No feature network (FID, KID, precision/recall) for {dataset}: '
                    'they exist only for the TFDS datasets so far.')
  input_pipeline.get_spec(dataset)


def find(dataset: str, cache_dir: str | None = None,
         weights_dir: str = WEIGHTS_DIR) -> FeatureNetwork | None:
  """The shipped or cached (checksum-verified) network of `dataset`, or None.

  A network cached in format 1 is converted once (`_convert_legacy`).
  """
  _check_dataset(dataset)
  for path in (shipped_path(dataset, weights_dir), cache_path(dataset, cache_dir)):
    if os.path.exists(path):
      return load(path)
  return _convert_legacy(dataset, cache_dir)


def get(dataset: str, data_dir: str | None = None, cache_dir: str | None = None,
        weights_dir: str = WEIGHTS_DIR, **train_kwargs) -> FeatureNetwork:
  """The feature network of `dataset`: shipped, cached, or trained now.

  Args:
    dataset: dataset name.
    data_dir: TFDS data dir, used only when training.
    cache_dir: where trained networks are cached (default
      ~/.cache/vaegan_jax/feature_nets).
    weights_dir: where shipped weights live.
    **train_kwargs: passed to `train` when the network must be trained.

  Returns:
    A checksum-verified FeatureNetwork.
  """
  net = find(dataset, cache_dir, weights_dir)
  if net is not None:
    return net
  path = cache_path(dataset, cache_dir)
  print(f'No feature network for {dataset!r} yet: training the project\'s own '
        f'classifier once (cached in {path}).', flush=True)
  save(train(dataset, data_dir=data_dir, **train_kwargs), path)
  return load(path)


# ---------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('dataset', 'mnist5k', 'Dataset whose train split to train on.')
  flags.DEFINE_string('out', '', 'Weights path (.msgpack); default the cache, '
                      f'~/.cache/vaegan_jax/feature_nets/<dataset>-v{FORMAT_VERSION}.msgpack.')
  flags.DEFINE_integer('seed', 0, 'Seed of initialisation, data order and augmentation.')
  flags.DEFINE_integer('num_steps', 0, 'Training steps; 0 = the dataset default.')
  flags.DEFINE_string('data_dir', '', 'TFDS data dir; default as in training.')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:  # A wrong --dataset is a usage error (exit 2), checked before any work.
    _check_dataset(f.dataset)
  except UserError as exc:
    raise UsageError(str(exc)) from None
  out = f.out or cache_path(f.dataset)
  net = train(f.dataset, seed=f.seed, num_steps=f.num_steps or None,
              data_dir=f.data_dir or None)
  digest = save(net, out)
  load(out)  # Verifies what was written.
  print(f'Wrote {out} ({os.path.getsize(out)} bytes, sha256 {digest}), '
        f'{checksum_path(out)} and {metadata_path(out)}; test accuracy '
        f'{net.metadata["test_accuracy"]:.4f}.', flush=True)


if __name__ == '__main__':
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
