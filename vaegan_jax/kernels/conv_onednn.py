"""oneDNN's CPU convolutions as XLA custom calls: conv_impl='onednn'.

XLA:CPU runs its convolutions well below the oneDNN kernels TensorFlow uses
(docs/speed.md); every plain-JAX rearrangement in `conv_cpu` ends in
XLA's GEMM or convolution kernels. This module calls oneDNN itself: a small
C++ file (onednn_conv.cc, next to this one) defines oneDNN's convolution
forward, backward-data and backward-weights as XLA FFI handlers (`jax.ffi`),
and `down`, `up`, `wgrad` below are conv_cpu's three maps on them:

  down(big, W)      = convolution forward        (big = src, small = dst)
  up(small, W)      = convolution backward-data  (the adjoint of down in big)
  wgrad(big, small) = convolution backward-weights

`down_bias_act` and `up_bias_act` are down and up followed by a bias and a
ReLU / leaky ReLU, in one oneDNN call each (the bias and activation applied
as post-ops while the output is written; conv_cpu.conv_bias_act).
`narrow_down`, `narrow_up` and `narrow_wgrad` are the three maps for a small
side of one channel (conv_cpu formulation 'narrow'), as loops of the same
file vectorised over big's channels: oneDNN's kernels vectorise over output
channels and have one there.

They are formulation 'onednn' of each map in conv_cpu, so conv_cpu's
custom VJPs (each map's gradient made of the other maps) carry over: the
gradients and gradients of gradients (WGAN-GP, R1) run in oneDNN too.

Build. On first use the C++ file is compiled with the system C++ compiler
($CXX, else `c++` / `g++` on PATH) against the pip package
onednn-devel-cpu-gomp (oneDNN 3.x, OpenMP; headers and libdnnl.so located
through importlib.metadata) and `jax.ffi.include_dir()`, into
~/.cache/vaegan_jax/onednn/onednn_conv-<hash>.so; the hash covers the source,
the jax/jaxlib and oneDNN versions and the include and library paths, so a
change of any of them builds anew (and a cached build needs no compiler). The file is written under a
temporary name and renamed, so concurrent first uses do not clash. Takes
5-20 s once; later processes load the cached file.

Fallback. When the build cannot happen (not Linux x86_64, a backend other
than CPU, the package, headers or compiler missing, the compile failing, the
cache directory not writable), `available()` is False, one line starting
`note: conv_impl='onednn' unavailable (...)` is printed once per process,
and layers use conv_impl='gemm' instead ('xla' on other backends). Nothing
else changes. conv_impl='auto' asks `status()` (silent) and takes 'gemm'
there; the trainer's one line says why (`layers.auto_impl`).

Threads: oneDNN's OpenMP threads spin-wait by default, which stalls small
convolutions on a loaded machine; OMP_WAIT_POLICY=passive is set before the
library is loaded unless the environment already sets it.

Scope: float32, 1-D and 2-D convolutions (1-D as 2-D with a unit height),
any window stride, zero padding of either sign (`_geometry`).
"""

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'onednn_conv.cc')
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache',
                                 'vaegan_jax', 'onednn')
# The pip packages: the runtime library, and the headers (which pull it in).
LIB_PACKAGE = 'onednn-cpu-gomp'
DEV_PACKAGE = 'onednn-devel-cpu-gomp'
# FFI target name -> the handler symbol in onednn_conv.cc.
TARGETS = {
    'vaegan_onednn_conv_fwd': 'VaeganOnednnConvFwd',
    'vaegan_onednn_conv_bwd_data': 'VaeganOnednnConvBwdData',
    'vaegan_onednn_conv_bwd_weights': 'VaeganOnednnConvBwdWeights',
    'vaegan_onednn_conv_fwd_bias_act': 'VaeganOnednnConvFwdBiasAct',
    'vaegan_onednn_deconv_fwd_bias_act': 'VaeganOnednnDeconvFwdBiasAct',
    'vaegan_narrow_down': 'VaeganNarrowDown',
    'vaegan_narrow_up': 'VaeganNarrowUp',
    'vaegan_narrow_wgrad': 'VaeganNarrowWgrad',
}


class Unavailable(Exception):
  """Why conv_impl='onednn' cannot run here (one short phrase)."""


# Per process: None until `available()` ran, then (ok, reason).
_status = None
_noted = False


# ---------------------------------------------------------------------------
# Finding the pieces and building the handler library.
# ---------------------------------------------------------------------------


def _package_file(package, suffix):
  """The installed file of a pip package whose path ends with suffix."""
  try:
    files = importlib.metadata.files(package) or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f'pip package {package} not installed') from None
  for f in files:
    if ('/' + str(f).replace(os.sep, '/')).endswith('/' + suffix):
      path = os.path.abspath(str(f.locate()))
      if os.path.exists(path):
        return path
  raise Unavailable(f'{suffix} not found in pip package {package}')


def find_onednn():
  """oneDNN's include directory, libdnnl.so.3 and version.

  Returns:
    (include_dir, library_path, version string).

  Raises:
    Unavailable: the packages or their files are missing.
  """
  header = _package_file(DEV_PACKAGE, 'oneapi/dnnl/dnnl.hpp')
  library = _package_file(LIB_PACKAGE, 'libdnnl.so.3')
  include = os.path.dirname(os.path.dirname(os.path.dirname(header)))
  return include, library, importlib.metadata.version(LIB_PACKAGE)


def find_compiler():
  """$CXX, else `c++` or `g++` on PATH; raises Unavailable if none."""
  env = os.environ.get('CXX', '').strip()
  candidates = [env] if env else ['c++', 'g++']
  for name in candidates:
    path = shutil.which(name)
    if path:
      return path
  raise Unavailable('no C++ compiler found: set CXX' if not env
                    else f'C++ compiler CXX={env!r} not found')


# Compiler flags (part of the build's hash). -fopenmp-simd: the narrow
# loops' `omp simd` pragmas, without the OpenMP runtime.
FLAGS = ('-O3', '-fopenmp-simd', '-std=c++17')


def library_name(include, library, version):
  """onednn_conv-<hash>.so: the hash of everything the binary depends on."""
  digest = hashlib.sha256()
  with open(SOURCE, 'rb') as f:
    digest.update(f.read())
  import jaxlib  # pylint: disable=g-import-not-at-top
  for part in (jax.__version__, jaxlib.__version__, version, include,
               library, jax.ffi.include_dir(), *FLAGS):
    digest.update(b'\0' + str(part).encode())
  return f'onednn_conv-{digest.hexdigest()[:16]}.so'


def build(cache_dir=None):
  """The handler library: from the cache, else compiled into it.

  Args:
    cache_dir: where built libraries live (default ~/.cache/vaegan_jax/onednn).

  Returns:
    The path of the shared library.

  Raises:
    Unavailable: platform, packages, compiler, cache directory or the
      compile itself failed.
  """
  if sys.platform != 'linux' or platform.machine() not in ('x86_64', 'AMD64'):
    raise Unavailable(f'needs Linux x86_64, not {sys.platform} '
                      f'{platform.machine()}')
  include, library, version = find_onednn()
  cache_dir = cache_dir or DEFAULT_CACHE_DIR
  path = os.path.join(cache_dir, library_name(include, library, version))
  if os.path.exists(path):
    return path
  compiler = find_compiler()
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.building-', suffix='.so',
                               dir=cache_dir)
    os.close(fd)
  except OSError as e:
    raise Unavailable(f'cache directory {cache_dir} not writable '
                      f'({e.strerror})') from None
  lib_dir = os.path.dirname(library)
  cmd = [compiler, *FLAGS, '-shared', '-fPIC', SOURCE,
         f'-I{jax.ffi.include_dir()}', f'-I{include}', library,
         f'-Wl,-rpath,{lib_dir}', '-o', tmp]
  try:
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
      raise Unavailable(f'running {compiler} failed ({e.strerror})') from None
    if proc.returncode != 0:
      lines = [l[l.index('error'):] for l in proc.stderr.splitlines()
               if 'error' in l] or proc.stderr.splitlines() or ['?']
      raise Unavailable(f'building {os.path.basename(SOURCE)} failed: '
                        f'{lines[0].strip()[:160]}')
    os.replace(tmp, path)  # Atomic: a concurrent build renames the same file.
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _load(path):
  """Load the built library and register its three FFI targets."""
  os.environ.setdefault('OMP_WAIT_POLICY', 'passive')
  lib = ctypes.CDLL(path)
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform='cpu')


def available(cache_dir=None):
  """Whether the oneDNN convolutions can run; builds and loads them once.

  When they cannot, prints one line saying why, once per process.

  Args:
    cache_dir: the build cache (default ~/.cache/vaegan_jax/onednn).

  Returns:
    True when the three FFI targets are registered.
  """
  global _noted
  ok, reason = status(cache_dir)
  if not ok and not _noted:
    _noted = True
    print(f"note: conv_impl='onednn' unavailable ({reason}); using {fallback()!r}",
          flush=True)
  return ok


def fallback():
  """The conv_impl that runs where these convolutions cannot: 'gemm' on the
  CPU backend, 'xla' on the others."""
  return 'gemm' if jax.default_backend() == 'cpu' else 'xla'


def status(cache_dir=None):
  """`(ok, reason)`: whether the oneDNN convolutions can run, and if not why;
  builds and loads them on the first call, prints nothing."""
  global _status
  if _status is None:
    try:
      if jax.default_backend() != 'cpu':
        raise Unavailable(f'the backend is {jax.default_backend()}, not cpu')
      _load(build(cache_dir))
      _status = (True, '')
    except Unavailable as e:
      _status = (False, str(e))
    except OSError as e:  # The library did not load.
      _status = (False, f'loading the built library failed: {e}')
    except Exception as e:  # pylint: disable=broad-except
      # Whatever else went wrong, the run goes on with 'gemm'.
      _status = (False, f'{type(e).__name__}: {e}')
  return _status


# ---------------------------------------------------------------------------
# conv_cpu's three maps on oneDNN.
# ---------------------------------------------------------------------------


def supports(dtype, dims):
  """Whether the 'onednn' formulation handles this dtype and spatial rank."""
  return jnp.dtype(dtype) == jnp.float32 and 1 <= len(dims) <= 2


def _geometry(dims):
  """oneDNN's strides and padding for conv_cpu `Dim`s, and a pad of big.

  small[o] = sum_t big[step * o + base + t] W[t] is a convolution of big with
  stride `step` and zero padding (lo, hi) = (-base, last position used + 1 -
  n_big). oneDNN is given padding clipped to [0, k - 1] (with more, some
  outputs would see only zeros, which its kernels refuse); the rest is done
  on big first by `lax.pad`: a negative amount crops positions no tap
  reaches, a positive one pads explicitly.

  Returns:
    (strides, pads, extra): 2-D lists (1-D dims get a unit height in front);
    extra is the (lo, hi) per dim to `lax.pad` big by before the call.
  """
  strides, pads, extra = [], [], []
  for d in dims:
    lo, hi = d.zero_padding()
    clip = lambda p, k=d.k: min(max(p, 0), k - 1)
    strides.append(d.step)
    pads.append((clip(lo), clip(hi)))
    extra.append((lo - clip(lo), hi - clip(hi)))
  if len(dims) == 1:
    strides, pads, extra = [1] + strides, [(0, 0)] + pads, [(0, 0)] + extra
  return strides, pads, extra


def _pad(big, extra, sign=1):
  """lax.pad of big's spatial dims by sign * extra (negative: crop)."""
  return lax.pad(big, jnp.zeros((), big.dtype),
                 [(0, 0, 0)] + [(sign * lo, sign * hi, 0) for lo, hi in extra]
                 + [(0, 0, 0)])


def _attrs(strides, pads):
  (pt, pb), (pl, pr) = pads
  return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]),
              pt=np.int64(pt), pb=np.int64(pb), pl=np.int64(pl),
              pr=np.int64(pr))


def _shape_2d(shape, nsp):
  """(N, L, C) -> (N, 1, L, C) for a 1-D shape; 2-D shapes unchanged."""
  return tuple(shape) if nsp == 2 else (shape[0], 1) + tuple(shape[1:])


def _as_2d(a, nsp):
  """(N, L, C) -> (N, 1, L, C); 2-D arrays unchanged."""
  return a[:, None] if nsp == 1 else a


def _kernel(w, dims):
  """(T, C_big, C_small) -> HWIO (kh, kw, C_big, C_small)."""
  ksize = tuple(d.k for d in dims)
  if len(dims) == 1:
    ksize = (1,) + ksize
  return w.reshape(ksize + w.shape[1:])


def _call(target, shape, *args, **attrs):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*args, **attrs)


def _check(*arrays):
  if not available():
    raise RuntimeError("conv formulation 'onednn' unavailable: "
                       f'{_status[1]}.')
  if not all(a.dtype == jnp.float32 for a in arrays):
    raise ValueError("conv formulation 'onednn' takes float32 only, not "
                     f'{[str(a.dtype) for a in arrays]}.')


def down(big, w, dims):
  """small = G . W (conv_cpu.down) as oneDNN's convolution forward.

  Args:
    big: (N, *n_big, C_big) float32, 1 or 2 spatial dims.
    w: (T, C_big, C_small), taps row-major.
    dims: tuple of conv_cpu.Dim.

  Returns:
    (N, *n_small, C_small).
  """
  _check(big, w)
  return _forward('vaegan_onednn_conv_fwd', big, w, dims, transpose=False)


def up(small, w, dims):
  """big = gather^T(small . W^T) (conv_cpu.up) as oneDNN's backward-data.

  Args:
    small: (N, *n_small, C_small) float32.
    w: (T, C_big, C_small).
    dims: tuple of conv_cpu.Dim.

  Returns:
    (N, *n_big, C_big).
  """
  _check(small, w)
  nsp = len(dims)
  strides, pads, extra = _geometry(dims)
  n_big = [1] * (2 - nsp) + [d.n_big for d in dims]
  padded = [small.shape[0]] + [n + lo + hi for n, (lo, hi) in
                               zip(n_big, extra)] + [w.shape[1]]
  big = _call('vaegan_onednn_conv_bwd_data', tuple(padded),
              _as_2d(small, nsp), _kernel(w, dims), **_attrs(strides, pads))
  big = _pad(big, extra, sign=-1)  # The adjoint of down's pad.
  return big.reshape((small.shape[0],) + tuple(d.n_big for d in dims)
                     + (w.shape[1],))


def wgrad(big, small, dims):
  """dW = G^T . small (conv_cpu.wgrad) as oneDNN's backward-weights.

  Args:
    big: (N, *n_big, C_big) float32.
    small: (N, *n_small, C_small) float32.
    dims: tuple of conv_cpu.Dim.

  Returns:
    (T, C_big, C_small).
  """
  _check(big, small)
  nsp = len(dims)
  strides, pads, extra = _geometry(dims)
  taps = int(np.prod([d.k for d in dims]))
  shape = ((1,) * (2 - nsp) + tuple(d.k for d in dims)
           + (big.shape[-1], small.shape[-1]))
  dw = _call('vaegan_onednn_conv_bwd_weights', shape,
             _pad(_as_2d(big, nsp), extra), _as_2d(small, nsp),
             **_attrs(strides, pads))
  return dw.reshape(taps, big.shape[-1], small.shape[-1])


# ---------------------------------------------------------------------------
# down / up + bias + activation in one call (conv_cpu.conv_bias_act).
# ---------------------------------------------------------------------------


def up_fusable(dims):
  """Whether `up_bias_act` can take these dims: oneDNN's deconvolution
  writes every output position, so big must be exactly what the taps span
  (no positions that need a zero pad or crop around the call)."""
  if not 1 <= len(dims) <= 2:
    return False
  strides, pads, extra = _geometry(dims)
  dims2 = [None] * (2 - len(dims)) + list(dims)
  for d, s, (lo, hi), ex in zip(dims2, strides, pads, extra):
    n_big, n_small, k = (1, 1, 1) if d is None else (d.n_big, d.n_small, d.k)
    if ex != (0, 0) or (n_small - 1) * s + k - lo - hi != n_big:
      return False
  return True


def down_bias_act(big, w, bias, dims, slope):
  """act(down(big, W) + bias), act(v) = v if v > 0 else slope * v.

  Args:
    big: (N, *n_big, C_big) float32, 1 or 2 spatial dims.
    w: (T, C_big, C_small).
    bias: (C_small,).
    dims: tuple of conv_cpu.Dim.
    slope: the activation's negative slope (0: ReLU).

  Returns:
    (N, *n_small, C_small).
  """
  return _bias_act_call(big, w, bias, dims, slope, transpose=False)


def up_bias_act(small, w, bias, dims, slope):
  """act(up(small, W) + bias) where `up_fusable(dims)`; arguments as for
  `down_bias_act` with small (N, *n_small, C_small) in, bias (C_big,) and
  (N, *n_big, C_big) out."""
  if not up_fusable(dims):
    raise ValueError(f'up_bias_act: big is not what the taps span: {dims}.')
  return _bias_act_call(small, w, bias, dims, slope, transpose=True)


def _bias_act_call(x, w, bias, dims, slope, transpose):
  """The fused forward call: a convolution of `x` (down), or a deconvolution
  (up, `transpose`), then bias and activation."""
  _check(x, w, bias)
  target = ('vaegan_onednn_deconv_fwd_bias_act' if transpose
            else 'vaegan_onednn_conv_fwd_bias_act')
  return _forward(target, x, w, dims, bias, transpose=transpose, slope=np.float32(slope))


def _forward(target, x, w, dims, *args, transpose, **attrs):
  """The oneDNN handler `target` on `x` and the kernel (then `args`), with
  the geometry of `dims` (and `attrs`): a convolution from the big side to
  the small one, or, `transpose`, a deconvolution from small to big."""
  nsp = len(dims)
  strides, pads, extra = _geometry(dims)
  if transpose:
    x2 = _as_2d(x, nsp)
    out = (x.shape[0],) + tuple(d.n_big for d in dims) + (w.shape[1],)
  else:
    x2 = _pad(_as_2d(x, nsp), extra)
    out = (x.shape[0],) + tuple(d.n_small for d in dims) + (w.shape[-1],)
  y = _call(target, _shape_2d(out, nsp), x2, _kernel(w, dims), *args,
            **_attrs(strides, pads), **attrs)
  return y.reshape(out)


# ---------------------------------------------------------------------------
# The same maps for a one-channel small side: conv_cpu formulation 'narrow'.
# ---------------------------------------------------------------------------


def _narrow_attrs(dims):
  """Steps and bases of the 'narrow' calls (1-D dims: a unit height first)."""
  (dh, dw) = ((dims[0]._replace(n_big=1, n_small=1, k=1, step=1, base=0),)
              if len(dims) == 1 else ()) + tuple(dims)
  return dict(sh=np.int64(dh.step), sw=np.int64(dw.step),
              bh=np.int64(dh.base), bw=np.int64(dw.base))


def _check_narrow(small_channels, *arrays):
  _check(*arrays)
  if small_channels != 1:
    raise ValueError("conv formulation 'narrow' needs one channel on the "
                     f'small side, not {small_channels}.')


def narrow_down(big, w, dims):
  """small = G . W (conv_cpu.down) for C_small == 1, as a custom call.

  Args:
    big: (N, *n_big, C_big) float32, 1 or 2 spatial dims.
    w: (T, C_big, 1).
    dims: tuple of conv_cpu.Dim.

  Returns:
    (N, *n_small, 1).
  """
  _check_narrow(w.shape[-1], big, w)
  nsp = len(dims)
  out = (big.shape[0],) + tuple(d.n_small for d in dims) + (1,)
  small = _call('vaegan_narrow_down', _shape_2d(out, nsp), _as_2d(big, nsp),
                _kernel(w, dims), **_narrow_attrs(dims))
  return small.reshape(out)


def narrow_up(small, w, dims):
  """big = gather^T(small . W^T) (conv_cpu.up) for C_small == 1.

  Args:
    small: (N, *n_small, 1) float32.
    w: (T, C_big, 1).
    dims: tuple of conv_cpu.Dim.

  Returns:
    (N, *n_big, C_big).
  """
  _check_narrow(small.shape[-1], small, w)
  nsp = len(dims)
  out = (small.shape[0],) + tuple(d.n_big for d in dims) + (w.shape[1],)
  big = _call('vaegan_narrow_up', _shape_2d(out, nsp), _as_2d(small, nsp),
              _kernel(w, dims), **_narrow_attrs(dims))
  return big.reshape(out)


def narrow_wgrad(big, small, dims):
  """dW = G^T . small (conv_cpu.wgrad) for C_small == 1.

  Args:
    big: (N, *n_big, C_big) float32.
    small: (N, *n_small, 1) float32.
    dims: tuple of conv_cpu.Dim.

  Returns:
    (T, C_big, 1).
  """
  _check_narrow(small.shape[-1], big, small)
  nsp = len(dims)
  shape = (1,) * (2 - nsp) + tuple(d.k for d in dims) + (big.shape[-1], 1)
  dw = _call('vaegan_narrow_wgrad', shape, _as_2d(big, nsp), _as_2d(small, nsp),
             **_narrow_attrs(dims))
  return dw.reshape(-1, big.shape[-1], 1)
