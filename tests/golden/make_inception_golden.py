"""Writes the reference outputs tests/test_inception.py compares the JAX port with.

Run with torch (CPU wheel) and the reference sources unpacked, not with the
project's venv (CI has no torch; it only reads what this writes):

  python3.11 -m venv /tmp/venv-ref && /tmp/venv-ref/bin/pip install torch==2.13.0 numpy scipy
  pip download --no-deps torch-fidelity==0.4.0 pytorch-fid==0.3.0 -d /tmp/ref
  (cd /tmp/ref && unzip -o torch_fidelity-0.4.0-*.whl -d tf && unzip -o pytorch_fid-0.3.0-*.whl -d fid)
  /tmp/venv-ref/bin/python tests/golden/make_inception_golden.py --ref=/tmp/ref

Reference code used, file by file (nothing re-typed):
* torch-fidelity 0.4.0 ``feature_extractor_inceptionv3.py``: the FID
  Inception network and its forward pass (loaded without the package
  ``__init__``; three helper imports are stubbed). Its blocks are the same as
  pytorch-fid 0.3.0's ``FIDInceptionA/C/E_1/E_2`` (checked by reading:
  count_include_pad=False average pools, max pool in Mixed_7c, BN eps 1e-3,
  1008 classes). Its TF1-style resize is replaced by pytorch-fid's own line,
  ``F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)``
  on ``x / 255``, scaled so torch-fidelity's ``(x - 128) / 128`` becomes
  pytorch-fid's ``2x - 1`` bit for bit.
* pytorch-fid 0.3.0 ``fid_score.py``: ``calculate_frechet_distance`` (taken
  out of the file with ``ast``; the module imports torchvision).
* torch-fidelity ``metric_isc.py``: ``isc_features_to_metric``;
  ``metric_kid.py``: ``mmd2`` and ``kernel_poly`` (also via ``ast``).

Weights: tests/inception_random_weights.py (seeded numpy), rebuilt by the test.
Also writes two tiny state dicts with the FID Inception's keys (torch's zip and
legacy formats) for the converter's tests.
"""

import argparse
import ast
import hashlib
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

def _load_sibling(name):
  """tests/<name>.py, read by path."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(HERE), f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


inception_random_weights = _load_sibling('inception_random_weights')

SIZES = ((28, 1), (32, 3), (64, 1), (64, 3), (32, 1), (28, 3))


def _functions(path, names, namespace):
  """Exec only the named top-level functions of a source file."""
  tree = ast.parse(open(path).read())
  body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
  assert len(body) == len(names), (path, names)
  exec(compile(ast.Module(body=body, type_ignores=[]), path, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def _load_fidelity_extractor(ref):
  pkg = types.ModuleType('torch_fidelity')
  pkg.__path__ = []
  base = types.ModuleType('torch_fidelity.feature_extractor_base')

  class FeatureExtractorBase(torch.nn.Module):
    def __init__(self, name, features_list):
      super().__init__()
      self.name, self.features_list = name, list(features_list)

  base.FeatureExtractorBase = FeatureExtractorBase
  helpers = types.ModuleType('torch_fidelity.helpers')

  def vassert(cond, msg):
    if not cond:
      raise ValueError(msg)

  helpers.vassert = vassert
  helpers.text_to_dtype = lambda name, default: getattr(torch, name or default)
  helpers.get_kwarg = lambda name, kwargs: kwargs.get(name, False)
  interp = types.ModuleType('torch_fidelity.interpolate_compat_tensorflow')
  interp.interpolate_bilinear_2d_like_tensorflow1x = None
  for m in (pkg, base, helpers, interp):
    sys.modules[m.__name__] = m
  path = os.path.join(ref, 'tf', 'torch_fidelity', 'feature_extractor_inceptionv3.py')
  mod = types.ModuleType('torch_fidelity.feature_extractor_inceptionv3')
  mod.__file__ = path
  exec(compile(open(path).read(), path, 'exec'), mod.__dict__)  # pylint: disable=exec-used

  def pytorch_fid_resize(x, size, align_corners):
    # pytorch-fid: F.interpolate on x in [0, 1], then 2x - 1. torch-fidelity
    # then applies (r - 128) / 128, so r = 256 * y gives 2y - 1 exactly.
    assert not align_corners
    y = F.interpolate(x / 255.0, size=size, mode='bilinear', align_corners=False)
    return 256.0 * y

  mod.interpolate_bilinear_2d_like_tensorflow1x = pytorch_fid_resize
  return mod


def _images(rng, n, size, channels):
  """Smooth random images (blobs + noise), uint8 NHWC."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.zeros((n, size, size, channels), np.float64)
  for i in range(n):
    for c in range(channels):
      for _ in range(3):
        cy, cx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        out[i, :, :, c] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / s**2)
  out += rng.normal(0, 0.05, out.shape)
  return np.clip(out / out.max() * 255, 0, 255).round().astype(np.uint8)


def _to_torch_input(images):
  """uint8 NHWC, 1 or 3 channels -> uint8 NCHW with 3 channels."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--ref', required=True, help='folder with tf/ and fid/ unpacked wheels')
  parser.add_argument('--out', default=os.path.join(HERE, 'inception.npz'))
  parser.add_argument('--full_pth', default='', help='also write the full random weights '
                      'as a torch .pth here (for a converter check by hand)')
  args = parser.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(2)

  mod = _load_fidelity_extractor(args.ref)
  # Build the reference module without weights (load_state_dict and torch.load
  # stubbed for the constructor), read its layout, then load the seeded weights.
  orig_load, orig_lsd = torch.load, torch.nn.Module.load_state_dict
  torch.load = lambda *a, **k: {}
  torch.nn.Module.load_state_dict = lambda self, sd, *a, **k: None
  try:
    net = mod.FeatureExtractorInceptionV3('inception', ['2048', 'logits', 'logits_unbiased'],
                                          feature_extractor_weights_path='unused')
  finally:
    torch.load, torch.nn.Module.load_state_dict = orig_load, orig_lsd
  captured = {k: tuple(v.shape) for k, v in net.state_dict().items()}
  shapes = {k: v for k, v in captured.items() if not k.endswith('num_batches_tracked')}
  weights = inception_random_weights.random_state(shapes)
  sd = {k: torch.from_numpy(v) for k, v in weights.items()}
  sd.update({k: torch.tensor(0, dtype=torch.long) for k in captured
             if k.endswith('num_batches_tracked')})
  net.load_state_dict(sd, strict=True)
  net.eval()
  if args.full_pth:
    torch.save(sd, args.full_pth)
  print(f'{len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes.values())} weights')

  rng = np.random.default_rng(1)
  set_a = _images(rng, 8, 28, 1)
  set_b = _images(rng, 8, 32, 3)
  outs = {}
  with torch.no_grad():
    for name, imgs in (('a', set_a), ('b', set_b)):
      pool3, logits, unbiased = net(_to_torch_input(imgs))
      outs[name] = (pool3.double().numpy(), logits.double().numpy(), unbiased.double().numpy())
      print(name, 'pool3 mean %.3f std %.3f; logits std %.3f' % (
          pool3.mean(), pool3.std(), logits.std()))

  # Activation scale through the network (weights must keep it O(1)).
  acts = {}
  hooks = [getattr(net, n).register_forward_hook(
      lambda m, i, o, n=n: acts.__setitem__(n, float(o.float().std())))
           for n in ('Conv2d_4a_3x3', 'Mixed_5d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7c')]
  with torch.no_grad():
    net(_to_torch_input(set_b))
  for h in hooks:
    h.remove()
  print('activation std per block:', {k: round(v, 3) for k, v in acts.items()})

  ns = _functions(os.path.join(args.ref, 'fid', 'pytorch_fid', 'fid_score.py'),
                  ['calculate_frechet_distance'], {'np': np, 'linalg': __import__('scipy.linalg').linalg})
  fa, fb = outs['a'][0], outs['b'][0]
  fid = ns['calculate_frechet_distance'](fa.mean(0), np.cov(fa, rowvar=False),
                                         fb.mean(0), np.cov(fb, rowvar=False))
  print('FID (pytorch-fid) %.6f' % fid)

  kid_ns = _functions(os.path.join(args.ref, 'tf', 'torch_fidelity', 'metric_kid.py'),
                      ['mmd2', 'kernel_poly'],
                      {'np': np, 'get_kwarg': lambda name, kw: kw[name],
                       'vassert': lambda c, m: None})
  kx = kid_ns['kernel_poly'](fa, fa, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                             kid_kernel_poly_coef0=1)
  ky = kid_ns['kernel_poly'](fb, fb, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                             kid_kernel_poly_coef0=1)
  kxy = kid_ns['kernel_poly'](fa, fb, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                              kid_kernel_poly_coef0=1)
  kid = kid_ns['mmd2'](kx, kxy, ky)
  print('KID (torch-fidelity, whole sets) %.6g' % kid)

  isc_ns = _functions(os.path.join(args.ref, 'tf', 'torch_fidelity', 'metric_isc.py'),
                      ['isc_features_to_metric'],
                      {'np': np, 'torch': torch, 'KEY_METRIC_ISC_MEAN': 'mean',
                       'KEY_METRIC_ISC_STD': 'std'})
  unbiased = np.concatenate([outs['a'][2], outs['b'][2]])
  isc = isc_ns['isc_features_to_metric'](torch.from_numpy(unbiased).float(), splits=4,
                                         shuffle=True, rng_seed=2020)
  print('IS (torch-fidelity, 4 splits) %.6f +- %.6f' % (isc['mean'], isc['std']))

  # Resize + scaling: interpolation matrices (F.interpolate of one-hot rows)
  # and end-to-end pixels of whole images.
  resize = {}
  prng = np.random.default_rng(2)
  idx = prng.integers(0, 299, (1024, 2))
  for size, channels in SIZES:
    eye = torch.eye(size, dtype=torch.float32).reshape(size, 1, size, 1)
    mat = F.interpolate(eye.expand(size, 1, size, 2).contiguous(), size=(299, 2),
                        mode='bilinear', align_corners=False)[:, 0, :, 0].T.numpy()
    resize[f'matrix_{size}'] = mat
    img = _images(prng, 1, size, channels)
    x = _to_torch_input(img).float() / 255.0
    y = 2 * F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False) - 1
    resize[f'image_{size}_{channels}'] = img
    resize[f'pixels_{size}_{channels}'] = y[0].permute(1, 2, 0).numpy()[idx[:, 0], idx[:, 1]]
  resize['pixel_index'] = idx

  np.savez_compressed(
      args.out, set_a=set_a, set_b=set_b,
      pool3_a=outs['a'][0].astype(np.float32), logits_a=outs['a'][1].astype(np.float32),
      unbiased_a=outs['a'][2].astype(np.float32),
      pool3_b=outs['b'][0].astype(np.float32), logits_b=outs['b'][1].astype(np.float32),
      unbiased_b=outs['b'][2].astype(np.float32),
      fid=np.float64(fid), kid=np.float64(kid), is_mean=np.float64(isc['mean']),
      is_std=np.float64(isc['std']), weights_seed=np.int64(inception_random_weights.SEED),
      **resize)
  print('wrote', args.out, os.path.getsize(args.out), 'bytes')

  # Tiny state dicts with every key (values: key index + 0.25; fc.weight a
  # transposed, non-contiguous 2x3 view; counters int64), zip and legacy.
  tiny = {}
  for i, k in enumerate(sorted(captured)):
    if k.endswith('num_batches_tracked'):
      tiny[k] = torch.tensor(i, dtype=torch.long)
    elif k == 'fc.weight':
      tiny[k] = torch.arange(6, dtype=torch.float32).reshape(3, 2).T
    else:
      tiny[k] = torch.full((1,) * len(captured[k]), i + 0.25, dtype=torch.float32)
  for fmt, zipped in (('zip', True), ('legacy', False)):
    tmp_path = os.path.join(HERE, f'tiny_inception_{fmt}.tmp')
    torch.save(tiny, tmp_path, _use_new_zipfile_serialization=zipped)
    digest = hashlib.sha256(open(tmp_path, 'rb').read()).hexdigest()
    final = os.path.join(HERE, f'tiny_inception_{fmt}-{digest[:8]}.pth')
    for old in os.listdir(HERE):
      if old.startswith(f'tiny_inception_{fmt}-'):
        os.remove(os.path.join(HERE, old))
    os.replace(tmp_path, final)
    print('wrote', final, os.path.getsize(final), 'bytes')


if __name__ == '__main__':
  main()
