"""The FID Inception-v3 network, its input handling and its scores.

This is the network every published FID, KID and Inception Score is computed
with: the 2015-12-05 TensorFlow Inception graph of TTUR (Heusel et al., 2017),
in the form pytorch-fid (``pytorch_fid/inception.py``: ``fid_inception_v3``
with ``FIDInceptionA/C/E_1/E_2``) and torch-fidelity
(``feature_extractor_inceptionv3.py``) port it. Differences from the
torchvision Inception-v3 that the reference keeps, and so does this module:

* BatchNorm epsilon 1e-3, 1008-way final layer (``fc``), no auxiliary head;
* the pooling branch of InceptionA, InceptionC and the first InceptionE
  (``Mixed_7b``) averages over a 3×3 window that excludes the zero padding
  (``count_include_pad=False``); the second InceptionE (``Mixed_7c``)
  max-pools instead (a quirk of the TF graph).

Input handling (metrics/resize.py), by default exactly as pytorch-fid's
``InceptionV3.forward``:

1. uint8 images ``(N, H, W, C)`` -> float32 ``x / 255`` (float images are
   taken as already in ``[0, 1]``); grey (``C == 1``) repeated to 3 channels;
2. bilinear resize to 299×299 as ``torch.nn.functional.interpolate(x,
   size=(299, 299), mode='bilinear', align_corners=False)`` without
   antialiasing, applied as two small matrices ``R_h (299, H)`` and
   ``R_w (299, W)``: ``out = R_h · x · R_wᵀ`` per channel
   (:func:`resize.bilinear_matrix`);
3. ``2x - 1``: range ``[-1, 1]``.

``resize='clean'`` (clean-fid's PIL bicubic) and ``resize='tf1'``
(torch-fidelity's / TF-GAN's TF1 bilinear) resize on the 0..255 scale and feed
``(x - 128) / 128``, as those packages do; ``dgm_eval`` is PIL's uint8
bicubic. The conventions move FID on 32-px images by up to several points,
so a number is only comparable with one made with the same convention.

Outputs (:class:`InceptionNetwork`): the 2048-d ``pool3`` features (global
average of ``Mixed_7c``; FID, KID, precision/recall), the 1008 logits
``fc(pool3)`` and the bias-free ``pool3 · W_fcᵀ`` that the Inception Score
of Salimans et al. (openai/improved-gan ``inception_score.py``, torch-fidelity
``logits_unbiased``) is computed from.

Speed on CPU: by default (``conv_impl='auto'``) the 94 convolutions run in
oneDNN's kernels (kernels/conv_onednn.py), each with its BatchNorm folded
into the kernel and a bias and with its ReLU, in one call, and the pools as
separable slices; about 3x XLA:CPU's convolutions (``conv_impl='xla'``,
flax's layers as written) and faster than pytorch-fid on the same CPU
(docs/speed.md, "Feature extraction"). Both give the reference's outputs
(tests/test_inception.py); they differ from each other by float32 rounding
(relative 1e-6), far below what moves a reported FID. GPUs and TPUs, and a
CPU where oneDNN cannot be built, use 'xla'.

Weights come from the converted pytorch-fid file (``python -m
vaegan_jax.metrics.convert_inception``): a plain ``.npz`` whose keys are the
PyTorch state-dict names, loaded with ``allow_pickle=False``. :func:`load`
finds it from ``--inception_weights=PATH`` or ``$VAEGAN_JAX_INCEPTION`` (the
``.npz`` or pytorch-fid's ``.pth``), else downloads, checks and converts
pytorch-fid's file once into the cache (vaegan_jax/metrics/weights.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vaegan_jax import progress as progress_lib
from vaegan_jax import sharding as sharding_lib
from vaegan_jax.errors import UserError
from vaegan_jax.kernels import conv_cpu
from vaegan_jax.kernels import conv_onednn
from vaegan_jax.metrics import resize as resize_lib

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
ENV_VAR = 'VAEGAN_JAX_INCEPTION'
# pytorch-fid's file name; torch.hub checks that its sha256 starts with the
# hex digits after the last '-' (as does the converter).
TORCH_FILE = 'pt_inception-2015-12-05-6726825d.pth'
TORCH_SHA256_PREFIX = '6726825d'
FORMAT_VERSION = 1

HOW_TO_GET_WEIGHTS = (
    f'pass --inception_weights=PATH or set ${ENV_VAR}=PATH to pytorch-fid\'s '
    f'{TORCH_FILE} (in ~/.cache/torch/hub/checkpoints/ after any pytorch-fid run) '
    'or the .npz converted from it, or leave both unset to download it')


# ---------------------------------------------------------------------------
# Input handling.
# ---------------------------------------------------------------------------


def resize_matrix(in_size: int, out_size: int = INPUT_SIZE) -> np.ndarray:
  """pytorch-fid's bilinear matrix (:func:`resize.bilinear_matrix`), float32
  ``(out_size, in_size)``."""
  return resize_lib.bilinear_matrix(in_size, out_size)


def preprocess(images: jax.Array, convention: str = 'pytorch_fid') -> jax.Array:
  """Images -> the network's input (module doc; metrics/resize.py).

  Args:
    images: ``(N, H, W, C)`` with ``C`` in ``{1, 3}``; uint8 in ``[0, 255]``
      or float in ``[0, 1]``.
    convention: resize convention, one of ``resize.CONVENTIONS``; default
      pytorch-fid's.

  Returns:
    float32 ``(N, 299, 299, 3)``, about ``[-1, 1]``.
  """
  return resize_lib.preprocess(images, convention, INPUT_SIZE, normalize='inception')


# ---------------------------------------------------------------------------
# The network (names mirror the PyTorch state dict).
# ---------------------------------------------------------------------------


class BatchNormEval(nn.Module):
  """Inference BatchNorm: ``(x - mean) / sqrt(var + 1e-3) · scale + bias``."""
  features: int

  def setup(self):
    c = (self.features,)
    self.scale = self.param('scale', nn.initializers.ones, c)
    self.bias = self.param('bias', nn.initializers.zeros, c)
    self.mean = self.param('mean', nn.initializers.zeros, c)
    self.var = self.param('var', nn.initializers.ones, c)

  def __call__(self, x):
    return (x - self.mean) * (self.scale * lax.rsqrt(self.var + BN_EPS)) + self.bias

  def folded(self):
    """``(s, b)`` with ``BN(v) = v · s + b``: the layer as a per-channel
    scale and shift, to be folded into the convolution before it."""
    s = self.scale * lax.rsqrt(self.var + BN_EPS)
    return s, self.bias - self.mean * s


class _Kernel(nn.Module):
  """The kernel parameter of a bias-free ``nn.Conv`` (same name and shape),
  for the convolution that `BasicConv2d` runs itself (impl 'onednn')."""
  shape: tuple[int, ...]

  @nn.compact
  def __call__(self):
    return self.param('kernel', nn.initializers.lecun_normal(), self.shape)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; torch's ``BasicConv2d``.

  ``impl='xla'``: flax's convolution, then the BatchNorm and the ReLU as
  written. ``impl='onednn'``: the BatchNorm folded into the kernel and a bias
  (``W · s``, ``b - mean · s``), and convolution, bias and ReLU in one oneDNN
  call (`conv_cpu.conv_bias_act`); the same parameters, outputs equal up to
  float32 rounding (relative 1e-6).
  """
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: lax.Precision = lax.Precision.HIGHEST
  impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    pads = ((ph, ph), (pw, pw))
    bn = BatchNormEval(self.features, name='bn')
    if self.impl == 'onednn':
      kernel = _Kernel((*self.kernel, x.shape[-1], self.features), name='conv')()
      s, b = bn.folded()
      return conv_cpu.conv_bias_act(x, kernel * s, b, (self.stride,) * 2, pads,
                                    (1, 1), self.precision, slope=0.0)
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=pads,
                use_bias=False, precision=self.precision, name='conv')(x)
    return nn.relu(bn(x))


def _window_3(x, axis: int, stride: int, op):
  """``op`` over windows of 3 along ``axis`` at ``stride`` (no padding), as
  two elementwise ops on strided slices: XLA fuses them into one loop, which
  runs 1.5-9x faster on CPU than its ``reduce_window``."""
  out = (x.shape[axis] - 3) // stride + 1
  taps = [lax.slice_in_dim(x, d, d + stride * (out - 1) + 1, stride, axis)
          for d in range(3)]
  return op(op(taps[0], taps[1]), taps[2])


def _avg_pool_3x3_same(x, impl: str = 'xla'):
  """3×3 stride-1 average pool over the unpadded pixels (TF's SAME pool).

  'xla': flax's ``avg_pool``; otherwise (the oneDNN path) the window sums as
  separable slices divided by each position's count of unpadded pixels:
  the same values up to float32 rounding (the sums run in another order).
  """
  if impl == 'xla':
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  sums = _window_3(_window_3(padded, 1, 1, jnp.add), 2, 1, jnp.add)
  # Unpadded pixels of each window along one axis: 3, one fewer at each edge.
  count = lambda n: 3 - (np.arange(n) == 0) - (np.arange(n) == n - 1)
  return sums / np.outer(count(h), count(w)).astype(np.float32)[None, :, :, None]


class _Mixed(nn.Module):
  """A Mixed_* block: branches of `BasicConv2d` at `precision` and `impl`."""
  precision: lax.Precision
  impl: str  # BasicConv2d's: 'xla' or 'onednn'.

  def conv(self, *layer, name, **fields):
    """`BasicConv2d(*layer, **fields)`: features[, kernel, stride, padding]."""
    return BasicConv2d(*layer, precision=self.precision, impl=self.impl, name=name,
                       **fields)

  def chain(self, x, name, *layers):
    """Convolutions `name`_1, `name`_2, ... applied in turn (torch's
    numbering), one per layer."""
    for i, layer in enumerate(layers, 1):
      x = self.conv(*layer, name=f'{name}_{i}')(x)
    return x


def _max_pool_3x3(x, stride: int, pad: int = 0):
  """3×3 max pool at ``stride`` over ``x`` padded by ``pad`` (-inf): flax's
  ``max_pool`` exactly (a max has no rounding), as separable slices."""
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  return _window_3(_window_3(x, 1, stride, jnp.maximum), 2, stride, jnp.maximum)


class InceptionA(_Mixed):
  """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(excl. pad)-1x1."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(64, name='branch1x1')(x)
    b5 = self.chain(x, 'branch5x5', (48,), (64, (5, 5), 1, (2, 2)))
    same3 = (96, (3, 3), 1, (1, 1))
    b3 = self.chain(x, 'branch3x3dbl', (64,), same3, same3)
    bp = self.conv(self.pool_features, name='branch_pool')(_avg_pool_3x3_same(x, self.impl))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Mixed):
  """Mixed_6a (grid reduction): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = self.chain(x, 'branch3x3dbl', (64,), (96, (3, 3), 1, (1, 1)), (96, (3, 3), 2))
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(_Mixed):
  """Mixed_6b-e: factorised 7x7 branches, avgpool(excl. pad)-1x1."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = self.conv(192, name='branch1x1')(x)
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))  # 1x7 and 7x1, 'same'.
    b7 = self.chain(x, 'branch7x7', (c7,), (c7, *row), (192, *col))
    bd = self.chain(x, 'branch7x7dbl', (c7,), (c7, *col), (c7, *row), (c7, *col), (192, *row))
    bp = self.conv(192, name='branch_pool')(_avg_pool_3x3_same(x, self.impl))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Mixed):
  """Mixed_7a (grid reduction): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.chain(x, 'branch3x3', (192,), (320, (3, 3), 2))
    b7 = self.chain(x, 'branch7x7x3', (192,), (192, (1, 7), 1, (0, 3)),
                    (192, (7, 1), 1, (3, 0)), (192, (3, 3), 2))
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(_Mixed):
  """Mixed_7b (avg pool, excl. pad) and Mixed_7c (max pool, ``max_pool``)."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(320, name='branch1x1')(x)
    split = lambda h, name: jnp.concatenate(  # 1x3 | 3x1 on the same input.
        [self.conv(384, (1, 3), padding=(0, 1), name=f'{name}a')(h),
         self.conv(384, (3, 1), padding=(1, 0), name=f'{name}b')(h)], -1)
    b3 = split(self.conv(384, name='branch3x3_1')(x), 'branch3x3_2')
    bd = self.chain(x, 'branch3x3dbl', (448,), (384, (3, 3), 1, (1, 1)))
    bd = split(bd, 'branch3x3dbl_3')
    pooled = _max_pool_3x3(x, 1, pad=1) if self.max_pool else _avg_pool_3x3_same(x, self.impl)
    bp = self.conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3 on preprocessed ``(N, 299, 299, 3)`` inputs.

  ``precision``: conv/matmul precision; HIGHEST (no TF32/bf16 passes on
  accelerators) so numbers match the float32 reference on every backend.
  ``conv_impl``: 'xla' (flax's convolutions) or 'onednn' (each conv, its
  folded BatchNorm and its ReLU in one oneDNN call; `BasicConv2d`).
  """
  precision: lax.Precision = lax.Precision.HIGHEST
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    """Returns ``(pool3 (N, 2048), logits (N, 1008), logits_unbiased (N, 1008))``."""
    p, impl = self.precision, self.conv_impl
    conv = functools.partial(BasicConv2d, precision=p, impl=impl)
    x = conv(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)        # 149
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)                  # 147
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)  # 147
    x = _max_pool_3x3(x, 2)                                        # 73
    x = conv(80, name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)                 # 71
    x = _max_pool_3x3(x, 2)                                        # 35
    x = InceptionA(p, impl=impl, pool_features=32, name='Mixed_5b')(x)
    x = InceptionA(p, impl=impl, pool_features=64, name='Mixed_5c')(x)
    x = InceptionA(p, impl=impl, pool_features=64, name='Mixed_5d')(x)
    x = InceptionB(p, impl=impl, name='Mixed_6a')(x)                          # 17
    x = InceptionC(p, impl=impl, channels_7x7=128, name='Mixed_6b')(x)
    x = InceptionC(p, impl=impl, channels_7x7=160, name='Mixed_6c')(x)
    x = InceptionC(p, impl=impl, channels_7x7=160, name='Mixed_6d')(x)
    x = InceptionC(p, impl=impl, channels_7x7=192, name='Mixed_6e')(x)
    x = InceptionD(p, impl=impl, name='Mixed_7a')(x)                          # 8
    x = InceptionE(p, impl=impl, max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(p, impl=impl, max_pool=True, name='Mixed_7c')(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    kernel = self.param('fc_kernel', nn.initializers.zeros, (FEATURE_DIM, NUM_CLASSES))
    bias = self.param('fc_bias', nn.initializers.zeros, (NUM_CLASSES,))
    unbiased = jnp.matmul(pool3, kernel, precision=p)
    return pool3, unbiased + bias, unbiased


# ---------------------------------------------------------------------------
# PyTorch state dict <-> Flax params.
# ---------------------------------------------------------------------------

_BN_NAMES = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean',
             'running_var': 'var'}


def abstract_params() -> dict:
  """The Flax parameter tree's shapes (no weights), ``{path: ShapeDtypeStruct}``."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return shapes['params']


def torch_key(path: tuple[str, ...]) -> str:
  """Flax param path -> the PyTorch state-dict key holding it."""
  if path == ('fc_kernel',):
    return 'fc.weight'
  if path == ('fc_bias',):
    return 'fc.bias'
  *mods, layer, leaf = path
  leaf = 'weight' if layer == 'conv' else {v: k for k, v in _BN_NAMES.items()}[leaf]
  return '.'.join([*mods, layer, leaf])


def torch_shapes() -> dict[str, tuple[int, ...]]:
  """Every PyTorch state-dict key of the FID Inception and its shape
  (``num_batches_tracked`` counters excluded)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params())[0]:
    names = tuple(k.key for k in path)
    shape = tuple(leaf.shape)
    if names[-1] == 'kernel':               # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif names == ('fc_kernel',):           # (in, out) -> (out, in)
      shape = shape[::-1]
    out[torch_key(names)] = shape
  return out


def params_from_torch(state: dict[str, np.ndarray]) -> dict:
  """PyTorch-layout arrays (``OIHW`` convs, ``(out, in)`` fc) -> Flax params.

  Raises:
    ValueError: a key is missing or a shape differs from the FID Inception.
  """
  expected = torch_shapes()
  missing = sorted(set(expected) - set(state))
  if missing:
    raise ValueError(f'{len(missing)} FID Inception weights are missing (e.g. {missing[0]})')
  for k, shape in expected.items():
    if tuple(np.shape(state[k])) != shape:
      raise ValueError(f'{k} has shape {tuple(np.shape(state[k]))}, the FID Inception '
                       f'needs {shape}')

  def leaf(path, _):
    names = tuple(k.key for k in path)
    w = np.asarray(state[torch_key(names)], np.float32)
    if names[-1] == 'kernel':
      w = w.transpose(2, 3, 1, 0)
    elif names == ('fc_kernel',):
      w = w.T
    return jnp.asarray(w)

  return jax.tree_util.tree_map_with_path(leaf, abstract_params())


# ---------------------------------------------------------------------------
# Weights files.
# ---------------------------------------------------------------------------


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def save_npz(state: dict[str, np.ndarray], path: str, source_sha256: str = '') -> str:
  """Writes PyTorch-layout weights as a plain ``.npz`` (no pickle); returns
  the file's sha256. ``source_sha256``: of the ``.pth`` it came from."""
  arrays = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()
            if not k.endswith('num_batches_tracked')}
  arrays['__format_version__'] = np.array(FORMAT_VERSION, np.int64)
  arrays['__source_sha256__'] = np.array(source_sha256)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return file_sha256(path)


def resolve_weights_path(path: str | None = None, echo: Callable = print) -> str:
  """``path``, else ``$VAEGAN_JAX_INCEPTION``, else the cached download of
  pytorch-fid's file (fetched, checked and converted on first use:
  vaegan_jax/metrics/weights.py). A ``.pth`` is converted once into the cache.

  Raises:
    UserError: a missing file, or no weights and no download (one line
      naming the URL, the sha256, ``--inception_weights`` and the variable).
  """
  from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
  return weights.ensure('inception', path or '', echo=echo)


CONV_IMPLS = ('auto', 'xla', 'onednn')
_fallback_noted = False


def resolve_conv_impl(impl: str = 'auto') -> str:
  """The Inception's convolutions: 'auto' -> 'onednn' on the CPU backend
  where oneDNN's convolutions build and load (kernels/conv_onednn.py; about
  3x XLA:CPU's there, docs/speed.md "Feature extraction"), else 'xla' (GPU,
  TPU, or a CPU without them: one note per process). 'onednn' falls back
  the same way; 'xla' is flax's convolution everywhere."""
  global _fallback_noted
  if impl not in CONV_IMPLS:
    raise ValueError(f'Unknown Inception conv_impl {impl!r}; use one of {CONV_IMPLS}.')
  if impl == 'xla' or (impl == 'auto' and jax.default_backend() != 'cpu'):
    return 'xla'
  ok, reason = conv_onednn.status()
  if ok:
    return 'onednn'
  if not _fallback_noted:
    _fallback_noted = True
    print(f"note: the Inception's convolutions run in XLA: oneDNN's are unavailable "
          f'({reason})', flush=True)
  return 'xla'


class InceptionNetwork:
  """Loaded FID Inception: ``net(images) -> (pool3, logits, logits_unbiased)``.

  Attributes:
    params: Flax params of :class:`FIDInceptionV3`.
    path: the ``.npz`` it was loaded from.
    sha256: that file's sha256 (keys the cached reference statistics).
    source_sha256: sha256 of the ``.pth`` it was converted from.
    resize: the resize convention of its input (metrics/resize.py).
    conv_impl: how its convolutions run, 'xla' or 'onednn'
      (:func:`resolve_conv_impl` of the constructor's ``conv_impl``).
  """

  def __init__(self, params, path: str = '', sha256: str = '', source_sha256: str = '',
               resize: str = 'pytorch_fid', conv_impl: str = 'auto'):
    self.params, self.path, self.sha256 = params, path, sha256
    self.source_sha256 = source_sha256
    self.resize = resize_lib.check_convention(resize)
    self.conv_impl = resolve_conv_impl(conv_impl)
    self.module = FIDInceptionV3(conv_impl=self.conv_impl)
    self._preprocess = jax.jit(functools.partial(preprocess, convention=resize))
    self._network = jax.jit(lambda params, x: self.module.apply({'params': params}, x))

  def apply_preprocessed(self, x):
    """The network on ``preprocess``ed ``(N, 299, 299, 3)`` inputs (jitted;
    one compilation per batch size, whatever the image size)."""
    return self._network(self.params, x)

  def __call__(self, images):
    """images ``(N, H, W, C)`` uint8 or float in [0, 1] -> three float32 arrays
    ``pool3 (N, 2048)``, ``logits (N, 1008)``, ``logits_unbiased (N, 1008)``."""
    return self.apply_preprocessed(self._preprocess(images))

  def compute(self, images: np.ndarray | Iterable, batch_size: int = 50,
              sharding=None, num_images: int | None = None,
              progress: str = '') -> dict[str, np.ndarray]:
    """Features of many images in fixed-size chunks (one compilation).

    Args:
      images: uint8 ``(N, H, W, C)`` array, or an iterable of such batches
        (e.g. model samples); float batches in [0, 1] are quantised to uint8
        first, as saving samples to PNG would.
      batch_size: images per jitted call (the last chunk is padded).
      sharding: optional input sharding (e.g. ``P('data')`` over a mesh);
        ``batch_size`` must then split over its devices.
      num_images: stop after this many images (required for iterables of
        unknown length; default all).
      progress: label of a progress bar (vaegan_jax/progress.py: stderr,
        terminals only); '' = none.

    Returns:
      ``{'pool3': (N, 2048), 'logits': (N, 1008), 'logits_unbiased': (N, 1008)}``,
      numpy float32.
    """
    if isinstance(images, np.ndarray):
      total = len(images) if num_images is None else min(num_images, len(images))
      chunks = (images[i:i + batch_size] for i in range(0, total, batch_size))
    else:
      if num_images is None:
        raise ValueError('num_images is required when images is an iterable.')
      total, chunks = num_images, rechunk(images, batch_size)
    outs, done = [], 0
    with progress_lib.bar(total, progress, 'img') as bar:
      for chunk in chunks:
        chunk = np.asarray(chunk)[:total - done]
        if chunk.dtype != np.uint8:
          chunk = quantize(chunk)
        valid = len(chunk)
        if valid < batch_size:
          chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]),
                                                  np.uint8)])
        x = sharding_lib.put(chunk, sharding) if sharding is not None else chunk
        outs.append((valid, self(x)))
        done += valid
        bar.update(valid)
        if done >= total:
          break
    fetched = sharding_lib.to_host([o for _, o in outs])
    return {name: np.concatenate([o[j][:v] for (v, _), o in zip(outs, fetched)])
            for j, name in enumerate(('pool3', 'logits', 'logits_unbiased'))}


def quantize(images) -> np.ndarray:
  """Float images in [0, 1] -> uint8 ``round(255 x)`` (what a PNG would hold)."""
  return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def rechunk(batches, size: int):
  """Re-batches an iterable of arrays into chunks of exactly ``size`` rows
  (the last one may be shorter)."""
  buf, count = [], 0
  for b in batches:
    b = np.asarray(b)
    buf.append(b)
    count += len(b)
    while count >= size:
      cat = np.concatenate(buf)
      yield cat[:size]
      buf, count = [cat[size:]], count - size
  if count:
    yield np.concatenate(buf)


def load(path: str | None = None, echo: Callable = print,
         resize: str = 'pytorch_fid', conv_impl: str = 'auto') -> InceptionNetwork:
  """Loads converted weights from ``path``, ``$VAEGAN_JAX_INCEPTION`` or the
  cache, downloading them on first use (:func:`resolve_weights_path`);
  ``resize``: the input's resize convention (metrics/resize.py);
  ``conv_impl``: :func:`resolve_conv_impl`'s.

  Raises:
    UserError: no path, a missing file, a file that is not a converter
      ``.npz``, or weights of the wrong layout -- one line naming both ways
      to give the weights.
  """
  path = resolve_weights_path(path, echo)
  try:
    with np.load(path, allow_pickle=False) as data:
      state = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except  # zip/npy/pickle errors
    raise UserError(f'Inception weights file {path} is not a converted .npz '
                    f'({type(e).__name__}): {HOW_TO_GET_WEIGHTS}.') from None
  if '__format_version__' not in state:
    raise UserError(f'Inception weights file {path} was not written by the converter: '
                    f'{HOW_TO_GET_WEIGHTS}.')
  source = str(state.pop('__source_sha256__', ''))
  state.pop('__format_version__')
  try:
    params = params_from_torch(state)
  except ValueError as e:
    raise UserError(f'Inception weights file {path} does not hold the FID Inception ({e}): '
                    f'{HOW_TO_GET_WEIGHTS}.') from None
  return InceptionNetwork(params, path, file_sha256(path), source, resize=resize,
                          conv_impl=conv_impl)


# ---------------------------------------------------------------------------
# Reference statistics, cached beside the weights.
# ---------------------------------------------------------------------------


def reference_cache_path(net: InceptionNetwork, dataset: str, split: str,
                         num_images: int | None, cache_dir: str | None = None) -> str:
  """``<dir>/fid_ref_<dataset>_<split>_<count|all>[_<resize>]_<weights sha256[:16]>.npz``
  (the resize only when not pytorch-fid's); ``dir`` defaults to the weights
  file's folder."""
  count = 'all' if not num_images else str(int(num_images))
  resize = '' if getattr(net, 'resize', 'pytorch_fid') == 'pytorch_fid' else f'_{net.resize}'
  name = f'fid_ref_{dataset}_{split.replace("/", "-")}_{count}{resize}_{net.sha256[:16]}.npz'
  return os.path.join(cache_dir or os.path.dirname(os.path.abspath(net.path)), name)


def reference_features(net: InceptionNetwork, dataset: str, split: str,
                       load_images: Callable[[], np.ndarray],
                       num_images: int | None = None, batch_size: int = 32,
                       sharding=None, cache_dir: str | None = None,
                       echo: Callable = print) -> dict:
  """Inception features of a dataset split, computed once and cached.

  The cache is a plain ``.npz`` (``pool3`` float32 ``(N, 2048)``, ``mu``,
  ``sigma`` float64 -- the FID statistics -- and what it was computed from),
  keyed in its name by dataset, split, image count and the weights' sha256
  (:func:`reference_cache_path`), so new weights or another split never
  reuse stale statistics.

  Args:
    net: the loaded network.
    dataset: dataset name (for the key).
    split: 'train' or 'test' (for the key).
    load_images: returns the split's uint8 images ``(N, H, W, C)``; called
      only without a cache hit.
    num_images: use the first this many images; None or 0 = all.
    batch_size: images per jitted call.
    sharding: optional input sharding.
    cache_dir: default beside the weights; not writable -> computed, not cached.
    echo: where to say what happened.

  Returns:
    ``{'pool3', 'mu', 'sigma', 'num_images', 'cache'}`` (``cache``: the path,
    or '' when it could not be written).
  """
  path = reference_cache_path(net, dataset, split, num_images, cache_dir)
  if os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in ('pool3', 'mu', 'sigma')}
      echo(f'Inception reference statistics of {dataset}/{split} from {path}.')
      return {**out, 'num_images': len(out['pool3']), 'cache': path}
    except Exception:  # pylint: disable=broad-except  # a damaged cache is recomputed
      pass
  images = load_images()
  if num_images:
    images = images[:num_images]
  echo(f'Computing Inception features of {len(images)} {dataset}/{split} images '
       '(once; cached beside the weights).')
  pool3 = net.compute(images, batch_size, sharding,
                      progress=f'Inception features of {dataset}/{split}')['pool3']
  p64 = pool3.astype(np.float64)
  out = {'pool3': pool3, 'mu': p64.mean(0), 'sigma': np.cov(p64, rowvar=False)}
  try:
    if jax.process_index() != 0:  # One writer in a multi-process job.
      return {**out, 'num_images': len(pool3), 'cache': path}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, **out, weights_sha256=np.array(net.sha256), dataset=np.array(dataset),
             split=np.array(split))
    os.replace(tmp, path)
  except OSError as e:
    echo(f'note: could not cache the reference statistics at {path} ({e.strerror}).')
    path = ''
  return {**out, 'num_images': len(pool3), 'cache': path}


# ---------------------------------------------------------------------------
# Inception Score.
# ---------------------------------------------------------------------------


def inception_score(logits, splits: int = 10, shuffle: bool = True,
                    seed: int = 2020) -> tuple[float, float]:
  """Inception Score, mean and std over splits (Salimans et al., 2016).

  ``IS = exp(E_x KL(p(y|x) || p(y)))`` per split, with ``p(y)`` the split's
  mean prediction; as torch-fidelity's ``isc_features_to_metric``: float64,
  rows shuffled with ``np.random.RandomState(seed)`` first, split ``i`` the
  rows ``[i N / splits, (i + 1) N / splits)``, std with ``ddof=0``. Pass the
  bias-free logits (``logits_unbiased``), as torch-fidelity and the original
  openai/improved-gan code do.

  Args:
    logits: ``(N, K)`` logits.
    splits: number of splits (10 in the literature).
    shuffle: shuffle rows before splitting.
    seed: the shuffle's seed (torch-fidelity's default 2020).

  Returns:
    ``(mean, std)`` Python floats; each split's score lies in ``[1, K]``.
  """
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if logits.ndim != 2 or n < splits:
    raise ValueError(f'logits must have shape (N >= splits={splits}, K); got {logits.shape}.')
  if shuffle:
    logits = logits[np.random.RandomState(seed).permutation(n)]
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    q = p[lo:hi].mean(axis=0, keepdims=True)
    kl = np.sum(p[lo:hi] * (log_p[lo:hi] - np.log(q)), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
