"""The train state: a plain pytree that is checkpointed as it is."""

import flax
import jax
import jax.numpy as jnp
import optax

from vaegan_jax import rules


@flax.struct.dataclass
class TrainState:
  """Everything the future of a run depends on (the data order is a pure
  function of `config.seed` and `step`).

  Attributes:
    step: int32 scalar, the number of updates done.
    key: uint32 (2,) root PRNG key; step keys are `fold_in(key, step)`.
    params: network name -> params (e.g. {'encoder': …, 'decoder': …}).
    batch_stats: network name -> BatchNorm statistics ({} where none).
    opt_state: optimiser name -> optax state; one per optimiser.
    ema_params: network name -> exponential moving average of its params.
  """
  step: jax.Array
  key: jax.Array
  params: dict
  batch_stats: dict
  opt_state: dict
  ema_params: dict


def step_key(state: TrainState, purpose: int):
  """The key of this step for one purpose (z, dropout, …): pure, resumable."""
  return jax.random.fold_in(jax.random.fold_in(state.key, state.step), purpose)


# config.optim: the VAE's one optimiser, or one section per network (`adam`).
RULES = {
    'optim.learning_rate': rules.RATE,
    'optim.b1': rules.PROBABILITY,
    'optim.b2': rules.PROBABILITY,
    'optim.warmup_steps': rules.COUNT,
    'optim.decay_steps': rules.COUNT,           # 0 = constant learning rate.
    'optim.*.learning_rate': rules.RATE,
    'optim.*.b1': rules.PROBABILITY,
    'optim.*.b2': rules.PROBABILITY,
    'optim.*.warmup_steps': rules.COUNT,
    'optim.*.decay_steps': rules.COUNT,         # 0 = constant learning rate.
    'optim.*.grad_clip': rules.NONNEG,          # 0 = off.
    'optim.*.l2': rules.NONNEG,                 # Coupled L2 weight decay; 0 = off.
}


def warmup_within_decay(config, flat):
  """The learning-rate warm-up ends before the decay does."""
  del config
  for key, decay in flat.items():
    if key.startswith('optim.') and key.endswith('.decay_steps') and decay:
      warm_key = key[:-len('decay_steps')] + 'warmup_steps'
      warm = flat.get(warm_key, 0)
      if warm >= decay:
        raise rules.ConfigError(warm_key, warm, f'is not below {key}={decay}',
                                f'fewer warm-up steps than decay_steps ({decay})')


def adam(cfg) -> optax.GradientTransformation:
  """Adam from a config section with learning_rate, b1, b2 (and optional
  warmup_steps / decay_steps for a cosine schedule, grad_clip, l2)."""
  lr = cfg.learning_rate
  if cfg.get('decay_steps', 0):
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.get('warmup_steps', 0), 1), cfg.decay_steps)
  tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
  if cfg.get('l2', 0):  # Coupled L2 (Radford et al.'s Theano code: grad += l2 * param).
    tx = optax.chain(optax.add_decayed_weights(cfg.l2), tx)
  if cfg.get('grad_clip', 0):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def update(tx, grads, opt_state, params):
  """One optimiser update; returns (new_params, new_opt_state)."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def ema(ema_params, params, decay):
  """Exponential moving average of params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def global_norm(tree):
  return optax.tree.norm(tree).astype(jnp.float32)
