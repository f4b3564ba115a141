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

from fer_jax.errors import UserError

LR_SCHEDULES = ("constant", "cosine")


def check_lr_schedule(name: str) -> str:
    if name not in LR_SCHEDULES:
        raise UserError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {name!r}")
    return name


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule | float:
    """config.lr_schedule over the run's `epochs` (schedules count optimizer steps)."""
    name = check_lr_schedule(config.get("lr_schedule", "constant"))
    if name == "constant":
        return config.learning_rate
    total = max(int(config.epochs * steps_per_epoch), 1)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    if not 0 <= config.final_lr_fraction <= 1:
        raise UserError(f"final_lr_fraction must lie in [0, 1], got {config.final_lr_fraction!r}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.learning_rate, peak_value=config.learning_rate,
        warmup_steps=warmup, decay_steps=total,
        end_value=config.learning_rate * config.final_lr_fraction)


def make_optimizer(config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(learning_rate=learning_rate_schedule(config, steps_per_epoch),
                             weight_decay=config.weight_decay))
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
