"""FID and friends between two sets of images: `python -m vaegan_jax.fid A B`.

  python -m vaegan_jax.fid samples/ ~/data/cifar10_train/            # Inception FID
  python -m vaegan_jax.fid runs/vae ref.npz --features=dinov2 --num=50000
  python -m vaegan_jax.fid A B --features=own:mnist5k --out=fid.json
  python -m vaegan_jax.fid ~/data/train/ - --save_stats=train_stats.npz

A and B may each be
  a folder of images   PNG/JPEG/WebP/BMP/TIFF, recursive, any size, grey or colour
                       (sorted by path; --num=N takes A's first N, --num_reference
                       B's);
  an .npz of images    key 'images' (or its only array), uint8 (N, H, W[, C]) or
                       float in [0, 1];
  a workdir            N samples drawn from its latest checkpoint exactly as
                       `evaluate` draws them (--step picks another);
  statistics           an .npz written by --save_stats (same backbone, weights
                       and resize, else refused).
B may be '-' with --save_stats: only A's statistics are written.

A plays the samples, B the reference: the JSON holds FID (FD for DINOv2), KID,
precision/recall (k=3), density/coverage (k=5) in the chosen feature space,
the Inception Score of A for --features=inception, and the protocol (backbone,
weights sha256, resize, counts, paths); stdout ends with one line to paste,
e.g. `FID-10k (Inception, pytorch_fid resize, A 10000 vs B 50000) = 9.01`.
Features are computed in batches split over every device; the weights are
downloaded and checked on first use (vaegan_jax/metrics/weights.py).
"""

import json
import os
import sys

from absl import flags
import numpy as np

from vaegan_jax import progress
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.tif', '.tiff')
_CHUNK = 512  # Images read from disk per featurised chunk.


def define_flags():
  flags.DEFINE_string('features', 'inception', "Feature space: 'inception' (the FID "
                      "Inception), 'dinov2' (FD-DINOv2, ViT-L/14) or 'own:DATASET' (the "
                      "project's feature net of DATASET, e.g. own:mnist5k).")
  flags.DEFINE_string('resize', '', "Resize convention: pytorch_fid, clean, tf1, dgm_eval; "
                      "'' = the backbone's default (pytorch_fid for Inception, dgm_eval "
                      'for DINOv2).')
  flags.DEFINE_integer('num', 0, 'Images of A: the first N of a folder or .npz, or N '
                       'samples of a workdir; 0 = all (a workdir: 50000, or 10000 with '
                       'own features).')
  flags.DEFINE_integer('num_reference', 0, 'Images of B likewise; 0 = all (a workdir: as '
                       '--num).')
  flags.DEFINE_string('out', '', 'JSON file to write; the JSON is printed either way.')
  flags.DEFINE_string('save_stats', '', "Write A's features and statistics to this .npz "
                      '(a later run takes it in place of A or B).')
  flags.DEFINE_string('step', '', "A workdir's checkpoint step ('' = latest, 'best').")
  flags.DEFINE_string('inception_weights', '', "FID Inception weights at hand (pytorch-fid's "
                      '.pth or its .npz); default $VAEGAN_JAX_INCEPTION, else downloaded once.')
  flags.DEFINE_string('dinov2_weights', '', 'DINOv2 ViT-L/14 weights at hand (the official '
                      '.pth or its .npz); default $VAEGAN_JAX_DINOV2, else downloaded once.')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir for own:DATASET feature nets trained '
                      'on first use.')


# ---------------------------------------------------------------------------
# Reading the inputs.
# ---------------------------------------------------------------------------


def image_files(folder: str) -> list[str]:
  """Every image file under `folder`, recursive, sorted by relative path."""
  out = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    out.extend(os.path.join(root, f) for f in sorted(files)
               if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))
  return out


def _read_image(path: str, channels: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    img.load()
    if channels == 3 and img.mode in ('L', 'LA', '1', 'I', 'I;16', 'F'):
      img = img.convert('L').convert('RGB')
    else:
      img = img.convert('RGB' if channels == 3 else 'L')
    arr = np.asarray(img, np.uint8)
  return arr.reshape(*arr.shape[:2], channels)


def _bad_inputs(what: str, bad: list) -> UserError:
  shown = '; '.join(f'{p} ({r})' for p, r in bad[:3])
  more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
  return UserError(f'{len(bad)} file(s) in {what} cannot be read as images: {shown}{more}. '
                   'Remove or replace them.')


def _fit(images: list, shape: tuple | None):
  """Centre crop + resize to `shape` where an image has another size (own
  feature nets take their dataset's size); returns (images, whether any was)."""
  if shape is None:
    return images, False
  from vaegan_jax.data import sources  # pylint: disable=g-import-not-at-top
  fitted = [sources.fit_image(x, shape) for x in images]
  return fitted, any(a is not b for a, b in zip(fitted, images))


def _featurize_list(bb, images: list, mesh) -> dict:
  """Features of a list of uint8 images, grouped by shape (one compilation
  per shape), returned in the list's order."""
  groups = {}
  for i, x in enumerate(images):
    groups.setdefault(x.shape, []).append(i)
  parts, order = [], []
  for idx in groups.values():
    parts.append(bb.features(np.stack([images[i] for i in idx]), mesh))
    order.extend(idx)
  inverse = np.argsort(np.asarray(order))
  return {k: np.concatenate([p[k] for p in parts])[inverse] for k in parts[0]}


def _concat(dicts: list) -> dict:
  return {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]}


def folder_features(bb, folder: str, num: int, mesh):
  """Features of the first `num` (0 = all) images of `folder`; (feats, count, fitted)."""
  files = image_files(folder)
  if not files:
    raise UserError(f'{folder} holds no image files ({", ".join(IMAGE_EXTENSIONS)}).')
  files = files[:num] if num else files
  channels = bb.input_shape[-1] if bb.input_shape else 3
  out, bad, fitted = [], [], False
  with progress.bar(len(files), f'{folder} -> {bb.name} features', 'img') as bar:
    for start in range(0, len(files), _CHUNK):
      images = []
      for path in files[start:start + _CHUNK]:
        try:
          images.append(_read_image(path, channels))
        except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
          bad.append((path, type(e).__name__))
      if bad:
        continue  # Read on, to name every bad file at once.
      images, f = _fit(images, bb.input_shape)
      fitted |= f
      out.append(_featurize_list(bb, images, mesh))
      bar.update(len(images))
  if bad:
    raise _bad_inputs(folder, bad)
  return _concat(out), len(files), fitted


def npz_images(path: str) -> np.ndarray:
  """The images of an .npz: key 'images', else 'arr_0', else its only array."""
  try:
    with np.load(path, allow_pickle=False) as data:
      keys = data.files
      key = ('images' if 'images' in keys else 'arr_0' if 'arr_0' in keys
             else keys[0] if len(keys) == 1 else None)
      if key is None:
        raise UserError(f'{path} has arrays {", ".join(keys[:6])}: name the images '
                        "'images' (or save a single array).")
      x = data[key]
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'{path} cannot be read as an .npz ({type(e).__name__}: {e}).') from None
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or not len(x):
    raise UserError(f'{path}: images must have shape (N, H, W) or (N, H, W, 1|3|4); got '
                    f'{x.shape}.')
  x = x[..., :3]
  if x.dtype != np.uint8:
    x = x.astype(np.float32)
    if x.min() < 0 or x.max() > 1:
      raise UserError(f'{path}: float images must lie in [0, 1]; got [{x.min():.3g}, '
                      f'{x.max():.3g}].')
  return x


def array_features(bb, images: np.ndarray, what: str, mesh):
  """Features of an (N, H, W, C) array (uint8 or [0, 1] float); (feats, fitted)."""
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  fitted = False
  if bb.input_shape is not None and images.shape[1:] != tuple(bb.input_shape):
    from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    u8 = images if images.dtype == np.uint8 else inception.quantize(images)
    images, fitted = np.stack(_fit(list(u8), bb.input_shape)[0]), True
  return backbones.featurize_array(bb, images, mesh, f'{what} -> {bb.name} features'), fitted


def workdir_samples(workdir: str, num: int, mesh, step: str = ''):
  """`num` samples of a workdir's checkpoint, drawn as `evaluate` draws them
  (`backbones.draw_samples`); (float32 (num, H, W, C) in [0, 1], step)."""
  from vaegan_jax import evaluate  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  config, family, state, chosen = evaluate.load_state(workdir, step, mesh)
  return backbones.draw_samples(config, family, state, num, mesh, f'{workdir}: samples'), chosen


def kind_of(path: str) -> str:
  """'stats', 'npz', 'workdir' or 'folder' (UserError otherwise)."""
  if os.path.isdir(path):
    return 'workdir' if os.path.isfile(os.path.join(path, 'config.json')) else 'folder'
  if os.path.isfile(path) and path.endswith('.npz'):
    from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
    return 'stats' if backbones.is_stats(path) else 'npz'
  if not os.path.exists(path):
    raise UserError(f'{path} does not exist.')
  raise UserError(f'{path} is not a folder of images, an .npz of images or statistics, '
                  'or a workdir.')


def load_set(path: str, bb, num: int, mesh, step: str = '', default_samples: int = 0):
  """Features of one input; returns (features dict, description dict)."""
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  kind = kind_of(path)
  desc = {'path': os.path.abspath(path), 'kind': kind}
  fitted = False
  if kind == 'stats':
    feats, source = backbones.load_stats(path, bb)
    if num and num < len(feats['features']):
      feats = {k: v[:num] for k, v in feats.items()}
    desc['source'] = source
  elif kind == 'npz':
    images = npz_images(path)
    feats, fitted = array_features(bb, images[:num] if num else images, path, mesh)
  elif kind == 'workdir':
    images, chosen = workdir_samples(path, num or default_samples, mesh, step)
    feats, fitted = array_features(bb, images, path, mesh)
    desc['step'] = int(chosen)
  else:
    feats, _, fitted = folder_features(bb, path, num, mesh)
  desc['count'] = int(len(feats['features']))
  if fitted:
    desc['fitted_to'] = 'x'.join(map(str, bb.input_shape))
  return feats, desc


def _label(path: str) -> str:
  return os.path.basename(os.path.normpath(path)) or path


def run(a: str, b: str, features: str = 'inception', resize: str = '', num: int = 0,
        out: str = '', save_stats: str = '', step: str = '', inception_weights: str = '',
        dinov2_weights: str = '', data_dir: str = '', num_reference: int = 0,
        echo=print) -> dict:
  """The metrics of A (samples) against B (reference); see the module doc.

  Returns:
    {metric: float, ..., 'protocol': {backbone: fields}, 'a': ..., 'b': ...,
     'line': the paste-able line}; with b '-' (only --save_stats) just the
     description of A.
  """
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  if num < 0 or num_reference < 0:
    raise UsageError(f'--num={num} and --num_reference={num_reference} must be >= 0.')
  if b == '-' and not save_stats:
    raise UsageError("B '-' (no reference) needs --save_stats=FILE.")
  for p in (a, b):  # Inputs first: a typo fails before the weights load.
    if p != '-':
      kind_of(p)
  weights_path = {'inception': inception_weights, 'dinov2': dinov2_weights}.get(
      features.split(':')[0], '')
  bb = backbones.get(features, resize, weights_path, data_dir or None, echo=echo)
  mesh = sharding.make_mesh()
  default = 10000 if bb.name.startswith('own') else 50000
  fa, da = load_set(a, bb, num, mesh, step, default)
  if save_stats:
    backbones.save_stats(save_stats, bb, fa, da['path'])
    echo(f'Wrote {save_stats} ({da["count"]} images of {a}, {bb.name}).')
  if b == '-':
    return {'a': da, 'stats': os.path.abspath(save_stats)}
  fb, db = load_set(b, bb, num_reference, mesh, step, num or default)
  for d, f in ((da, fa), (db, fb)):
    if len(f['features']) < 2:
      raise UserError(f'{d["path"]} gives {len(f["features"])} image(s); FID needs at least 2.')
  result = bb.metrics(fb, fa)
  proto = backbones.protocol(bb, da['count'], f'{_label(b)}', db['count'],
                             samples=f'{_label(a)}')
  if 'fitted_to' in da or 'fitted_to' in db:
    proto['resize'] = f'fit to {da.get("fitted_to") or db.get("fitted_to")} (centre crop, PIL)'
  result.update(protocol={bb.name: proto}, a=da, b=db,
                line=backbones.line(bb, result[bb.fd_key], proto))
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      json.dump(result, f, indent=2, sort_keys=True)
      f.write('\n')
  return result


def main(argv):
  if len(argv) != 3:
    raise UsageError('usage: python -m vaegan_jax.fid A B [--features=...] '
                     '(A, B: folders, .npz files, workdirs or saved statistics).')
  from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top
  kernels.setup()  # Before anything compiles: a workdir's samples are evaluate's bits.
  echo = lambda m: print(m, file=sys.stderr, flush=True)
  result = run(argv[1], argv[2], FLAGS.features, FLAGS.resize, FLAGS.num, FLAGS.out,
               FLAGS.save_stats, FLAGS.step, FLAGS.inception_weights, FLAGS.dinov2_weights,
               FLAGS.data_dir, FLAGS.num_reference, echo=echo)
  print(json.dumps(result, indent=2, sort_keys=True), flush=True)
  if 'line' in result:
    print(result['line'], flush=True)


def cli_main():
  """The `vaegan-fid` command: the same as `python -m vaegan_jax.fid`."""
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  cli_main()
