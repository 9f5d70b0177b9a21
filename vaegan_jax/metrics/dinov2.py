"""DINOv2 ViT-L/14, the feature space of FD-DINOv2 (Stein et al., NeurIPS 2023).

Stein et al. ("Exposing flaws of generative model evaluation metrics and
their unfair treatment of diffusion models", code: layer6ai-labs/dgm-eval)
found Inception's feature space misranks modern generative models and
recommend the Fréchet distance in the CLS features of DINOv2 ViT-L/14
(Oquab et al., 2023; facebookresearch/dinov2). This module is that network,
exactly as ``dinov2/models/vision_transformer.py`` with the ``dinov2_vitl14``
hub settings, and dgm-eval's input handling. Distances: metrics/distances.py.

Network (``DinoVisionTransformer(img_size=518, patch_size=14,
embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, init_values=1.0,
num_register_tokens=0, interpolate_offset=0.1)``):

* patch embedding: a 14×14 stride-14 conv (pixels beyond a multiple of 14
  are dropped, as the conv does); a CLS token in front;
* position embedding learnt for 37×37 patches (518 px) plus CLS, resized to
  the input's ``h×w`` patches by torch's bicubic ``F.interpolate`` (``A =
  -0.75``, ``align_corners=False``, no antialias) with scale factor
  ``(h + 0.1)/37`` (DINO's offset kludge) -- a fixed matrix here
  (:func:`pos_embed_matrix`); no register tokens (plain vitl14);
* 24 pre-norm blocks: ``x += ls1 ⊙ attn(LN(x))``, ``x += ls2 ⊙ mlp(LN(x))``
  with LayerScale vectors, LayerNorm eps 1e-6, 16-head softmax attention
  (scale ``64^-0.5``, biased qkv and projection), MLP 1024-4096-1024 with
  exact (erf) GELU;
* final LayerNorm; the output is the CLS token (``head`` is the identity).

Input handling, dgm-eval's ``DINOv2Encoder.transform`` (default): PIL RGB
image -> torchvision ``Resize((224, 224), BICUBIC)`` (PIL's uint8 bicubic,
antialiased when downsampling) -> ``ToTensor`` (``/255``) -> ``Normalize``
with the ImageNet mean and std; ``resize='clean'`` is dgm-eval's
``--clean_resize`` (PIL bicubic on float channels). metrics/resize.py.

Weights: the official checkpoint ``dinov2_vitl14_pretrain.pth`` (a plain
state dict), read without unpickling code by metrics/convert_inception.py's
restricted reader and turned into params by :func:`convert`.

API::

  params = dinov2.convert(state_dict)                  # {torch key: array}
  feats = dinov2.features(params, images)              # (N, 1024)
  net = dinov2.DinoV2Network(params); net.compute(images)  # batched, numpy
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vaegan_jax.metrics import resize as resize_lib

INPUT_SIZE = 224
FEATURE_DIM = 1024
DEFAULT_RESIZE = 'dgm_eval'
LN_EPS = 1e-6
HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Config:
  """Architecture of a DINOv2 ViT (defaults: ViT-L/14 as released)."""
  patch_size: int = 14
  embed_dim: int = 1024
  depth: int = 24
  num_heads: int = 16
  mlp_ratio: int = 4
  pos_grid: int = 37          # 518 / 14: the grid the position embedding was learnt on
  interpolate_offset: float = 0.1


VITL14 = Config()


# ---------------------------------------------------------------------------
# Position-embedding interpolation (torch's bicubic, as a matrix).
# ---------------------------------------------------------------------------


def _cubic1(x, a):
  return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x, a):
  return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


@functools.lru_cache(maxsize=None)
def pos_embed_matrix(in_size: int, out_size: int, offset: float = 0.1) -> np.ndarray:
  """torch ``F.interpolate(mode='bicubic', align_corners=False,
  scale_factor=(out + offset)/in)`` along one axis, as a matrix.

  torch uses the given scale factor for the source coordinate:
  ``s = (i + 0.5) · in/(out + offset) - 0.5``; taps ``floor(s) - 1 ..
  floor(s) + 2`` clamped to the border; cubic convolution with ``A = -0.75``.

  Returns:
    float32 ``(out_size, in_size)``.
  """
  f32 = np.float32
  if offset:
    scale = f32(1.0 / ((out_size + offset) / in_size))
  else:
    scale = f32(in_size) / f32(out_size)
  m = np.zeros((out_size, in_size), np.float32)
  a = f32(-0.75)
  for i in range(out_size):   # float32 throughout, as torch's CPU kernel
    s = scale * (f32(i) + f32(0.5)) - f32(0.5)
    f = int(np.floor(s))
    t = s - f32(f)
    one, two = f32(1), f32(2)
    w = (_cubic2(t + one, a), _cubic1(t, a), _cubic1(one - t, a), _cubic2(two - t, a))
    for j, wj in enumerate(w):
      m[i, min(max(f - 1 + j, 0), in_size - 1)] += wj
  return m.astype(np.float32)


# ---------------------------------------------------------------------------
# The network (names mirror the PyTorch state dict).
# ---------------------------------------------------------------------------


class LayerScale(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * self.param('gamma', nn.initializers.ones, (x.shape[-1],))


class Attention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x):
    n, t, c = x.shape
    hd = c // self.num_heads
    qkv = nn.Dense(3 * c, precision=HIGHEST, name='qkv')(x)
    qkv = qkv.reshape(n, t, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]            # (N, T, H, D)
    logits = jnp.einsum('nqhd,nkhd->nhqk', q * (hd ** -0.5), k, precision=HIGHEST)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('nhqk,nkhd->nqhd', weights, v, precision=HIGHEST).reshape(n, t, c)
    return nn.Dense(c, precision=HIGHEST, name='proj')(out)


class Mlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.hidden, precision=HIGHEST, name='fc1')(x)
    h = jax.nn.gelu(h, approximate=False)
    return nn.Dense(x.shape[-1], precision=HIGHEST, name='fc2')(h)


class Block(nn.Module):
  """Pre-norm transformer block with LayerScale (dinov2 ``layers/block.py``)."""
  config: Config

  @nn.compact
  def __call__(self, x, _):
    cfg = self.config
    h = nn.LayerNorm(epsilon=LN_EPS, name='norm1')(x)
    x = x + LayerScale(name='ls1')(Attention(cfg.num_heads, name='attn')(h))
    h = nn.LayerNorm(epsilon=LN_EPS, name='norm2')(x)
    x = x + LayerScale(name='ls2')(Mlp(cfg.embed_dim * cfg.mlp_ratio, name='mlp')(h))
    return x, None


class DinoVisionTransformer(nn.Module):
  """Normalised ``(N, H, W, 3)`` images -> CLS features ``(N, embed_dim)``.

  The blocks are one ``nn.scan`` (params stacked on a leading ``depth`` axis:
  one compiled block for all 24).
  """
  config: Config = VITL14

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    p = cfg.patch_size
    n, height, width, _ = x.shape
    gh, gw = height // p, width // p
    x = x[:, :gh * p, :gw * p]
    x = nn.Conv(cfg.embed_dim, (p, p), strides=(p, p), padding='VALID',
                precision=HIGHEST, name='patch_embed')(x)
    x = x.reshape(n, gh * gw, cfg.embed_dim)
    cls = self.param('cls_token', nn.initializers.zeros, (1, 1, cfg.embed_dim))
    pos = self.param('pos_embed', nn.initializers.zeros,
                     (1, 1 + cfg.pos_grid ** 2, cfg.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, cfg.embed_dim)), x], axis=1)
    if (gh, gw) != (cfg.pos_grid, cfg.pos_grid):
      grid = pos[0, 1:].reshape(cfg.pos_grid, cfg.pos_grid, cfg.embed_dim)
      m_h = jnp.asarray(pos_embed_matrix(cfg.pos_grid, gh, cfg.interpolate_offset))
      m_w = jnp.asarray(pos_embed_matrix(cfg.pos_grid, gw, cfg.interpolate_offset))
      grid = jnp.einsum('pw,hwc->hpc', m_w, grid, precision=HIGHEST)
      grid = jnp.einsum('oh,hpc->opc', m_h, grid, precision=HIGHEST)
      pos = jnp.concatenate([pos[:, :1], grid.reshape(1, gh * gw, cfg.embed_dim)], axis=1)
    x = x + pos
    blocks = nn.scan(Block, variable_axes={'params': 0}, split_rngs={'params': True},
                     length=cfg.depth)
    x, _ = blocks(cfg, name='blocks')(x, None)
    x = nn.LayerNorm(epsilon=LN_EPS, name='norm')(x)
    return x[:, 0]


# ---------------------------------------------------------------------------
# Functional API and conversion.
# ---------------------------------------------------------------------------


def init_params(key: jax.Array | None = None, config: Config = VITL14) -> dict:
  """Random params (flax initialisers) with the released layout; for shapes
  and tests. Real weights: :func:`convert`."""
  key = jax.random.key(0) if key is None else key
  p = config.patch_size
  return DinoVisionTransformer(config).init(key, jnp.zeros((1, p, p, 3)))['params']


def abstract_params(config: Config = VITL14) -> dict:
  p = config.patch_size
  return jax.eval_shape(DinoVisionTransformer(config).init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, p, p, 3), jnp.float32))['params']


def torch_shapes(config: Config = VITL14) -> dict[str, tuple[int, ...]]:
  """Every key of the official state dict and its shape (``mask_token``,
  used only in training, included)."""
  c, p, hid = config.embed_dim, config.patch_size, config.embed_dim * config.mlp_ratio
  out = {'cls_token': (1, 1, c), 'pos_embed': (1, 1 + config.pos_grid ** 2, c),
         'mask_token': (1, c), 'patch_embed.proj.weight': (c, 3, p, p),
         'patch_embed.proj.bias': (c,), 'norm.weight': (c,), 'norm.bias': (c,)}
  for i in range(config.depth):
    b = f'blocks.{i}.'
    out.update({b + 'norm1.weight': (c,), b + 'norm1.bias': (c,),
                b + 'attn.qkv.weight': (3 * c, c), b + 'attn.qkv.bias': (3 * c,),
                b + 'attn.proj.weight': (c, c), b + 'attn.proj.bias': (c,),
                b + 'ls1.gamma': (c,), b + 'norm2.weight': (c,), b + 'norm2.bias': (c,),
                b + 'mlp.fc1.weight': (hid, c), b + 'mlp.fc1.bias': (hid,),
                b + 'mlp.fc2.weight': (c, hid), b + 'mlp.fc2.bias': (c,),
                b + 'ls2.gamma': (c,)})
  return out


def config_from_state(state: dict[str, np.ndarray]) -> Config:
  """The :class:`Config` of a state dict, from its shapes (heads of 64 dims,
  as every released DINOv2).

  Raises:
    ValueError: not a DINOv2 ViT state dict.
  """
  try:
    c = int(np.shape(state['cls_token'])[-1])
    depth = 1 + max(int(k.split('.')[1]) for k in state if k.startswith('blocks.'))
    return Config(patch_size=int(np.shape(state['patch_embed.proj.weight'])[-1]), embed_dim=c,
                  depth=depth, num_heads=max(c // 64, 1),
                  mlp_ratio=int(np.shape(state['blocks.0.mlp.fc1.weight'])[0]) // c,
                  pos_grid=int(round(math.sqrt(np.shape(state['pos_embed'])[1] - 1))))
  except (KeyError, ValueError, IndexError) as e:
    raise ValueError(f'not a DINOv2 ViT state dict ({type(e).__name__}: {e})') from None


def convert(state: dict[str, np.ndarray], config: Config | None = None) -> dict:
  """The official state dict (``{key: array}``, PyTorch layout) -> Flax params.

  Linear ``(out, in)`` -> ``(in, out)``; conv ``OIHW`` -> ``HWIO``; LayerNorm
  ``weight`` -> ``scale``; per-block tensors stacked on a leading axis.
  ``mask_token`` (training only) is dropped.

  Args:
    state: e.g. ``convert_inception.read_state_dict('dinov2_vitl14_pretrain.pth')``.
    config: expected architecture; default read from the shapes
      (:func:`config_from_state`).

  Raises:
    ValueError: a key is missing or unexpected, or a shape differs.
  """
  config = config or config_from_state(state)
  expected = torch_shapes(config)
  missing = sorted(set(expected) - set(state))
  extra = sorted(set(state) - set(expected))
  if missing:
    raise ValueError(f'{len(missing)} DINOv2 weights are missing (e.g. {missing[0]})')
  if extra:
    raise ValueError(f'{len(extra)} keys are not DINOv2 ViT weights (e.g. {extra[0]}; '
                     'register-token models are not supported)')
  for k, shape in expected.items():
    if tuple(np.shape(state[k])) != shape:
      raise ValueError(f'{k} has shape {tuple(np.shape(state[k]))}, DINOv2 needs {shape}')

  def f32(k):
    return np.asarray(state[k], np.float32)

  def dense(prefix):
    return {'kernel': f32(prefix + '.weight').T, 'bias': f32(prefix + '.bias')}

  def norm(prefix):
    return {'scale': f32(prefix + '.weight'), 'bias': f32(prefix + '.bias')}

  def block(i):
    b = f'blocks.{i}.'
    return {'norm1': norm(b + 'norm1'), 'norm2': norm(b + 'norm2'),
            'attn': {'qkv': dense(b + 'attn.qkv'), 'proj': dense(b + 'attn.proj')},
            'mlp': {'fc1': dense(b + 'mlp.fc1'), 'fc2': dense(b + 'mlp.fc2')},
            'ls1': {'gamma': f32(b + 'ls1.gamma')}, 'ls2': {'gamma': f32(b + 'ls2.gamma')}}

  blocks = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[block(i) for i in range(config.depth)])
  params = {
      'patch_embed': {'kernel': f32('patch_embed.proj.weight').transpose(2, 3, 1, 0),
                      'bias': f32('patch_embed.proj.bias')},
      'cls_token': f32('cls_token'), 'pos_embed': f32('pos_embed'),
      'blocks': blocks, 'norm': norm('norm')}
  return jax.tree_util.tree_map(jnp.asarray, params)


def config_of(params) -> Config:
  """The :class:`Config` a param tree was made for (from its shapes)."""
  depth, c, hid = params['blocks']['mlp']['fc1']['kernel'].shape
  p = params['patch_embed']['kernel'].shape[0]
  grid = int(round(math.sqrt(params['pos_embed'].shape[1] - 1)))
  return Config(patch_size=p, embed_dim=c, depth=depth, num_heads=c // 64,
                mlp_ratio=hid // c, pos_grid=grid)


def features(params, images, resize: str = DEFAULT_RESIZE, size: int = INPUT_SIZE,
             config: Config | None = None) -> jax.Array:
  """Images -> DINOv2 CLS features, as dgm-eval computes them.

  Args:
    params: from :func:`convert` (or :func:`init_params`).
    images: ``(N, H, W, C)``, ``C`` in ``{1, 3}``; uint8 or float in [0, 1]
      (floats are quantised to uint8 for ``dgm_eval``, as a PNG would be).
    resize: convention (metrics/resize.py); default dgm-eval's.
    size: the side images are resized to (224, dgm-eval's).
    config: architecture; default read from ``params`` (heads of 64 dims).

  Returns:
    float32 ``(N, embed_dim)`` (1024 for ViT-L).
  """
  config = config or config_of(params)
  x = resize_lib.preprocess(images, resize, size, normalize='imagenet')
  return apply_preprocessed(params, x, config)


def apply_preprocessed(params, x, config: Config | None = None) -> jax.Array:
  """The network on normalised ``(N, H, W, 3)`` inputs -> ``(N, embed_dim)``."""
  config = config or config_of(params)
  return DinoVisionTransformer(config).apply({'params': params}, x)


def load(path: str, resize: str = DEFAULT_RESIZE) -> 'DinoV2Network':
  """A DINOv2 network from a weights file.

  Args:
    path: the official ``.pth`` state dict (read by the restricted reader of
      metrics/convert_inception.py, nothing unpickled) or an ``.npz`` of the
      same arrays by state-dict key (``allow_pickle=False``; keys starting
      with ``__`` are metadata and skipped).
    resize: input resize convention (metrics/resize.py).

  Raises:
    UserError: a missing or unreadable file, or not DINOv2 weights; one line.
  """
  from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import convert_inception  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UserError(f'DINOv2 weights file {path} does not exist.')
  try:
    if path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files if not k.startswith('__')}
    else:
      state = convert_inception.read_state_dict(path)
    params = convert(state)
  except Exception as e:  # pylint: disable=broad-except  # zip/npy/pickle/shape errors
    raise UserError(f'{path} does not hold DINOv2 ViT weights ({type(e).__name__}: {e}).') from None
  return DinoV2Network(params, resize, path, _sha256(path))


def _sha256(path: str) -> str:
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  return inception.file_sha256(path)


class DinoV2Network:
  """Loaded DINOv2: ``net(images) -> (N, 1024)``, jitted; :meth:`compute`
  batches many images like ``InceptionNetwork.compute``.

  Attributes:
    params, config, resize, path, sha256 (of the weights file, if any).
  """

  def __init__(self, params, resize: str = DEFAULT_RESIZE, path: str = '', sha256: str = ''):
    self.params, self.path, self.sha256 = params, path, sha256
    self.resize = resize_lib.check_convention(resize)
    self.config = config_of(params)
    self._fn = jax.jit(functools.partial(features, resize=self.resize, config=self.config))

  def __call__(self, images):
    return self._fn(self.params, images)

  def compute(self, images: np.ndarray | Iterable, batch_size: int = 50,
              sharding=None, num_images: int | None = None) -> np.ndarray:
    """Features of many images in fixed-size chunks (one compilation).

    Args:
      images: ``(N, H, W, C)`` array or an iterable of batches; float batches
        are quantised to uint8 (as saving to PNG would).
      batch_size: images per jitted call (the last chunk is padded).
      sharding: optional input sharding (e.g. over a mesh's data axis).
      num_images: stop after this many (required for iterables).

    Returns:
      float32 numpy ``(N, embed_dim)``.
    """
    from vaegan_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    if isinstance(images, np.ndarray):
      total = len(images) if num_images is None else min(num_images, len(images))
      chunks = (images[i:i + batch_size] for i in range(0, total, batch_size))
    else:
      if num_images is None:
        raise ValueError('num_images is required when images is an iterable.')
      total, chunks = num_images, inception.rechunk(images, batch_size)
    outs, done = [], 0
    for chunk in chunks:
      chunk = np.asarray(chunk)[:total - done]
      if chunk.dtype != np.uint8:
        chunk = inception.quantize(chunk)
      valid = len(chunk)
      if valid < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), np.uint8)])
      x = sharding_lib.put(chunk, sharding) if sharding is not None else chunk
      outs.append((valid, self(x)))
      done += valid
      if done >= total:
        break
    fetched = sharding_lib.to_host([o for _, o in outs])  # Any number of processes.
    return np.concatenate([o[:v] for (v, _), o in zip(outs, fetched)])


def convert_pth(pth: str, out: str, sha256: str) -> dict:
  """The official ``dinov2_vitl14_pretrain.pth`` -> ``.npz`` (PyTorch layout,
  read without unpickling by metrics/convert_inception.py; ``load`` converts
  it to Flax params). The weights registry's converter for 'dinov2'."""
  from vaegan_jax.metrics import convert_inception  # pylint: disable=g-import-not-at-top
  return convert_inception.convert_state_dict(pth, out, sha256, 'DINOv2 ViT-L/14',
                                              set(torch_shapes(VITL14)))
