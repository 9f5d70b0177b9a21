"""Every config value checked in one place, before any data, model or checkpoint work.

`validate(config)` runs first in `train.train_and_evaluate` (and, without the
device rules, in `main.py` before the multi-host start), so a bad setting is
refused in a second or two with one `ConfigError` line that names the key,
the value, what is allowed and (filled in by `cli.run`) the config file:

    error: config.vae.likelihood='poisson' is not allowed; allowed: one of
    'bernoulli', 'gaussian' (config file configs/vae.py:smoke).

Two kinds of rules:

* `RULES`: one rule per key (a dotted path; `*` matches one section name, as
  in `optim.*.learning_rate`). Allowed values come from the code that uses
  them: `OneOf(lambda: objectives.GAN_LOSSES)`, `Dataset()` calls
  `input_pipeline.get_spec`, and so on, never a second hand-kept list.
* `CROSS_RULES`: functions `(config, where) -> None` that raise `ConfigError`
  for combinations the code relies on (batch divisible by the devices, image
  size supported by the architecture, warm-up shorter than decay, ...).

Adding a config key? Add one line to `RULES`, e.g.

    'data.image_size': Int(min=8),
    'gan.aux_weight': Float(min=0),
    'model.conditional': Bool(),

`tests/test_validation.py` walks every key of every config file (all
variants) and fails, naming the key, while one has no rule; it then checks
that each rule refuses a wrong type, an out-of-range value and (for enums) an
unknown value with one line naming the key. Keys without a rule are not
refused at run time (`unruled_keys` lists them).
"""

import dataclasses
import fnmatch
import math
from typing import Any, Callable, Sequence

from vaegan_jax.errors import UsageError


class ConfigError(UsageError):
  """A config value (or combination) the code cannot run with.

  Attributes:
    key: dotted key without the 'config.' prefix, e.g. 'train.batch_size'.
    value: the refused value.
    problem: e.g. 'is out of range'.
    allowed: what would be accepted, in words.
    source: the config file (`--config` flag value); `cli.run` fills it in.
  """

  def __init__(self, key: str, value: Any, problem: str, allowed: str, source: str = ''):
    self.key, self.value, self.problem, self.allowed = key, value, problem, allowed
    self.source = source
    super().__init__(key)

  def __str__(self):
    where = f' (config file {self.source})' if self.source else ''
    return f'config.{self.key}={self.value!r} {self.problem}; allowed: {self.allowed}{where}.'


# ---------------------------------------------------------------------------
# Per-key rules. `check` returns None or a problem ('has the wrong type (str)',
# 'is out of range', 'is not allowed'); `refused` gives values each rule must
# refuse, for the table-driven test.
# ---------------------------------------------------------------------------


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in [min, max] (either bound may be None)."""
  min: int | None = 0
  max: int | None = None

  def allowed(self):
    if self.max is None:
      return f'an integer >= {self.min}' if self.min is not None else 'an integer'
    return f'an integer in [{self.min}, {self.max}]'

  def check(self, v):
    if not _is_int(v):
      return f'has the wrong type ({type(v).__name__})'
    if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
      return 'is out of range'
    return None

  def refused(self):
    out = [('type', 'x'), ('type', 1.5)]
    if self.min is not None:
      out.append(('range', self.min - 1))
    if self.max is not None:
      out.append(('range', self.max + 1))
    return out


@dataclasses.dataclass(frozen=True)
class Float:
  """A finite number; `min` <= v (or `min` < v with `open_min`), v < `below`."""
  min: float | None = None
  open_min: bool = False
  below: float | None = None

  def allowed(self):
    parts = []
    if self.min is not None:
      parts.append(f'{">" if self.open_min else ">="} {self.min:g}')
    if self.below is not None:
      parts.append(f'< {self.below:g}')
    return 'a finite number' + (' ' + ' and '.join(parts) if parts else '')

  def check(self, v):
    if not _is_number(v):
      return f'has the wrong type ({type(v).__name__})'
    if not math.isfinite(v):
      return 'is not finite'
    if self.min is not None and (v <= self.min if self.open_min else v < self.min):
      return 'is out of range'
    if self.below is not None and v >= self.below:
      return 'is out of range'
    return None

  def refused(self):
    out = [('type', 'x'), ('range', float('nan'))]
    if self.min is not None:
      out.append(('range', self.min if self.open_min else self.min - 1.0))
    if self.below is not None:
      out.append(('range', self.below))
    return out


@dataclasses.dataclass(frozen=True)
class Bool:

  def allowed(self):
    return 'True or False'

  def check(self, v):
    return None if isinstance(v, bool) else f'has the wrong type ({type(v).__name__})'

  def refused(self):
    return [('type', 'yes'), ('type', 1)]


@dataclasses.dataclass(frozen=True)
class Str:
  """Any string (paths, metric names checked where they are used)."""

  def allowed(self):
    return 'a string'

  def check(self, v):
    return None if isinstance(v, str) else f'has the wrong type ({type(v).__name__})'

  def refused(self):
    return [('type', 3)]


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of `choices()`: a function returning the registry the code uses."""
  choices: Callable[[], Sequence[str]]

  def allowed(self):
    return 'one of ' + ', '.join(repr(c) for c in self.choices())

  def check(self, v):
    if not isinstance(v, str):
      return f'has the wrong type ({type(v).__name__})'
    return None if v in self.choices() else 'is not allowed'

  def refused(self):
    return [('type', 3), ('unknown', 'no_such_choice')]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A name `input_pipeline.get_spec` accepts (it owns the dataset registry)."""

  def _error(self, v):
    from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    try:
      input_pipeline.get_spec(v)
    except UserError as e:
      return str(e)
    return None

  def allowed(self):
    from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    names = getattr(input_pipeline, 'DATASETS', {})
    return 'a dataset input_pipeline.get_spec knows' + (
        f' ({", ".join(sorted(names))})' if names else '')

  def check(self, v):
    if not isinstance(v, str):
      return f'has the wrong type ({type(v).__name__})'
    error = self._error(v)
    if error is None:
      return None
    # get_spec's own reason where it is more than "unknown" (e.g. a folder: dataset).
    return 'is not allowed' + ('' if error.startswith('Unknown dataset') else f' ({error})')

  def refused(self):
    return [('type', 3), ('unknown', 'no_such_dataset')]


# Registries, imported when a rule runs (so `main.py` can validate before the
# heavy imports it does not need yet).


def _families():
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  return families.FAMILIES


def _gan_losses():
  from vaegan_jax import objectives  # pylint: disable=g-import-not-at-top
  return objectives.GAN_LOSSES


def _likelihoods():
  from vaegan_jax.families import vae  # pylint: disable=g-import-not-at-top
  return vae.LIKELIHOODS


def _dtypes():
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  return tuple(families.COMPUTE_DTYPES)


def _conv_impls():
  from vaegan_jax.models import layers  # pylint: disable=g-import-not-at-top
  return layers.IMPLS


def _gan_archs():
  from vaegan_jax.families import gan  # pylint: disable=g-import-not-at-top
  return gan.ARCHS


def _eval_features():
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  return backbones.EVAL_FEATURES


def _best_modes():
  from vaegan_jax import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.BEST_MODES


POSITIVE = Int(min=1)
COUNT = Int(min=0)              # 0 = off, where the key's comment says so.
RATE = Float(min=0.0, open_min=True)
NONNEG = Float(min=0.0)
PROBABILITY = Float(min=0.0, below=1.0)   # Dropout rates, Adam betas, EMA decay.

RULES = {
    'seed': Int(min=0, max=2**32 - 1),
    # model
    'model.family': OneOf(_families),
    'model.conv_impl': OneOf(_conv_impls),
    'model.latent_dim': POSITIVE,
    'model.width': POSITIVE,
    'model.hidden': POSITIVE,
    'model.decoder_hidden': COUNT,        # 0 = no Dense between z and the conv stack.
    'model.kernel_size': POSITIVE,
    'model.g_width_mult': RATE,
    'model.d_width_mult': RATE,
    'model.dec_width_mult': RATE,
    'model.leaky_slope': NONNEG,
    'model.d_dropout': PROBABILITY,
    'model.dis_dropout': PROBABILITY,
    'model.spectral_norm': Bool(),
    'model.enc_width': POSITIVE,
    'model.enc_hidden': POSITIVE,
    'model.dis_width': POSITIVE,
    'model.dis_kernel': POSITIVE,
    'model.arch': OneOf(_gan_archs),      # GAN networks (families/gan.py ARCHS).
    'model.g_conv_dim': POSITIVE,         # arch='resnet' widths.
    'model.d_conv_dim': POSITIVE,
    'model.conditional': Bool(),          # Needs a labelled dataset (cross rule below).
    # data
    'data.name': Dataset(),
    'data.data_dir': Str(),
    'data.cache_mb': COUNT,                # 0 = always stream the train split.
    'data.image_size': Int(min=8),        # folder:PATH only; data/sources.get_spec's minimum.
    # train
    'train.batch_size': POSITIVE,
    'train.num_steps': POSITIVE,
    'train.log_every_steps': POSITIVE,
    'train.checkpoint_every_steps': POSITIVE,
    'train.sample_every_steps': POSITIVE,
    'train.eval_every_steps': POSITIVE,
    'train.keep_checkpoints': POSITIVE,
    'train.compute_dtype': OneOf(_dtypes),
    'train.keep_host_memory': Bool(),     # Read by vaegan_jax.main before training.
    # eval
    'eval.generative_metrics': Bool(),
    'eval.features': OneOf(_eval_features),
    'eval.num_samples': Int(min=6),       # metrics.generative.Evaluator's minimum.
    'eval.iwae_k': COUNT,
    'eval.train_iwae_k': COUNT,
    'eval.best_metric': Str(),            # Checked against the eval metrics at the first eval.
    'eval.best_mode': OneOf(_best_modes),
    # vae
    'vae.likelihood': OneOf(_likelihoods),
    'vae.gaussian_scale': RATE,
    'vae.learn_scale': Bool(),
    'vae.beta': NONNEG,
    'vae.kl_warmup_steps': COUNT,
    # gan
    'gan.loss': OneOf(_gan_losses),
    'gan.d_steps': POSITIVE,
    'gan.gp_weight': NONNEG,
    'gan.r1_gamma': NONNEG,
    'gan.ema_decay': PROBABILITY,
    'gan.aux_weight': NONNEG,             # ACGAN class loss; > 0 needs model.conditional.
    # vaegan
    'vaegan.gamma': NONNEG,
    'vaegan.feature_std': RATE,
    'vaegan.gan_loss': OneOf(_gan_losses),
    # optim (the VAE's one optimiser, or one section per network)
    'optim.learning_rate': RATE,
    'optim.b1': PROBABILITY,
    'optim.b2': PROBABILITY,
    'optim.warmup_steps': COUNT,
    'optim.decay_steps': COUNT,           # 0 = constant learning rate.
    'optim.*.learning_rate': RATE,
    'optim.*.b1': PROBABILITY,
    'optim.*.b2': PROBABILITY,
    'optim.*.warmup_steps': COUNT,
    'optim.*.decay_steps': COUNT,         # 0 = constant learning rate.
    'optim.*.grad_clip': NONNEG,          # 0 = off.
    'optim.*.l2': NONNEG,                 # Coupled L2 weight decay; 0 = off.
}


def flatten(d: dict, prefix: str = '') -> dict:
  """{'train.batch_size': 128, ...} for every leaf of a nested dict."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _match(key: str, pattern: str) -> bool:
  parts, pats = key.split('.'), pattern.split('.')
  return len(parts) == len(pats) and all(fnmatch.fnmatchcase(k, p) for k, p in zip(parts, pats))


def rule_for(key: str):
  """The rule of a dotted key, or None."""
  if key in RULES:
    return RULES[key]
  for pattern, rule in RULES.items():
    if '*' in pattern and _match(key, pattern):
      return rule
  return None


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


def unruled_keys(config) -> list[str]:
  """Keys of `config` that no rule covers (the test fails on any)."""
  return sorted(k for k in flatten(_as_dict(config)) if rule_for(k) is None)


def check_value(key: str, value):
  """ConfigError if `value` breaks the rule of `key` (no rule: accepted)."""
  rule = rule_for(key)
  if rule is None:
    return
  problem = rule.check(value)
  if problem:
    raise ConfigError(key, value, problem, rule.allowed())


# ---------------------------------------------------------------------------
# Cross-field rules: what the code relies on beyond single values.
# ---------------------------------------------------------------------------


def _image_size_fits_architecture(config, flat):
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vaegan_jax.models import gan as gan_models  # pylint: disable=g-import-not-at-top
  if flat.get('model.family') not in ('gan', 'vaegan'):
    return  # The VAE's conv stack adapts to any size.
  shape = input_pipeline.image_shape(config)
  try:
    gan_models.plan(shape)
  except UserError:
    key = 'data.image_size' if 'data.image_size' in flat else 'data.name'
    raise ConfigError(
        key, flat[key], f'gives {shape[0]}x{shape[1]} images, which the DCGAN '
        f'{"generator" if flat["model.family"] == "gan" else "decoder"} does not support',
        f'a dataset of {", ".join(map(str, gan_models.PLANS))}-pixel square images') from None


def _conditional_needs_labels(config, flat):
  if not flat.get('model.conditional'):
    return
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if not input_pipeline.get_spec(config.data.name).num_classes:
    raise ConfigError('model.conditional', True, f'needs class labels and dataset '
                      f'{config.data.name!r} has none',
                      'False for this dataset, or a labelled dataset')


def _warmup_within_decay(config, flat):
  del config
  for key, decay in flat.items():
    if key.startswith('optim.') and key.endswith('.decay_steps') and decay:
      warm_key = key[:-len('decay_steps')] + 'warmup_steps'
      warm = flat.get(warm_key, 0)
      if warm >= decay:
        raise ConfigError(warm_key, warm, f'is not below {key}={decay}',
                          f'fewer warm-up steps than decay_steps ({decay})')


def _best_mode_with_metric(config, flat):
  del config
  if flat.get('eval.best_metric') and 'eval.best_mode' not in flat:
    raise ConfigError('eval.best_mode', None, 'is missing', "'min' or 'max'")


def _aux_needs_conditional(config, flat):
  del config
  if flat.get('gan.aux_weight', 0) > 0 and not flat.get('model.conditional'):
    raise ConfigError('gan.aux_weight', flat['gan.aux_weight'],
                      'needs model.conditional=True (the ACGAN class loss)',
                      '0 for an unconditional GAN')


def _conditional_arch(config, flat):
  del config
  if flat.get('model.conditional') and flat.get('model.arch', 'tutorial') != 'tutorial':
    raise ConfigError('model.arch', flat['model.arch'], 'has no class-conditional version',
                      "'tutorial' with model.conditional=True")


CROSS_RULES = [
    _image_size_fits_architecture,
    _conditional_needs_labels,
    _aux_needs_conditional,
    _conditional_arch,
    _warmup_within_decay,
    _best_mode_with_metric,
]


def check_family_sections(config, sections: Sequence[str]):
  """The rules of every key under `sections` (e.g. ('gan',)) and the
  conditional-model cross rules: what a family checks when it builds a state
  (`init_state`: training, `vaegan_jax.load`, evaluation). Only the keys the
  config has are checked, so a stored config that predates a key still loads;
  `validate` checks a whole run config before training."""
  flat = flatten(_as_dict(config))
  for key, value in flat.items():
    if key.split('.', 1)[0] in sections:
      check_value(key, value)
  for rule in (_conditional_needs_labels, _aux_needs_conditional, _conditional_arch):
    rule(config, flat)


def check_devices(config, device_count: int | None = None, process_count: int | None = None):
  """The global batch must split evenly over the devices and the processes."""
  import jax  # pylint: disable=g-import-not-at-top
  n = jax.device_count() if device_count is None else device_count
  p = jax.process_count() if process_count is None else process_count
  b = config.train.batch_size
  for count, what in ((n, 'devices'), (p, 'processes')):
    if b % count:
      raise ConfigError('train.batch_size', b, f'is not divisible by the number of {what} ({count})',
                        f'a multiple of {count}')


def validate(config, devices: bool = True, source: str = ''):
  """Raises one `ConfigError` for the first bad value or combination.

  Args:
    config: a ConfigDict (or nested dict) of a training run.
    devices: also check the rules that need the device count (initialises
      JAX's backend: `main.py` checks the rest before the multi-host start).
    source: the config file, for the message (`cli.run` adds it otherwise).
  """
  try:
    flat = flatten(_as_dict(config))
    if 'model.family' not in flat:
      raise ConfigError('model.family', None, 'is missing', OneOf(_families).allowed())
    for key, value in flat.items():
      check_value(key, value)
    for rule in CROSS_RULES:
      rule(config, flat)
    if devices:
      check_devices(config)
  except ConfigError as e:
    e.source = e.source or source
    raise
