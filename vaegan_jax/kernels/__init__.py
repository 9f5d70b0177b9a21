"""CPU kernels: hand-written compute that is not model code.

  conv_cpu.py      convolutions and their gradients as GEMMs and rearrangements
                   (conv_impl='gemm', and the plans behind 'onednn')
  conv_onednn.py   oneDNN's convolutions as XLA FFI custom calls; its C++ is
  onednn_conv.cc   built on first use (conv_impl='onednn')
  threefry_cpu.py  jax's unrolled threefry lowering on CPU (same random bits)

Importing this package changes nothing in jax. The entry points (training,
sampling, evaluation, `vaegan_jax.load`, the study and the experiments that
train) call `setup()` once, before anything is compiled.
"""


def setup() -> bool:
  """Installs what the kernels change in this process: the threefry lowering
  on CPU (`threefry_cpu.install`). Idempotent; True if it is in place."""
  from vaegan_jax.kernels import threefry_cpu  # pylint: disable=g-import-not-at-top
  return threefry_cpu.install()
