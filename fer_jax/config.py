"""Experiment configs: the shared defaults, loading `experiments/NAME.py`, and `--set` overrides.

Configs are data (ml_collections.ConfigDict): an experiment file only changes values,
it never selects a code path that the base config cannot describe.
"""
from __future__ import annotations

import ast
import importlib
import json
import pathlib

import ml_collections

from fer_jax.checkout_packages import mapped_folder
from fer_jax.data.splits import SCHEMES
from fer_jax.data.types import IMAGE_SIZE
from fer_jax.errors import UserError

LR_SCHEDULES = ("constant", "cosine")
# The per-epoch validation's TTA modes (fer_jax.engine.step scores them inside the jitted
# step); an ensemble, scored once, also takes the ten-crop of fer_jax.data.tta.
EVAL_TTA_MODES = ("none", "flip")
ENSEMBLE_TTA_MODES = EVAL_TTA_MODES + ("flip_crops",)
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "sgd", "nesterov")
KERNEL_SETTINGS = ("auto", "onednn", "xla")  # fer_jax.kernels resolves them


def base_config() -> ml_collections.ConfigDict:
    """Every key an experiment may set, with the defaults of a plain run."""
    c = ml_collections.ConfigDict()
    c.experiment = ""
    c.description = ""
    c.model = "simple_cnn_v1"
    # Passed to the model's constructor (e.g. dropout rates, widths).
    c.model_kwargs = ml_collections.ConfigDict()
    c.compute_dtype = "float32"  # or "bfloat16": compute only, params stay float32

    # Which rows train and which validate. The file itself is the --data flag of train and
    # study (else $FER2013_PATH, the TFDS manual folder, else the synthetic faces), and
    # leaving out its unreadable rows the --skip-bad-rows flag: they name this machine's file.
    c.data = ml_collections.ConfigDict()
    c.data.split_scheme = "official"  # "official" (Training / PublicTest) or "stratified" (80/20 of Training)
    c.data.val_fraction = 0.2  # the validation share of the stratified split
    c.data.split_seed = 42  # the stratified split's shuffle, and the synthetic faces' seed
    c.data.synthetic_size = 12000  # faces generated when there is no FER2013

    # Training-time augmentation (fer_jax.data.augment), each 0 = off: rotations up to
    # rotation_deg, mirror images with hflip_prob, shifts up to translate_frac of the side,
    # scaling by a factor in scale_range, shears up to shear_deg, brightness and contrast
    # jitter, random erasing with erasing_prob.
    c.augment = ml_collections.ConfigDict(dict(
        rotation_deg=0.0, hflip_prob=0.0, translate_frac=0.0, scale_range=(1.0, 1.0),
        shear_deg=0.0, brightness=0.0, contrast=0.0, erasing_prob=0.0, random_crop=0))
    # augment.random_crop > 0: training sees random random_crop x random_crop windows of
    # the 48x48 faces and the model is built for that size; validation and `--tta none|flip`
    # take the centre window, `flip_crops` the four corners and the centre with mirrors.
    # Mixup / CutMix in the train step: Beta(alpha, alpha) mixing weights, 0 = off; both
    # on: each batch takes one of the two at random.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.balanced_sampling = False  # batches drawn with every class equally likely
    c.class_weighted_loss = False  # the loss weighted by inverse class frequency
    c.label_smoothing = 0.0
    # Test-time augmentation of the validation: "none", "flip" (each face and its mirror
    # image, class probabilities averaged), or, for an ensemble (scored once, at the end),
    # also "flip_crops" (fer_jax.data.tta's ten-crop). A trained run validates every
    # epoch with it and picks its best checkpoint by it.
    c.eval_tta = "none"

    c.epochs = 30
    c.batch_size = 64  # the global batch, over all devices
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.grad_clip_norm = 0.0  # the gradients' global norm is clipped to this; 0 = no clipping
    # "adamw" (weight_decay decoupled), "sgd" (heavy-ball momentum) or "nesterov" (SGD with
    # Nesterov's momentum); for both SGDs weight_decay adds weight_decay * w to the
    # gradient (PyTorch SGD's L2) and `momentum` is the momentum.
    c.optimizer = "adamw"
    c.momentum = 0.9
    # An exponential moving average of the weights (params and batch_stats), 0 = off: when
    # on it is what validation scores and what checkpoints hold as the model's variables.
    c.ema_decay = 0.0
    c.seed = 0  # initial weights, batch order, augmentation and dropout
    c.max_train_steps = 0  # a cap on the total number of steps (smoke runs); 0 = no cap
    # A cap on the training loop's wall-clock time (steps, compilation, per-epoch validation
    # and checkpoints), summed over resumptions and checked every --log-every steps; the
    # epoch it ends in is validated as a partial epoch. 0 = no cap.
    c.budget_minutes = 0.0
    # The per-step learning rate (engine/optim.py): a linear warm-up from 0 over
    # warmup_epochs, then "constant", or "cosine" (decay to learning_rate *
    # final_lr_fraction at `epochs`). The plateau scale multiplies either, and
    # transfer.backbone_lr_scale the pretrained layers' rate.
    c.lr_schedule = "constant"
    c.warmup_epochs = 0.0
    c.final_lr_fraction = 0.0

    # optax.contrib.reduce_on_plateau on the validation loss, stepped once per epoch: the
    # rate is multiplied by `factor` after `patience` epochs without a lower loss, down to
    # min_scale times its own. factor 1.0: no reduction (the plateau is off).
    c.plateau = ml_collections.ConfigDict(dict(factor=0.5, patience=3, min_scale=1e-3))
    c.early_stopping_patience = 0  # epochs without a better validation accuracy; 0 disables

    # The weights this run starts from; empty: fresh ones. Either a fer_jax run (its
    # workdir or a step folder) of the same network: a second training stage; or ImageNet
    # weights (a torchvision .pth file, or a folder written by `python -m fer_jax.convert`):
    # fine-tuning, under the `transfer` settings.
    c.init_from = ""

    # Fine-tuning from ImageNet weights (fer_jax.transfer), whose torchvision architecture
    # is the model's name. input_size: the side the faces are resized to inside the
    # network; freeze: parts kept as pretrained; backbone_lr_scale: the pretrained
    # layers' share of the learning rate.
    c.transfer = ml_collections.ConfigDict(dict(
        gray_to_rgb="sum", input_size=48, freeze=(), backbone_lr_scale=0.1,
        imagenet_normalization=False))

    # An ensemble experiment names member experiments: each is trained in turn (resuming
    # any already trained) under WORKDIR/members/NAME, then all are evaluated together.
    # weights: one per member (empty: equal); a weight of 0 trains a member that another
    # one starts from without averaging it in. The average is scored with eval_tta.
    c.ensemble = ml_collections.ConfigDict(dict(members=(), weights=()))

    # Knowledge distillation (fer_jax.distillation), alpha 0 = off: the loss is
    # (1 - alpha) * the cross-entropy with the labels + alpha * temperature^2 * the KL
    # divergence from the teachers' probabilities softened by `temperature` to the
    # network's. teachers: run folders, step folders or released models' folders, whose
    # probabilities are averaged, or one ensemble file (`released` for
    # release/ensemble.json), whose members and weights are used.
    c.distill = ml_collections.ConfigDict(dict(teachers=(), alpha=0.0, temperature=4.0))

    # Convolution kernels (fer_jax.kernels): "auto" (oneDNN's on x86-64 Linux CPUs where
    # they build and load, else XLA's), "onednn" (or fail saying why) or "xla"; also the
    # --kernels flag. A run may resume under other kernels.
    c.kernels = "auto"
    # How a run uses this machine (CPU devices, parallel mode, evaluation batch, logging
    # and checkpoint cadence, W&B, the data file) is not part of the experiment: those are
    # flags of the train and study commands (fer_jax.engine.run_options); REMOVED_KEYS
    # says where each former key went.
    return c


# Keys the config no longer has, and where they went: `--set` names the new place, and
# `upgrade` reads configs stored by older runs and releases.
FLAG_KEYS = {  # key: the train/study flag that replaces it ({} takes the --set value)
    "parallel": "--parallel {}",
    "eval_batch_size": "--eval-batch-size {}",
    "log_every_steps": "--log-every {}",
    "data.path": "--data {}",
    "data.skip_bad_rows": "--skip-bad-rows",
}
MERGED_KEYS = {  # key: what says the same thing now
    "plateau.enabled": "plateau.factor=1.0 turns the plateau off",
    "nesterov": "optimizer=nesterov is SGD with Nesterov's momentum",
    "ensemble.tta": "an ensemble is scored with eval_tta (none, flip or flip_crops)",
    "augment.fill_mode": "the augmentation always fills by repeating the edge pixels (nearest)",
}


def upgrade(stored: dict) -> dict:
    """A config stored by an older run or release (a checkpoint's meta["config"]) in
    today's keys: the merged keys' values carried to their new ones, the removed keys
    dropped. Configs are stored whole with every checkpoint, so old runs resume (and
    their cards are written) only through this mapping; keys that were never stored
    simply take their defaults where the config is read."""
    config = json.loads(json.dumps(stored))
    plateau = config.get("plateau") or {}
    if plateau.pop("enabled", True) is False:
        plateau["factor"] = 1.0
    if config.pop("nesterov", False) and config.get("optimizer") == "sgd":
        config["optimizer"] = "nesterov"
    ensemble = config.get("ensemble") or {}
    tta = ensemble.pop("tta", None)
    if tta is not None and ensemble.get("members"):
        config["eval_tta"] = tta
    for key in FLAG_KEYS.keys() | MERGED_KEYS.keys():
        *path, leaf = key.split(".")
        parent = config
        for part in path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(leaf, None)
    return config


def removed_key_message(key: str, text: str) -> str | None:
    """The one line `--set KEY=TEXT` gets for a key the config no longer has, or None."""
    if key in FLAG_KEYS:
        flag = FLAG_KEYS[key].format(text)
        return f"--set {key}={text}: {key} is a flag now: {flag}"
    if key in MERGED_KEYS:
        return f"--set {key}={text}: {key} is no longer a key: {MERGED_KEYS[key]}"
    return None


def _check(ok: bool, key: str, wanted: str, value) -> None:
    if not ok:
        raise UserError(f"{key} must be {wanted}, got {value!r}")


def _whole(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(config, key: str, choices: tuple) -> None:
    value = config[key]
    _check(value in choices, key, f"one of {', '.join(choices)}", value)


def _check_distill(d) -> None:
    _check(_number(d.alpha) and 0 <= d.alpha <= 1, "distill.alpha", "a number in [0, 1] (0: off)",
           d.alpha)
    _check(_number(d.temperature) and d.temperature > 0, "distill.temperature", "a number > 0",
           d.temperature)
    teachers = d.teachers
    _check(isinstance(teachers, (tuple, list)) and all(isinstance(t, str) and t.strip() for t in teachers),
           "distill.teachers", "a list of teacher folders or one ensemble file", teachers)
    if d.alpha > 0 and not teachers:
        raise UserError("distill.alpha > 0 but distill.teachers is empty: name the teacher runs, "
                        "released models or an ensemble file (`released` for release/ensemble.json)")
    if teachers and not d.alpha:
        raise UserError("distill.teachers is set but distill.alpha is 0: the teachers would not "
                        "be used (set distill.alpha in (0, 1])")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CONFIG, or UserError naming the first key whose value cannot work.

    Checked here, before any data or model is loaded: every key but augment.* (checked
    by fer_jax.data.augment.AugmentConfig), the model name and model_kwargs (by the model
    registry) and the fine-tuning choices (fer_jax.transfer.finetune.check_transfer_config);
    the trainer runs all of them before it reads the data."""
    _choice(config, "lr_schedule", LR_SCHEDULES)
    _choice(config, "eval_tta", ENSEMBLE_TTA_MODES)
    if config.eval_tta not in EVAL_TTA_MODES and not config.ensemble.members:
        raise UserError(f"eval_tta={config.eval_tta} is for ensembles: a run validates every epoch "
                        f"with {' or '.join(EVAL_TTA_MODES)}; score its best checkpoint ten-crop with "
                        "python -m fer_jax.evaluate --tta flip_crops")
    _choice(config, "compute_dtype", COMPUTE_DTYPES)
    _choice(config, "data.split_scheme", SCHEMES)
    _check(_number(config.data.val_fraction) and 0 < config.data.val_fraction < 1, "data.val_fraction",
           "a number in (0, 1)", config.data.val_fraction)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "kernels", KERNEL_SETTINGS)
    _check(_number(config.momentum) and 0 <= config.momentum < 1, "momentum", "a number in [0, 1)",
           config.momentum)
    if config.optimizer == "nesterov" and not config.momentum:
        raise UserError("momentum must be > 0 with optimizer=nesterov (Nesterov's rule needs "
                        "momentum; optimizer=sgd with momentum=0 is plain SGD)")
    _check(_number(config.ema_decay) and 0 <= config.ema_decay < 1, "ema_decay", "a number in [0, 1)",
           config.ema_decay)
    for key in ("mixup_alpha", "cutmix_alpha"):
        _check(_number(config[key]) and config[key] >= 0, key, "a number >= 0", config[key])
    if (config.mixup_alpha or config.cutmix_alpha) and config.class_weighted_loss:
        raise UserError("mixup_alpha/cutmix_alpha cannot be combined with class_weighted_loss: a "
                        "mixed image has no single class to weight; use balanced_sampling instead")
    crop = config.augment.random_crop
    _check(_whole(crop, 0) and (crop == 0 or 8 <= crop <= IMAGE_SIZE), "augment.random_crop",
           f"0 (off) or a whole number in [8, {IMAGE_SIZE}]", crop)
    for key, low in (("epochs", 1), ("batch_size", 1), ("max_train_steps", 0),
                     ("early_stopping_patience", 0), ("seed", 0), ("data.split_seed", 0),
                     ("data.synthetic_size", 1)):
        _check(_whole(config[key], low), key, f"a whole number >= {low}", config[key])
    for key in ("learning_rate", "weight_decay", "grad_clip_norm", "budget_minutes", "warmup_epochs"):
        _check(_number(config[key]) and config[key] >= 0, key, "a number >= 0", config[key])
    _check(_number(config.final_lr_fraction) and 0 <= config.final_lr_fraction <= 1,
           "final_lr_fraction", "a number in [0, 1]", config.final_lr_fraction)
    _check(_number(config.label_smoothing) and 0 <= config.label_smoothing < 1,
           "label_smoothing", "a number in [0, 1)", config.label_smoothing)
    p = config.plateau
    _check(_number(p.factor) and 0 < p.factor <= 1, "plateau.factor", "a number in (0, 1] (1: off)",
           p.factor)
    _check(_whole(p.patience, 0), "plateau.patience", "a whole number >= 0", p.patience)
    _check(_number(p.min_scale) and 0 < p.min_scale <= 1, "plateau.min_scale", "a number in (0, 1]",
           p.min_scale)
    _check_distill(config.distill)
    t = config.transfer
    _check(_number(t.backbone_lr_scale) and t.backbone_lr_scale >= 0, "transfer.backbone_lr_scale",
           "a number >= 0", t.backbone_lr_scale)
    _check(_whole(t.input_size, 0), "transfer.input_size", "a whole number >= 0", t.input_size)
    if t.freeze and not config.init_from:
        raise UserError("transfer.freeze is set but init_from is empty: there are no pretrained "
                        "weights to keep frozen")
    return config


def input_size(config) -> int:
    """The side of the images the config's model is built for and fed: the random crop's
    size when the run trains on crops, else the faces' 48."""
    crop = config.get("augment", {}).get("random_crop", 0)
    return int(crop) if crop else IMAGE_SIZE


def default_workdir(experiment: str) -> str:
    """Where `python -m fer_jax.train --experiment=NAME` writes without --workdir."""
    return f"runs/{experiment}"


def experiments_dir() -> pathlib.Path:
    """`experiments/` of the checkout, installed as the package fer_jax.experiments."""
    return mapped_folder("fer_jax.experiments")


def experiment_names() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.py") if not p.stem.startswith("_"))


def load_experiment(name: str) -> ml_collections.ConfigDict:
    names = experiment_names()
    if name not in names:
        raise UserError(f"unknown experiment {name!r}; valid names: {', '.join(names)}")
    config = importlib.import_module(f"fer_jax.experiments.{name}").get_config()
    config.experiment = name
    return config


def _parse_value(key: str, text: str, current):
    """Parses TEXT as the type of the key's current value."""
    kind = type(current)
    try:
        if isinstance(current, bool):
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            return kind(_parse_sequence(text, current))
    except (ValueError, SyntaxError):
        pass
    raise UserError(f"--set {key}={text}: expected a value of type {kind.__name__}")


def _parse_sequence(text: str, current) -> tuple:
    """A tuple from Python syntax or comma-separated items, elements typed like CURRENT's."""
    strings = bool(current) and all(isinstance(v, str) for v in current)
    try:
        value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
    except (ValueError, SyntaxError):
        if not (strings or not current):
            raise
        value = [item.strip() for item in text.split(",") if item.strip()]
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    wanted = (str,) if strings else (int, float) if current else (int, float, str)
    if any(isinstance(v, bool) or not isinstance(v, wanted) for v in value):
        raise ValueError
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies `key=value` strings (dotted keys) to a copy of CONFIG, checking names and types."""
    config = ml_collections.ConfigDict(config.to_dict())
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parent, leaf = config, key
        if "." in key:
            *path, leaf = key.split(".")
            for part in path:
                if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
                    raise UserError(removed_key_message(key, text) or
                                    f"--set {item}: unknown config key {key!r}")
                parent = parent[part]
        if leaf not in parent:
            moved = removed_key_message(key, text)
            if moved:
                raise UserError(moved)
            if parent is not config and key.startswith("model_kwargs."):
                parent[leaf] = _guess_value(text)
                continue
            raise UserError(f"--set {item}: unknown config key {key!r}; known keys: "
                            f"{', '.join(sorted(parent.keys()))}")
        current = parent[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise UserError(f"--set {item}: {key!r} is a group of keys; set one of "
                            f"{', '.join(sorted(current.keys()))}")
        parent[leaf] = _parse_value(key, text, current)
    return config


def _guess_value(text: str):
    """model_kwargs are open-ended: take Python literals, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
