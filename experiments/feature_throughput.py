"""Feature-extraction throughput: the project's backbones beside the PyTorch tools.

  python experiments/feature_throughput.py --torch_python=/tmp/torchenv/bin/python \
      --dinov2_src=/tmp/dinov2src --dgm_eval_src=/tmp/dgmsrc

One run, the same images (uint8, seeded numpy) for every extractor, interleaved
in `--rounds` rounds so that load from other processes hits all alike:

  jax_inception      metrics/inception.py: resize (pytorch_fid) + FID Inception, jitted,
                     the default conv_impl ('auto': oneDNN's convolutions on CPU)
  jax_inception_xla  the same with conv_impl='xla' (XLA:CPU's convolutions)
  jax_dinov2         metrics/dinov2.py: resize (dgm_eval) + ViT-L/14, jitted
  torch_pytorch_fid  pytorch-fid 0.3.0 InceptionV3([3]) forward (its resize inside)
  torch_dgm_dinov2   dgm-eval's DINOv2 transform (PIL resize per image, ToTensor,
                     Normalize) + the dinov2 repo's ViT-L/14 forward

Weights are random (speed does not depend on them). Images at `--sizes` px;
each timed batch is `--batch` images, timed from uint8 host images to features
on the host (`np.asarray` / `.numpy()`), after a warm-up call (JAX: the same
shape, so compilation is excluded; torch: one image).
The torch part runs in `--torch_python` (a venv with torch, pytorch-fid,
torchvision, pillow; the project's venv has no torch) as a subprocess per
round, with `torch.set_num_threads(--threads)`.

Prints the FLOPs per image of each network (XLA's count of the Inception,
the ViT's matmuls counted by hand) and the GFLOP/s of
a float32 2048x2048 matmul in XLA (the machine's practical ceiling), then one
JSON line per (extractor, size): images_per_s (batch / median batch time),
batch_s_median, rounds, share_of_matmul (images/s x FLOPs per image / that
ceiling; the torch rows with the same network's FLOPs).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types

import numpy as np


def images(size, n, seed=0):
  return np.random.default_rng(seed + size).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------
# torch side (run under --torch_python with --torch_worker).
# ---------------------------------------------------------------------------


def torch_worker(args):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  sys.modules['torchvision._meta_registrations'] = types.ModuleType('tv_meta_stub')
  from pytorch_fid import inception as pfi  # pylint: disable=import-outside-toplevel
  orig = torch.nn.Module.load_state_dict
  pfi.load_state_dict_from_url = lambda *a, **k: None
  torch.nn.Module.load_state_dict = lambda self, sd, *a, **k: None
  try:
    incep = pfi.InceptionV3([3]).eval()
  finally:
    torch.nn.Module.load_state_dict = orig
  sys.path[:0] = [args.dinov2_src, args.dgm_eval_src]
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from dinov2.models import vision_transformer as vits  # pylint: disable=import-outside-toplevel
  from dgm_eval.models.dinov2 import DINOv2Encoder  # pylint: disable=import-outside-toplevel
  vit = vits.vit_large(patch_size=14, img_size=518, init_values=1.0, ffn_layer='mlp',
                       block_chunks=0, num_register_tokens=0, interpolate_antialias=False,
                       interpolate_offset=0.1)
  vit.eval()
  enc = types.SimpleNamespace(clean_resize=False)
  out = []
  for size in args.sizes:
    for name in ('torch_pytorch_fid', 'torch_dgm_dinov2'):
      batch = args.batch if name == 'torch_pytorch_fid' else args.dino_batch
      x = images(size, batch)

      def run(x, name=name):
        with torch.no_grad():
          if name == 'torch_pytorch_fid':
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
            return incep(t)[0].numpy()
          t = torch.stack([DINOv2Encoder.transform(enc, Image.fromarray(im)) for im in x]).float()
          return vit(t).numpy()
      run(x[:1])  # warm-up (torch compiles nothing; first-call allocation)
      t0 = time.perf_counter()
      run(x)
      out.append({'extractor': name, 'size': size, 'batch': batch,
                  'batch_s': time.perf_counter() - t0})
  print(json.dumps(out))


# ---------------------------------------------------------------------------
# JAX side.
# ---------------------------------------------------------------------------


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--torch_python', default='')
  parser.add_argument('--dinov2_src', default='/tmp/dinov2src')
  parser.add_argument('--dgm_eval_src', default='/tmp/dgmsrc')
  parser.add_argument('--sizes', type=int, nargs='+', default=[32, 299])
  parser.add_argument('--batch', type=int, default=50, help='Inception batch')
  parser.add_argument('--dino_batch', type=int, default=8, help='DINOv2 batch')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--torch_worker', action='store_true')
  args = parser.parse_args()
  if args.torch_worker:
    torch_worker(args)
    return

  import jax  # pylint: disable=import-outside-toplevel
  from vaegan_jax.metrics import dinov2  # pylint: disable=import-outside-toplevel
  from vaegan_jax.metrics import inception  # pylint: disable=import-outside-toplevel

  incep_params = jax.jit(inception.FIDInceptionV3().init)(
      jax.random.key(0), jax.numpy.zeros((1, 299, 299, 3)))['params']
  incep = inception.InceptionNetwork(incep_params)  # conv_impl 'auto': the default
  incep_xla = inception.InceptionNetwork(incep_params, conv_impl='xla')
  print(json.dumps({'jax_inception_conv_impl': incep.conv_impl}), flush=True)
  dino = dinov2.DinoV2Network(jax.jit(dinov2.init_params)(jax.random.key(0)))
  jax_fns = {'jax_inception': (lambda x: np.asarray(incep(x)[0]), args.batch),
             'jax_inception_xla': (lambda x: np.asarray(incep_xla(x)[0]), args.batch),
             'jax_dinov2': (lambda x: np.asarray(dino(x)), args.dino_batch)}
  for size in args.sizes:   # warm-up: compile every shape once
    for fn, batch in jax_fns.values():
      fn(images(size, batch))
  # FLOPs per image of each network (XLA's count of the 'xla' graphs; the
  # preprocessing's few are left out), for the share of the matmul ceiling.
  x299 = jax.ShapeDtypeStruct((1, 299, 299, 3), jax.numpy.float32)
  gflops = {'inception': flops_of(lambda x: incep_xla.module.apply(
                {'params': incep_params}, x), x299) / 1e9,
            'dinov2': vit_flops(dinov2.VITL14, dinov2.INPUT_SIZE) / 1e9}
  ceiling = matmul_ceiling(jax)
  print(json.dumps({'gflops_per_image': gflops, 'matmul_gflops_per_s': round(ceiling, 1)}),
        flush=True)

  times = {}
  for _ in range(args.rounds):
    for size in args.sizes:
      for name, (fn, batch) in jax_fns.items():
        x = images(size, batch)
        t0 = time.perf_counter()
        fn(x)
        times.setdefault((name, size, batch), []).append(time.perf_counter() - t0)
    if args.torch_python:
      cmd = [args.torch_python, os.path.abspath(__file__), '--torch_worker',
             '--dinov2_src', args.dinov2_src, '--dgm_eval_src', args.dgm_eval_src,
             '--batch', str(args.batch), '--dino_batch', str(args.dino_batch),
             '--threads', str(args.threads), '--sizes', *map(str, args.sizes)]
      res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                           env=dict(os.environ, XFORMERS_DISABLED='1'))
      for r in json.loads(res.stdout.strip().splitlines()[-1]):
        times.setdefault((r['extractor'], r['size'], r['batch']), []).append(r['batch_s'])
  for (name, size, batch), ts in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    med = statistics.median(ts)
    net_gflops = gflops['dinov2' if 'dinov2' in name else 'inception']
    print(json.dumps({'extractor': name, 'size': size, 'batch': batch,
                      'images_per_s': round(batch / med, 2), 'batch_s_median': round(med, 3),
                      'rounds': len(ts),
                      'share_of_matmul': round(batch / med * net_gflops / ceiling, 3)}),
          flush=True)


def flops_of(fn, shape) -> float:
  """XLA's FLOP count of one call of `fn` on an input of `shape`
  (`throughput.step_flops`)."""
  import jax  # pylint: disable=import-outside-toplevel
  import throughput  # pylint: disable=import-outside-toplevel
  flops = throughput.step_flops(jax.jit(fn).lower(shape).compile())
  if flops is None:
    raise RuntimeError("XLA's cost analysis gave no FLOP count for the Inception.")
  return flops


def vit_flops(config, size: int) -> float:
  """FLOPs of one image through a ViT's matmuls (patch embedding, qkv,
  attention, projection, MLP; 2 per multiply-add); counted by hand because
  XLA's cost analysis counts a scanned block once."""
  tokens = (size // config.patch_size) ** 2 + 1
  c = config.embed_dim
  patch = 2 * (tokens - 1) * config.patch_size ** 2 * 3 * c
  per_block = 2 * tokens * (4 * c * c + 2 * config.mlp_ratio * c * c) + 4 * tokens ** 2 * c
  return patch + config.depth * per_block


def matmul_ceiling(jax, n=2048, rounds=5) -> float:
  """GFLOP/s of XLA's float32 (n, n) x (n, n) matmul on this machine: the
  ceiling the networks' convolutions and matmuls are measured against (the
  median of `rounds` calls, after a warm-up)."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda a: a @ a)
  mm(a).block_until_ready()
  ts = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    mm(a).block_until_ready()
    ts.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(ts) / 1e9


if __name__ == '__main__':
  main()
