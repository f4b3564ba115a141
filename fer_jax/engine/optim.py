"""The optimizer of every run: one learning-rate schedule, AdamW or SGD per parameter group, a plateau factor.

`optimizer`: "adamw" (decoupled weight_decay), or "sgd" / "nesterov" with `momentum`
(heavy-ball or Nesterov's) and weight_decay as an L2 term added to the gradient (PyTorch's SGD).

The learning rate of a step is

    schedule(step) * group_scale * plateau_scale

- schedule: `lr_schedule` over the run's `epochs` with a linear warm-up over
  `warmup_epochs` (optax schedules count optimizer updates, which is the train step);
- group_scale: 1 for a trained-from-scratch run and for the new head of a fine-tuned one,
  `transfer.backbone_lr_scale` for pretrained layers, 0 for `transfer.freeze` (one
  optax.multi_transform over those labels);
- plateau_scale: optax.contrib.reduce_on_plateau on the validation loss, once per epoch
  (plateau.factor 1: never stepped, the scale stays 1).

The plateau is kept out of the per-step chain: Flax-style `apply_gradients` cannot pass
the `value` it needs, and inside the chain its patience would count updates, not epochs.
Its state lives in the TrainState; the step multiplies the update by its scale and
`Optimizer.plateau_step` advances it at the end of an epoch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from optax import contrib

# Parameter groups: the labels of optax.multi_transform.
HEAD, BACKBONE, FROZEN = "head", "backbone", "frozen"
# reduce_on_plateau's settings that no experiment changes.
_PLATEAU_RTOL, _PLATEAU_ATOL, _PLATEAU_COOLDOWN = 1e-4, 0.0, 0


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """config.lr_schedule over `epochs * steps_per_epoch` steps, warmed up from 0 over
    `warmup_epochs` (the choices are checked by config.validate)."""
    total = max(int(config.epochs * steps_per_epoch), 1)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    peak = float(config.learning_rate)
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
            decay_steps=total, end_value=peak * config.final_lr_fraction)
    if not warmup:
        return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])


def uniform_labels(params: Any) -> Any:
    """Every parameter in the HEAD group: a run trained from scratch."""
    return jax.tree.map(lambda _: HEAD, params)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """What the train step and the loop need of the optimizer, built once per run."""
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    learning_rate: optax.Schedule  # the HEAD group's rate per step, before the plateau scale
    plateau_enabled: bool
    _plateau_update: Callable = dataclasses.field(repr=False, default=None)

    def init(self, params) -> tuple[Any, Any]:
        """(opt_state, plateau_state) for fresh PARAMS."""
        return self.tx.init(params), self.plateau.init(params)

    def plateau_step(self, plateau_state, validation_loss: float):
        """The plateau state after one epoch that ended with VALIDATION_LOSS."""
        if not self.plateau_enabled:
            return plateau_state
        return self._plateau_update(plateau_state, jnp.asarray(validation_loss, jnp.float32))


def plateau_enabled(config) -> bool:
    """plateau.factor 1.0 means no reduction: the plateau is off."""
    return config.plateau.factor < 1.0


def make_plateau(config) -> optax.GradientTransformationExtraArgs:
    p = config.plateau
    # With the plateau off the transform is never stepped, but its state (scale 1) is
    # still every run's; optax refuses factor 1, so any valid factor builds it.
    factor = p.factor if plateau_enabled(config) else 0.5
    return contrib.reduce_on_plateau(factor=factor, patience=p.patience, rtol=_PLATEAU_RTOL,
                                     atol=_PLATEAU_ATOL, cooldown=_PLATEAU_COOLDOWN,
                                     min_scale=p.min_scale)


def build_optimizer(config, steps_per_epoch: int = 1, labels: Any = None) -> Optimizer:
    """The run's optimizer. LABELS: a tree like the params of HEAD / BACKBONE / FROZEN
    (finetune.param_labels), or None for one group (uniform_labels)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    label_tree = labels if labels is not None else uniform_labels
    backbone_scale = float(config.transfer.backbone_lr_scale)
    optimizer = config.get("optimizer", "adamw")

    def per_group(scale: float) -> optax.GradientTransformation:
        rate = lambda count: schedule(count) * scale  # noqa: E731
        if optimizer in ("sgd", "nesterov"):
            return optax.chain(optax.add_decayed_weights(config.weight_decay),
                               optax.sgd(rate, momentum=config.momentum or None,
                                         nesterov=optimizer == "nesterov"))
        return optax.adamw(rate, weight_decay=config.weight_decay)

    parts = []
    if config.grad_clip_norm > 0:
        if labels is not None and FROZEN in jax.tree.leaves(labels):
            # Frozen gradients are left out of the global norm that clipping uses.
            parts.append(optax.multi_transform(
                {HEAD: optax.identity(), BACKBONE: optax.identity(), FROZEN: optax.set_to_zero()},
                label_tree))
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.multi_transform(
        {HEAD: per_group(1.0), BACKBONE: per_group(backbone_scale), FROZEN: optax.set_to_zero()}, label_tree))
    plateau = make_plateau(config)
    update = jax.jit(lambda state, value: plateau.update(updates={}, state=state, value=value)[1])
    return Optimizer(tx=optax.chain(*parts), plateau=plateau, learning_rate=schedule,
                     plateau_enabled=plateau_enabled(config), _plateau_update=update)


def make_optimizer(config, steps_per_epoch: int = 1, labels: Any = None) -> optax.GradientTransformation:
    """build_optimizer's per-step transform alone (benchmarks and tests of the step)."""
    return build_optimizer(config, steps_per_epoch, labels).tx
