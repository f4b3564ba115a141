"""The train and eval steps: pure functions of (state, batch, rng) for one shard.

Collectives are explicit over parallel.DATA_AXIS: gradients, loss and metrics are
averaged or summed over it, and the models' BatchNorm uses it as axis_name, so a
step over 8 devices computes what one device computes on the same global batch.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from fer_jax.config import EVAL_TTA_MODES, input_size
from fer_jax.data.types import NUM_CLASSES
from fer_jax.errors import UserError
from fer_jax.engine.parallel import DATA_AXIS
from fer_jax.data.tta import tta_views


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    plateau_state: Any
    # The moving average of {"params", "batch_stats"} when ema_decay > 0, else None.
    ema: Any = None

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}

    @property
    def eval_variables(self) -> dict:
        """What validation scores and checkpoints keep as the model: the EMA when on."""
        return self.variables if self.ema is None else self.ema


def init_variables(config, model) -> dict:
    """Fresh params and batch_stats from config.seed, for the config's input size."""
    rng = jax.random.PRNGKey(config.seed)
    init_model = model.clone(bn_axis_name=None)  # init runs outside the named data axis
    size = input_size(config)
    variables = jax.jit(lambda r: init_model.init({"params": r, "dropout": r},
                                                  jnp.zeros((1, size, size, 1), jnp.float32),
                                                  train=False))(rng)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def new_state(variables: dict, tx, plateau, *, ema: bool = False) -> TrainState:
    """Step 0 of a run from VARIABLES, with fresh optimizer and plateau states (and an
    EMA that starts at VARIABLES when EMA is on)."""
    return TrainState(step=jnp.asarray(0, jnp.int32), params=variables["params"],
                      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                      plateau_state=plateau.init(variables["params"]),
                      ema=jax.tree.map(jnp.array, dict(variables)) if ema else None)


def init_state(config, model, tx, plateau) -> TrainState:
    """Fresh variables and optimizer states from config.seed."""
    return new_state(init_variables(config, model), tx, plateau)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy against (optionally smoothed) one-hot targets."""
    return soft_cross_entropy(logits, jax.nn.one_hot(labels, NUM_CLASSES), label_smoothing)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy against (N, classes) target distributions, smoothed."""
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def mix_batch(images: jax.Array, targets: jax.Array, rng: jax.Array, *, mixup_alpha: float,
              cutmix_alpha: float) -> tuple[jax.Array, jax.Array]:
    """(images, targets) of a Mixup or CutMix batch: each row blended with the row of a
    random permutation by a Beta(alpha, alpha) weight (CutMix: a box of that share of the
    area pasted, the weight then the box's exact share), and its (N, K) targets (one-hot
    labels, a teacher's probabilities, or both side by side) by the same weight. Both
    alphas > 0: one of the two per batch, evenly. The permutation is within this shard's
    rows."""
    perm_rng, mixup_rng, cutmix_rng, choice_rng, box_rng = jax.random.split(rng, 5)
    perm = jax.random.permutation(perm_rng, images.shape[0])
    other, other_targets = images[perm], targets[perm]

    def mixup():
        lam = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha)
        return lam * images + (1 - lam) * other, lam

    def cutmix():
        lam = jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha)
        h, w = images.shape[1], images.shape[2]
        cut_h, cut_w = jnp.round(h * jnp.sqrt(1 - lam)), jnp.round(w * jnp.sqrt(1 - lam))
        cy, cx = jax.random.uniform(box_rng, (2,)) * jnp.array([h, w])
        top, bottom = jnp.clip(cy - cut_h / 2, 0, h), jnp.clip(cy + cut_h / 2, 0, h)
        left, right = jnp.clip(cx - cut_w / 2, 0, w), jnp.clip(cx + cut_w / 2, 0, w)
        ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        box = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
        mixed = jnp.where(box[None, :, :, None], other, images)
        return mixed, 1 - jnp.mean(box.astype(jnp.float32))

    if mixup_alpha > 0 and cutmix_alpha > 0:
        mixed, lam = jax.lax.cond(jax.random.bernoulli(choice_rng), mixup, cutmix)
    else:
        mixed, lam = mixup() if mixup_alpha > 0 else cutmix()
    return mixed.astype(images.dtype), lam * targets + (1 - lam) * other_targets


def distillation_loss(logits: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """Per-example temperature^2 * KL(teacher_T || student_T), where X_T is the softmax of
    log X / temperature (Hinton et al.'s scaling keeps the gradient's size independent of
    the temperature). TEACHER: (N, classes) probabilities, already mixed like the images."""
    teacher = teacher.astype(jnp.float32)
    # A class the teachers gave exactly 0 stays 0 after softening; log(0) would be -inf.
    soft_teacher = jax.nn.softmax(jnp.log(jnp.maximum(teacher, 1e-12)) / temperature)
    log_student = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    kl = jnp.sum(soft_teacher * (jnp.log(jnp.maximum(soft_teacher, 1e-30)) - log_student), axis=-1)
    return temperature ** 2 * kl


def ema_update(ema: Any, variables: dict, step: jax.Array, decay: float) -> Any:
    """The moving average after one more step; the decay ramps up as (1 + t) / (10 + t)
    early on, so a short run's average is not dominated by its random initialisation."""
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, v: (rate * e + (1 - rate) * v).astype(e.dtype), ema, variables)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, apply_fn: Callable,
               tx: optax.GradientTransformation, class_weights: jax.Array | None,
               label_smoothing: float, learning_rate_fn: Callable | None = None,
               mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, ema_decay: float = 0.0,
               distill_alpha: float = 0.0, distill_temperature: float = 1.0
               ) -> tuple[TrainState, dict]:
    """One optimizer update on the global batch; this shard holds batch['image'] rows of it.

    learning_rate_fn: the schedule of the update (optim.Optimizer.learning_rate), for the
    `learning_rate` metric: the rate this step used, plateau scale included.
    distill_alpha > 0: batch['teacher'] holds the teachers' (N, classes) probabilities of
    the rows, and the loss blends distillation_loss with the labels' cross-entropy."""
    # Same seed, same run: the dropout key depends only on the step and the shard.
    dropout_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step),
                                     jax.lax.axis_index(DATA_AXIS))
    labels, images = batch["label"], batch["image"]
    targets = jax.nn.one_hot(labels, NUM_CLASSES)
    if distill_alpha > 0:
        # Side by side, so that mixing blends the teachers' rows as it blends the labels.
        targets = jnp.concatenate([targets, batch["teacher"].astype(jnp.float32)], axis=-1)
    if mixup_alpha > 0 or cutmix_alpha > 0:
        # Its own stream, apart from the dropout keys (which then stay as without mixing).
        images, targets = mix_batch(images, targets, jax.random.fold_in(dropout_rng, 1),
                                    mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    targets, teacher = targets[:, :NUM_CLASSES], targets[:, NUM_CLASSES:]
    weights = (jnp.ones(labels.shape, jnp.float32) if class_weights is None
               else class_weights[labels])
    # PyTorch's weighted mean: sum(w * ce) / sum(w), both over the global batch.
    total_weight = jax.lax.psum(jnp.sum(weights), DATA_AXIS)

    def loss_fn(params):
        logits, new_model_state = apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = soft_cross_entropy(logits, targets, label_smoothing)
        if distill_alpha > 0:
            loss = ((1 - distill_alpha) * loss
                    + distill_alpha * distillation_loss(logits, teacher, distill_temperature))
        return jnp.sum(weights * loss) / total_weight, (logits, new_model_state)

    (local_loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = jax.lax.psum(grads, DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    scale = state.plateau_state.scale
    updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)

    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    metrics = {
        "loss": jax.lax.psum(local_loss, DATA_AXIS),
        "accuracy": jax.lax.psum(correct, DATA_AXIS) / jax.lax.psum(labels.shape[0], DATA_AXIS),
        "grad_norm": optax.tree.norm(grads),
        "lr_scale": scale,
        **({} if learning_rate_fn is None else {"learning_rate": learning_rate_fn(state.step) * scale}),
        # A finite loss can still be followed by an update that overflows the weights:
        # checkpoints are only written when both are finite.
        "params_finite": jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])),
    }
    batch_stats = new_model_state.get("batch_stats", {})
    ema = (None if state.ema is None else
           ema_update(state.ema, {"params": params, "batch_stats": batch_stats}, state.step, ema_decay))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema=ema)
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, apply_fn: Callable, tta: str = "none",
              image_size: int = 48) -> dict:
    """Sums over the global batch, counting only rows whose mask is set (padding is not).

    The faces are cut to their centre IMAGE_SIZE window (a model trained on random crops).
    tta="flip" scores each face by the mean of its and its mirror image's class
    probabilities; the loss is then the cross-entropy of that mean. The views are
    fer_jax.data.tta's, made inside the jitted step.
    """
    views = tta_views(batch["image"], tta, crop=image_size)
    logits = [apply_fn(state.eval_variables, view, train=False) for view in views]
    if len(logits) == 1:
        logits = logits[0]
    else:
        # The log of the mean probability, taken in log space so that a probability that
        # underflows in one view cannot make the loss infinite: logits whose softmax is
        # the mean itself.
        log_probabilities = jnp.stack([jax.nn.log_softmax(view) for view in logits])
        logits = jax.nn.logsumexp(log_probabilities, axis=0) - jnp.log(float(len(views)))
    labels = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    ce = cross_entropy(logits, labels, 0.0)
    predictions = jnp.argmax(logits, -1)
    confusion = jnp.einsum("n,ni,nj->ij", mask, jax.nn.one_hot(labels, NUM_CLASSES),
                           jax.nn.one_hot(predictions, NUM_CLASSES))
    sums = {"loss_sum": jnp.sum(mask * ce), "count": jnp.sum(mask), "confusion": confusion}
    return jax.lax.psum(sums, DATA_AXIS)


def check_eval_tta(mode: str) -> None:
    if mode not in EVAL_TTA_MODES:
        raise UserError(f"eval_tta must be one of {', '.join(EVAL_TTA_MODES)}, got {mode!r}")


def make_step_fns(apply_fn: Callable, tx: optax.GradientTransformation,
                  class_weights: jax.Array | None, label_smoothing: float, eval_tta: str = "none",
                  learning_rate_fn: Callable | None = None, *, mixup_alpha: float = 0.0,
                  cutmix_alpha: float = 0.0, ema_decay: float = 0.0, image_size: int = 48,
                  distill_alpha: float = 0.0, distill_temperature: float = 1.0):
    """The per-shard train and eval functions with the run's constants bound."""
    check_eval_tta(eval_tta)
    train = functools.partial(train_step, apply_fn=apply_fn, tx=tx, class_weights=class_weights,
                              label_smoothing=label_smoothing, learning_rate_fn=learning_rate_fn,
                              mixup_alpha=float(mixup_alpha), cutmix_alpha=float(cutmix_alpha),
                              ema_decay=float(ema_decay), distill_alpha=float(distill_alpha),
                              distill_temperature=float(distill_temperature))
    evaluate = functools.partial(eval_step, apply_fn=apply_fn, tta=eval_tta, image_size=image_size)
    return train, evaluate
