"""Writes the reference outputs tests/test_resize.py compares metrics/resize.py with.

Run with CPU torch and the reference packages from pip, not the project's venv:

  python3.11 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0+cpu torchvision numpy pillow scipy \\
      clean-fid==0.1.35 torch-fidelity==0.4.0 pytorch-fid==0.3.0
  /tmp/torchenv/bin/python tests/golden/make_resize_golden.py

Reference code used (nothing re-typed):
* pytorch_fid: its resize line ``F.interpolate(x, size, mode='bilinear',
  align_corners=False)`` on ``x / 255`` and ``2x - 1`` (pytorch-fid 0.3.0
  ``InceptionV3.forward``), its ``fid_score.calculate_frechet_distance``;
* clean: clean-fid 0.1.35 ``resize.make_resizer('PIL', False, 'bicubic',
  size)`` (``build_resizer('clean')`` at 299), then ``(x - 128) / 128`` as its
  Inception graph (``inception_torchscript.py``) does;
* tf1: torch-fidelity 0.4.0 ``interpolate_bilinear_2d_like_tensorflow1x``
  and ``(x - 128) / 128``, exactly its ``FeatureExtractorInceptionV3.forward``;
* dgm_eval: torchvision ``Resize(size, BICUBIC)`` on the PIL RGB image and
  ``ToTensor`` (dgm-eval's DINOv2 transform, before ``Normalize``).

FID on seeded random weights (tests/inception_random_weights.py): torch-fidelity's
``FeatureExtractorInceptionV3`` (the FID Inception) loaded with them; for tf1
its own forward on the uint8 images; for clean its forward with the resize
step replaced by clean-fid's resized images. Pixels are stored at 1024 random
positions per image (whole 299-px images would make the file large).
"""

import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_sibling(name):
  """tests/<name>.py, read by path."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(HERE), f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


inception_random_weights = _load_sibling('inception_random_weights')

# Only torchvision's PIL transforms are used; its compiled-op registrations
# fail to import against some torch builds, so that one module is stubbed.
sys.modules['torchvision._meta_registrations'] = types.ModuleType('tv_meta_stub')
import torchvision.transforms as TF  # pylint: disable=g-import-not-at-top,wrong-import-position
from cleanfid import resize as clean_resize  # pylint: disable=g-import-not-at-top,wrong-import-position
from pytorch_fid.fid_score import calculate_frechet_distance  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch_fidelity import feature_extractor_inceptionv3 as tfi  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x  # pylint: disable=g-import-not-at-top,wrong-import-position

# (input side, channels, output side): up to the Inception's 299, and down.
CASES = ((28, 1, 299), (32, 3, 299), (64, 3, 299), (96, 3, 40), (50, 3, 37))


def _images(rng, n, size, channels):
  """Random blobs + noise, uint8 NHWC (as make_inception_golden.py)."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.zeros((n, size, size, channels), np.float64)
  for i in range(n):
    for c in range(channels):
      for _ in range(3):
        cy, cx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        out[i, :, :, c] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / s**2)
  out += rng.normal(0, 0.08, out.shape)
  return np.clip(out / out.max() * 255, 0, 255).round().astype(np.uint8)


def _rgb(img):
  return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def reference(img, convention, size):
  """One uint8 HWC image -> the reference's preprocessed HWC float32: the
  Inception's input for pytorch_fid, clean and tf1; [0, 1] for dgm_eval."""
  rgb = _rgb(img)
  if convention == 'pytorch_fid':
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    x = 2 * F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False) - 1
    return x[0].permute(1, 2, 0).numpy()
  if convention == 'clean':
    x = clean_resize.make_resizer('PIL', False, 'bicubic', (size, size))(rgb)
    return ((torch.from_numpy(x) - 128) / 128).numpy()
  if convention == 'tf1':
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)
    return ((x - 128) / 128)[0].permute(1, 2, 0).numpy()
  if convention == 'dgm_eval':
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert('RGB')
    x = TF.Compose([TF.Resize((size, size), TF.InterpolationMode.BICUBIC), TF.ToTensor()])(pil)
    return x.permute(1, 2, 0).numpy()
  raise ValueError(convention)


def main():
  torch.set_num_threads(2)
  rng = np.random.default_rng(5)
  out = {}
  for size, channels, out_size in CASES:
    imgs = _images(rng, 2, size, channels)
    out[f'images_{size}'] = imgs
    idx = rng.integers(0, out_size, (1024, 2))
    out[f'index_{size}'] = idx
    for conv in ('pytorch_fid', 'clean', 'tf1', 'dgm_eval'):
      y = np.stack([reference(im, conv, out_size) for im in imgs])
      out[f'{conv}_{size}'] = y[:, idx[:, 0], idx[:, 1]]

  # FID on random weights: set a = 8 grey 28 px, set b = 8 RGB 32 px.
  net = tfi.FeatureExtractorInceptionV3.__new__(tfi.FeatureExtractorInceptionV3)
  orig_load, orig_lsd = torch.load, torch.nn.Module.load_state_dict
  torch.load = lambda *a, **k: {}
  torch.nn.Module.load_state_dict = lambda self, sd, *a, **k: None
  try:
    net.__init__('inception-v3-compat', ['2048'], feature_extractor_weights_path='unused')
  finally:
    torch.load, torch.nn.Module.load_state_dict = orig_load, orig_lsd
  captured = {k: tuple(v.shape) for k, v in net.state_dict().items()}
  weights = inception_random_weights.random_state(
      {k: v for k, v in captured.items() if not k.endswith('num_batches_tracked')})
  sd = {k: torch.from_numpy(v) for k, v in weights.items()}
  sd.update({k: torch.tensor(0, dtype=torch.long) for k in captured if k.endswith('num_batches_tracked')})
  net.load_state_dict(sd, strict=True)
  net.eval()
  set_a, set_b = _images(rng, 8, 28, 1), _images(rng, 8, 32, 3)
  out['fid_set_a'], out['fid_set_b'] = set_a, set_b
  orig_interp = tfi.interpolate_bilinear_2d_like_tensorflow1x
  for conv in ('clean', 'tf1'):
    feats = []
    for imgs in (set_a, set_b):
      x = torch.from_numpy(_rgb(imgs)).permute(0, 3, 1, 2).contiguous()
      if conv == 'clean':
        resized = np.stack([clean_resize.make_resizer('PIL', False, 'bicubic', (299, 299))(im)
                            for im in _rgb(imgs)])
        tfi.interpolate_bilinear_2d_like_tensorflow1x = (
            lambda *a, r=resized, **k: torch.from_numpy(r).permute(0, 3, 1, 2).contiguous())
      with torch.no_grad():
        feats.append(net(x)[0].double().numpy())
      tfi.interpolate_bilinear_2d_like_tensorflow1x = orig_interp
    fa, fb = feats
    out[f'pool3_{conv}'] = np.concatenate(feats)[:, :256].astype(np.float32)  # size
    out[f'fid_{conv}'] = np.float64(calculate_frechet_distance(
        fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)))
    print(conv, 'FID %.6f' % out[f'fid_{conv}'])
  path = os.path.join(HERE, 'resize.npz')
  np.savez_compressed(path, weights_seed=np.int64(inception_random_weights.SEED), **out)
  print('wrote', path, os.path.getsize(path), 'bytes')


if __name__ == '__main__':
  main()
