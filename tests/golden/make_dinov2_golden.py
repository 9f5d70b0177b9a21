"""Writes the reference outputs tests/test_dinov2.py compares metrics/dinov2.py with.

Run with CPU torch and the reference sources, not with the project's venv (the
test suite has no torch; it only reads what this writes):

  python3.11 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0+cpu torchvision numpy pillow
  # facebookresearch/dinov2 (commit b8931f7b): dinov2/__init__.py, layers/, models/
  git -C DINOV2_CLONE archive HEAD dinov2/__init__.py dinov2/layers dinov2/models | tar -x -C /tmp/dinov2src
  # layer6ai-labs/dgm-eval (commit 74c79f75): its DINOv2 encoder and resizer,
  # in empty packages (the package __init__s import every encoder)
  git -C DGM_EVAL_CLONE archive HEAD dgm_eval/models/dinov2.py dgm_eval/models/encoder.py \
      dgm_eval/resizer.py | tar -x -C /tmp/dgmsrc
  touch /tmp/dgmsrc/dgm_eval/__init__.py /tmp/dgmsrc/dgm_eval/models/__init__.py
  XFORMERS_DISABLED=1 /tmp/torchenv/bin/python tests/golden/make_dinov2_golden.py \
      --dinov2=/tmp/dinov2src --dgm_eval=/tmp/dgmsrc

Reference code used (nothing re-typed):
* dinov2 ``models/vision_transformer.py``: ``vit_large`` with the hub's
  ``dinov2_vitl14`` settings (``hub/backbones.py``: img_size 518, patch 14,
  init_values 1.0, mlp FFN, no block chunks, no registers, interpolate_offset
  0.1, no antialias), and the same class at depth 2 for the small golden;
  the forward is the eval ``model(x)`` (= ``head(x_norm_clstoken)``, head the
  identity) as dgm-eval calls it.
* dgm-eval ``models/dinov2.py``: ``DINOv2Encoder.transform`` (torchvision
  ``Resize((224, 224), BICUBIC)`` on the PIL image, ``ToTensor``, ImageNet
  ``Normalize``; ``clean_resize=True``: ``resizer.pil_resize``), applied to
  ``Image.fromarray(img).convert('RGB')`` as its ``ImagePathDataset`` does.
* torch ``F.interpolate(mode='bicubic', scale_factor=...)`` on one-hot rows:
  the position-embedding interpolation matrices.

Weights: tests/dinov2_random_weights.py (seeded numpy), rebuilt by the test.
Also writes tiny_dinov2-<sha256[:8]>.pth: a 1-block, 64-wide model as torch saves it
(default init), for the restricted reader and the converter.
"""

import argparse
import functools
import hashlib
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


dinov2_random_weights = _load_sibling('dinov2_random_weights')

# (input side, channels): the full ViT-L runs on all at 224 px.
SIZES = ((28, 1), (32, 3), (64, 3), (224, 3))


def _images(rng, n, size, channels):
  """Random blobs + noise, uint8 NHWC (as tests/golden/make_inception_golden.py)."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.zeros((n, size, size, channels), np.float64)
  for i in range(n):
    for c in range(channels):
      for _ in range(3):
        cy, cx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        out[i, :, :, c] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / s**2)
  out += rng.normal(0, 0.08, out.shape)
  return np.clip(out / out.max() * 255, 0, 255).round().astype(np.uint8)


def build(vits, block_fn, depth):
  model = vits.DinoVisionTransformer(
      img_size=518, patch_size=14, embed_dim=1024, depth=depth, num_heads=16, mlp_ratio=4,
      block_fn=block_fn, init_values=1.0, ffn_layer='mlp', block_chunks=0,
      num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  weights = dinov2_random_weights.random_state(shapes)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  return model.eval()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--dinov2', required=True)
  parser.add_argument('--dgm_eval', required=True)
  parser.add_argument('--out', default=os.path.join(HERE, 'dinov2.npz'))
  args = parser.parse_args()
  torch.set_num_threads(2)
  torch.manual_seed(0)
  sys.path[:0] = [args.dinov2, args.dgm_eval]
  # Only torchvision's PIL transforms are used; its compiled-op registrations
  # fail to import against some torch builds, so that one module is stubbed.
  sys.modules['torchvision._meta_registrations'] = types.ModuleType('tv_meta_stub')
  from dinov2.layers import MemEffAttention, NestedTensorBlock  # pylint: disable=import-outside-toplevel
  from dinov2.models import vision_transformer as vits  # pylint: disable=import-outside-toplevel
  from dgm_eval.models.dinov2 import DINOv2Encoder  # pylint: disable=import-outside-toplevel
  block_fn = functools.partial(NestedTensorBlock, attn_class=MemEffAttention)

  def transform(img, clean):
    enc = types.SimpleNamespace(clean_resize=clean)
    return DINOv2Encoder.transform(enc, Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1
                                                        else img).convert('RGB'))

  rng = np.random.default_rng(3)
  prng = np.random.default_rng(4)
  idx = prng.integers(0, 224, (512, 2))
  out = {'pixel_index': idx, 'weights_seed': np.int64(dinov2_random_weights.SEED)}
  inputs = {}
  for size, channels in SIZES:
    imgs = _images(rng, 2, size, channels)
    out[f'images_{size}'] = imgs
    for clean in (False, True):
      x = torch.stack([transform(im, clean) for im in imgs]).float()
      inputs[(size, clean)] = x
      out[f'input_{size}_{"clean" if clean else "dgm_eval"}'] = (
          x.permute(0, 2, 3, 1).numpy()[:, idx[:, 0], idx[:, 1]])

  # Position-embedding interpolation 37 -> g patches, as the model calls it.
  for g in (2, 4, 16):
    eye = torch.eye(37).reshape(37, 1, 37, 1).expand(37, 1, 37, 2).contiguous()
    m = F.interpolate(eye, scale_factor=((g + 0.1) / 37, 1.0), mode='bicubic',
                      antialias=False)[:, 0, :, 0].T.numpy()
    out[f'pos_matrix_{g}'] = m

  with torch.no_grad():
    full = build(vits, block_fn, 24)
    x = torch.cat([inputs[(s, False)] for s, _ in SIZES])
    feats = full(x).numpy()
    out['vitl14_features'] = feats
    print('ViT-L/14: features std %.3f, across images %.3f' % (feats.std(), feats.std(0).mean()))
    small = build(vits, block_fn, 2)
    x = torch.cat([inputs[(s, c)] for s, _ in SIZES for c in (False, True)])
    out['depth2_features'] = small(x).numpy()
    # Native sizes (no resize): 28 px -> 2x2 patches, 56 px -> 4x4.
    for size in (28, 56):
      img = _images(rng, 2, size, 3)
      t = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
      t = (t - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
          [0.229, 0.224, 0.225])[:, None, None]
      out[f'native_images_{size}'] = img
      out[f'native_depth2_{size}'] = small(t).numpy()
    print('depth 2: features std %.3f, across images %.3f' % (
        out['depth2_features'].std(), out['depth2_features'].std(0).mean()))
    # A tiny model saved by torch itself (zip format, every key incl.
    # mask_token) for the restricted .pth reader, with its output on 6x6 px.
    tiny = vits.DinoVisionTransformer(
        img_size=6, patch_size=2, embed_dim=64, depth=1, num_heads=1, mlp_ratio=1,
        block_fn=block_fn, init_values=1.0, ffn_layer='mlp', block_chunks=0,
        num_register_tokens=0, interpolate_offset=0.1).eval()
    tmp = os.path.join(HERE, 'tiny_dinov2.tmp')
    torch.save(tiny.state_dict(), tmp)
    digest = hashlib.sha256(open(tmp, 'rb').read()).hexdigest()
    for old in os.listdir(HERE):
      if old.startswith('tiny_dinov2-'):
        os.remove(os.path.join(HERE, old))
    final = os.path.join(HERE, f'tiny_dinov2-{digest[:8]}.pth')
    os.replace(tmp, final)
    print('wrote', final, os.path.getsize(final), 'bytes')
    x = torch.from_numpy(rng.normal(0, 1, (2, 3, 10, 10)).astype(np.float32))
    out['tiny_input'] = x.permute(0, 2, 3, 1).numpy()
    out['tiny_features'] = tiny(x).numpy()
  np.savez_compressed(args.out, **out)
  print('wrote', args.out, os.path.getsize(args.out), 'bytes')


if __name__ == '__main__':
  main()
