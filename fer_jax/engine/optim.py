"""AdamW, stepped every batch, scaled by a reduce-on-plateau factor stepped once per epoch.

Flax's TrainState.apply_gradients cannot pass the `value` that
optax.contrib.reduce_on_plateau needs, and chaining the plateau into the per-step
optimizer would count its patience in update calls. So the two are kept apart:
the plateau's state only changes in `plateau_step`, once per epoch, on the
validation loss; each train step multiplies AdamW's update by its current scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax import contrib


def make_optimizer(config) -> optax.GradientTransformation:
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(learning_rate=config.learning_rate, weight_decay=config.weight_decay))
    return optax.chain(*parts)


def make_plateau(config) -> optax.GradientTransformationExtraArgs:
    p = config.plateau
    return contrib.reduce_on_plateau(factor=p.factor, patience=p.patience, rtol=p.rtol, atol=p.atol,
                                     cooldown=p.cooldown, min_scale=p.min_scale)


def plateau_scale(plateau_state) -> jax.Array:
    return plateau_state.scale


def plateau_step(config, plateau_state, validation_loss: float):
    """Advances the plateau schedule by one epoch, given that epoch's validation loss."""
    if not config.plateau.enabled:
        return plateau_state
    _, new_state = make_plateau(config).update({}, plateau_state,
                                               value=jnp.asarray(validation_loss, jnp.float32))
    return new_state
