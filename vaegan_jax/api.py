"""A trained model from its workdir alone, for notebooks and scripts.

    import jax, vaegan_jax
    model = vaegan_jax.load('/tmp/vae')            # latest checkpoint
    x = model.sample(jax.random.key(0), 16)        # (16, H, W, C) in [0, 1]
    mean, logvar = model.encode(x)                 # families with an encoder
    x_hat = model.reconstruct(x)
    sevens = model.sample(0, 16, labels=7)         # class-conditional checkpoints

Only the workdir is read: the config stored with the run (`config.json`) and
a checkpoint. The state is restored onto the devices of this process, so a
checkpoint written on N devices loads on one, and the other way round.
"""

import functools
import os

import jax
import numpy as np

from vaegan_jax import checkpoint
from vaegan_jax import console
from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import kernels
from vaegan_jax import run_config
from vaegan_jax import sharding
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError
from vaegan_jax.families import conditional


def _manager(workdir: str, best: bool):
  if best:
    return checkpoint.best_manager(workdir, read_only=True)
  return checkpoint.manager(workdir, read_only=True)


def available_steps(workdir: str, best: bool = False) -> list[int]:
  """The checkpointed steps in `workdir` (in checkpoints_best/ if `best`),
  ascending; [] when there are none."""
  directory = (checkpoint.best_checkpoint_dir(workdir) if best
               else checkpoint.checkpoint_dir(workdir))
  if not os.path.isdir(directory):
    return []
  with console.quiet_notices():
    mngr = _manager(workdir, best)
    try:
      return sorted(int(s) for s in mngr.all_steps())
    finally:
      mngr.close()


def load_config(workdir: str):
  """The config stored with the run in `workdir`.

  Raises:
    UsageError: `workdir` does not exist or is not a run directory (no
      config.json): the command was pointed at the wrong place.
  """
  if not os.path.isdir(workdir):
    raise UsageError(f'Workdir {workdir} does not exist.')
  if not os.path.exists(os.path.join(workdir, run_config.CONFIG_FILE)):
    raise UsageError(f'No {run_config.CONFIG_FILE} in {workdir}: is it a vaegan_jax workdir? '
                     'Give the directory a training run wrote.')
  return run_config.load(workdir)


has_encoder = families.has_encoder  # The family facts, defined once.


def _check_images(x, image_shape) -> jax.Array:
  """Images as float32 (N, H, W, C) in [0, 1]; uint8 is scaled by 1/255."""
  x = np.asarray(x) if not isinstance(x, jax.Array) else x
  if x.dtype == np.uint8:
    x = np.asarray(x, np.float32) / np.float32(255.0)
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
    raise UserError(f'Expected images of shape (N, {", ".join(map(str, image_shape))}), '
                    f'got {tuple(x.shape)}.')
  return jax.numpy.asarray(x, jax.numpy.float32)



def check_labels(labels, n: int, num_classes: int, family_name: str,
                 required: bool = False, flag: str = ''):
  """`labels` (None, an int or N ints) as int32 numpy (n,), or None.

  Args:
    num_classes: K of the model (0: unconditional); family_name: for messages.
    required: a conditional model needs labels here.
    flag: the command-line flag that gave `labels` (e.g. 'label'), named in
      the messages.

  Raises:
    UserError: labels for an unconditional model, labels outside [0, K), a
      count that is not n, or (`required`) none for a conditional model.
  """
  if labels is None:
    if required and num_classes:
      raise UserError(f'This {family_name} model is class-conditional: give the '
                      f'labels (0-{num_classes - 1}) of the images.')
    return None
  given = lambda v: f'--{flag}={v}' if flag else f'Label {v}'
  if not num_classes:
    what = f'{given(labels)} needs' if flag else 'Labels need'
    raise UserError(f'{what} a class-conditional checkpoint; this {family_name} model '
                    'was trained with model.conditional=False.')
  y = np.asarray(labels)
  if not np.issubdtype(y.dtype, np.integer) or y.ndim > 1:
    raise UserError(f'Labels must be an int or a 1-D array of ints, not {labels!r}.')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    bad = int(y.min()) if y.min() < 0 else int(y.max())
    raise UserError(f'{given(bad)} is out of range: this model has {num_classes} '
                    f'classes, 0-{num_classes - 1}.')
  if y.ndim == 1 and len(y) != n:
    raise UserError(f'Expected {n} labels, got {len(y)}.')
  return np.broadcast_to(y, (n,)).astype(np.int32)


class Model:
  """A restored model: the family's functions bound to its config and state.

  Attributes:
    workdir, step: where and at which training step the state was saved.
    config: the run's config (ml_collections.ConfigDict).
    family: the family module (vaegan_jax.families.<name>).
    state: the restored TrainState, replicated on this process's devices.
    image_shape: (H, W, C).
    latent_dim: Z, the size of one latent vector.
    has_encoder: whether encode / reconstruct are defined.
    num_classes: K of a class-conditional model (config.model.conditional),
      0 for an unconditional one.
  """

  def __init__(self, workdir, step, config, family, state):
    self.workdir, self.step, self.config = workdir, step, config
    self.family, self.state = family, state
    self.family_name = config.model.family
    self.image_shape = tuple(input_pipeline.image_shape(config))
    self.latent_dim = int(family.latent_dim(config))
    self.has_encoder = has_encoder(family)
    self.num_classes = conditional.num_classes(config)
    self._sample = jax.jit(functools.partial(family.sample, config), static_argnums=2)
    self._decode = jax.jit(functools.partial(family.decode, config))
    if self.has_encoder:
      self._encode = jax.jit(functools.partial(family.encode, config))
      self._reconstruct = jax.jit(functools.partial(family.reconstruct, config))

  def __repr__(self):
    return (f'Model({self.family_name!r}, step={self.step}, image_shape={self.image_shape}, '
            f'latent_dim={self.latent_dim}, workdir={self.workdir!r})')

  def _need_encoder(self, what: str):
    if not self.has_encoder:
      raise UserError(f'The {self.family_name} family has no encoder, so it cannot '
                      f'{what}; use sample or decode.')

  def check_labels(self, labels, n: int, required: bool = False):
    """`labels` (None, an int or N ints) as int32 (n,), or None; see
    `check_labels` (module level)."""
    y = check_labels(labels, n, self.num_classes, self.family_name, required)
    return None if y is None else jax.numpy.asarray(y)

  def sample(self, key, n: int, labels=None) -> jax.Array:
    """n samples from the model, (n, H, W, C) in [0, 1]. `key`: a PRNG key or an int.

    `labels` (conditional models): an int class or (n,) classes; None draws
    them uniformly (from `key`).
    """
    if isinstance(key, int):
      key = jax.random.PRNGKey(key)
    return self._sample(self.state, key, int(n), self.check_labels(labels, int(n)))

  def decode(self, z, labels=None) -> jax.Array:
    """Latents (N, Z) -> images (N, H, W, C) in [0, 1]; conditional models
    need `labels` (an int or (N,))."""
    z = jax.numpy.asarray(z, jax.numpy.float32)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise UserError(f'Expected latents of shape (N, {self.latent_dim}), got {tuple(z.shape)}.')
    return self._decode(self.state, z, self.check_labels(labels, z.shape[0], required=True))

  def encode(self, x, labels=None):
    """Images (N, H, W, C) in [0, 1] (or uint8) -> (mean, logvar), each (N, Z);
    conditional models need the images' `labels`."""
    self._need_encoder('encode')
    x = _check_images(x, self.image_shape)
    return self._encode(self.state, x, self.check_labels(labels, x.shape[0], required=True))

  def reconstruct(self, x, labels=None) -> jax.Array:
    """Images (N, H, W, C) in [0, 1] (or uint8) -> reconstructions, same shape;
    conditional models need the images' `labels`."""
    self._need_encoder('reconstruct')
    x = _check_images(x, self.image_shape)
    return self._reconstruct(self.state, x,
                             self.check_labels(labels, x.shape[0], required=True))


def _parse_step(step):
  """None | int | 'best' | a string of digits ('' = None)."""
  if step is None or step == '' or step == 'best':
    return step or None
  if isinstance(step, str) and step.isdigit():
    return int(step)
  if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
    return int(step)
  raise UsageError(f"Step {step!r} is neither a step number nor 'best'; leave it out for the latest.")


def load(workdir: str, step: int | str | None = None, mesh=None) -> Model:
  """Restores the model saved in `workdir`: the one way to open a run
  (`vaegan_jax.load`, sample, evaluate, the study, the notebook).

  Args:
    workdir: a training run's directory.
    step: a checkpointed step (an int or a string of digits, as the CLIs
      pass it); None or '' for the latest; 'best' for the one kept in
      WORKDIR/checkpoints_best by config.eval.best_metric.
    mesh: the device mesh to restore onto; default `sharding.make_mesh()`.

  Raises:
    UserError: `workdir` is not a run directory, has no checkpoint, has no
      checkpoint at `step` (the message lists those it has), or the
      checkpoint does not fit the stored config or cannot be read.
  """
  kernels.setup()
  step = _parse_step(step)
  config = load_config(workdir)
  family = families.get(config.model.family)
  best = step == 'best'
  steps = available_steps(workdir, best)
  if best and not steps:
    raise UserError(f'No best checkpoint in {checkpoint.best_checkpoint_dir(workdir)}: '
                    'the run kept none (config.eval.best_metric); load a step instead.')
  if not steps:
    raise UserError(f'No checkpoints in {checkpoint.checkpoint_dir(workdir)}: '
                    f'train first (python -m vaegan_jax.main --workdir={workdir} ...).')
  if step is None or best:
    step = steps[-1]
  elif step not in steps:
    raise UserError(f'No checkpoint at step {step} in {checkpoint.checkpoint_dir(workdir)}; '
                    f'available steps: {", ".join(map(str, steps))}.')
  mesh = mesh or sharding.make_mesh()
  try:
    abstract_state = jax.eval_shape(functools.partial(family.init_state, config),
                                    jax.random.PRNGKey(config.seed))
  except (AttributeError, KeyError) as e:  # ConfigDict's missing key.
    missing = str(e).strip('"\'').splitlines()[0][:200]
    raise UserError(
        f'The config stored in {workdir} lacks the key {missing!r}, which this version of the '
        f'{config.model.family} family needs: the run was made by another version of '
        'vaegan_jax. Add the key to its config.json with the value the run used.') from None
  shardings = sharding.state_sharding(mesh, abstract_state)
  with console.quiet_notices():
    mngr = _manager(workdir, best)
    try:
      state = checkpoint.restore(mngr, step, abstract_state, shardings)
      jax.block_until_ready(state)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      others = [s for s in steps if s != step]
      detail = (str(e).splitlines() or [''])[0].split(' See full')[0][:200]
      raise UserError(
          f'Checkpoint {step} in {mngr.directory} cannot be read, is it damaged? '
          f'({type(e).__name__}: {detail})'
          + (f'; other steps: {", ".join(map(str, others))}.' if others else '.')) from None
    finally:
      mngr.close()
  return Model(workdir, step, config, family, state)
