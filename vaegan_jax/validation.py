"""Every config value checked in one place, before any data, model or checkpoint work.

`validate(config)` runs first in `train.train_and_evaluate` (and, without the
device rules, in `main.py` before the multi-host start), so a bad setting is
refused in a second or two with one `ConfigError` line that names the key,
the value, what is allowed and (filled in by `cli.run`) the config file:

    error: config.vae.likelihood='poisson' is not allowed; allowed: one of
    'bernoulli', 'gaussian' (config file configs/vae.py:smoke).

The rules sit next to what they check (vaegan_jax/rules.py has the rule
types): each module that owns config keys has a `RULES` table built from its
own constants, and `CROSS_RULES` functions `(config, flat) -> None` for
combinations its code relies on. `rule_book()` gathers them, in `OWNERS`:

    config_base.py         seed, data.data_dir/cache_mb/worker_count, train.*, eval.* (+ best mode)
    input_pipeline.py      data.name (its dataset registry), data.image_size
    families/__init__.py   model.family, train.compute_dtype
    models/layers.py       model.conv_impl (IMPLS)
    checkpoint.py          eval.best_mode (BEST_MODES)
    state.py               optim.* (+ warm-up within decay)
    families/conditional.py model.conditional (+ labels, ACGAN, arch rules)
    families/vae.py        vae.*, the VAE's model keys (LIKELIHOODS)
    families/gan.py        gan.*, the GAN's model keys (ARCHS, GAN_LOSSES; + image size)
    families/vaegan.py     vaegan.*, the VAE-GAN's model keys

Each family's `init_state` checks its own table the same way
(`rules.check` in its `check_config`).

Adding a config key? Add one line to the `RULES` of the module that reads
it, e.g. `'gan.aux_weight': rules.NONNEG`. `tests/test_validation.py` walks
every key of every config file (all variants) and fails, naming the key,
while one has no rule; it then checks that each rule refuses a wrong type,
an out-of-range value and (for enums) an unknown value with one line naming
the key. Keys without a rule are not refused at run time (`unruled_keys`
lists them).
"""

import functools

from vaegan_jax import rules
# The rule types and helpers, under the names callers know.
from vaegan_jax.rules import Bool, ConfigError, Float, Int, OneOf, Str, flatten  # pylint: disable=unused-import

# The modules that own config keys, in the order their cross rules run.
OWNERS = ('vaegan_jax.config_base', 'vaegan_jax.input_pipeline', 'vaegan_jax.families',
          'vaegan_jax.models.layers', 'vaegan_jax.checkpoint', 'vaegan_jax.state',
          'vaegan_jax.families.conditional', 'vaegan_jax.families.vae',
          'vaegan_jax.families.gan', 'vaegan_jax.families.vaegan')


@functools.cache
def rule_book() -> tuple[dict, tuple]:
  """(every key's rule, every cross rule), gathered from `OWNERS`. Imported
  when first used, so `main.py` can parse flags before the heavy imports.

  Raises:
    AssertionError: two owners give one key different rules.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  from vaegan_jax import checkpoint, config_base, state  # pylint: disable=g-import-not-at-top
  from vaegan_jax.families import conditional, gan  # pylint: disable=g-import-not-at-top
  table = {}
  for name in OWNERS:
    for key, rule in importlib.import_module(name).RULES.items():
      assert table.setdefault(key, rule) == rule, f'{key}: two different rules'
  del checkpoint
  cross = (gan.image_size_fits_architecture, *conditional.CROSS_RULES,
           state.warmup_within_decay, config_base.best_mode_with_metric)
  return table, cross


def __getattr__(name):
  """`RULES` (every key's rule) and `Dataset` (input_pipeline's rule type),
  gathered on first use."""
  if name == 'RULES':
    return rule_book()[0]
  if name == 'Dataset':
    from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.Dataset
  raise AttributeError(name)


def rule_for(key: str):
  """The rule of a dotted key, or None."""
  return rules.rule_for(key, rule_book()[0])


def unruled_keys(config) -> list[str]:
  """Keys of `config` that no rule covers (the test fails on any)."""
  return sorted(k for k in rules.as_flat(config) if rule_for(k) is None)


def check_value(key: str, value):
  """ConfigError if `value` breaks the rule of `key` (no rule: accepted)."""
  rules.check_value(key, value, rule_book()[0])


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
  table, cross_rules = rule_book()
  try:
    flat = rules.as_flat(config)
    if 'model.family' not in flat:
      raise ConfigError('model.family', None, 'is missing', table['model.family'].allowed())
    for key, value in flat.items():
      rules.check_value(key, value, table)
    for rule in cross_rules:
      rule(config, flat)
    if devices:
      check_devices(config)
  except ConfigError as e:
    e.source = e.source or source
    raise
