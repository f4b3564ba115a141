"""Experiment configs: the shared defaults, loading `experiments/NAME.py`, and `--set` overrides.

Configs are data (ml_collections.ConfigDict): an experiment file only changes values,
it never selects a code path that the base config cannot describe.
"""
from __future__ import annotations

import ast
import importlib
import pathlib

import ml_collections

from fer_jax.data.types import IMAGE_SIZE
from fer_jax.errors import UserError

LR_SCHEDULES = ("constant", "cosine")
EVAL_TTA_MODES = ("none", "flip")
PARALLEL_MODES = ("jit", "pmap")
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "sgd")
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

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # empty: --data, $FER2013_PATH, the TFDS manual folder, else synthetic
    c.data.split_scheme = "official"  # "official" (Training / PublicTest) or "stratified" (80/20 of Training)
    c.data.val_fraction = 0.2
    c.data.split_seed = 42
    c.data.synthetic_size = 12000
    c.data.skip_bad_rows = False

    c.augment = ml_collections.ConfigDict(dict(
        rotation_deg=0.0, hflip_prob=0.0, translate_frac=0.0, scale_range=(1.0, 1.0),
        shear_deg=0.0, brightness=0.0, contrast=0.0, erasing_prob=0.0, fill_mode="nearest",
        random_crop=0))
    # augment.random_crop > 0: training sees random random_crop x random_crop windows of
    # the 48x48 faces and the model is built for that size; validation and `--tta none|flip`
    # take the centre window, `flip_crops` the four corners and the centre with mirrors.
    # Mixup / CutMix in the train step: Beta(alpha, alpha) mixing weights, 0 = off; both
    # on: each batch takes one of the two at random.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.balanced_sampling = False
    c.class_weighted_loss = False
    c.label_smoothing = 0.0
    # The validation after each epoch (which also picks the best checkpoint): "none", or
    # "flip" (each face and its mirror image, class probabilities averaged).
    c.eval_tta = "none"

    c.epochs = 30
    c.batch_size = 64
    c.eval_batch_size = 256
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.grad_clip_norm = 0.0  # 0 disables clipping
    # "adamw" (weight_decay decoupled) or "sgd" (momentum, optionally Nesterov's;
    # weight_decay then adds weight_decay * w to the gradient, PyTorch SGD's L2).
    c.optimizer = "adamw"
    c.momentum = 0.9
    c.nesterov = False
    # An exponential moving average of the weights (params and batch_stats), 0 = off: when
    # on it is what validation scores and what checkpoints hold as the model's variables.
    c.ema_decay = 0.0
    c.seed = 0
    c.max_train_steps = 0  # a cap on the total number of steps (smoke runs); 0 = no cap
    # A cap on the training loop's wall-clock time (steps, compilation, per-epoch validation
    # and checkpoints), summed over resumptions and checked every log_every_steps steps;
    # the epoch it ends in is validated as a partial epoch. 0 = no cap.
    c.budget_minutes = 0.0
    # The per-step learning rate (engine/optim.py): a linear warm-up from 0 over
    # warmup_epochs, then "constant", or "cosine" (decay to learning_rate *
    # final_lr_fraction at `epochs`). The plateau factor multiplies either, and
    # transfer.backbone_lr_scale the pretrained layers' rate.
    c.lr_schedule = "constant"
    c.warmup_epochs = 0.0
    c.final_lr_fraction = 0.0

    # optax.contrib.reduce_on_plateau on the validation loss, stepped once per epoch.
    c.plateau = ml_collections.ConfigDict(dict(enabled=True, factor=0.5, patience=3, min_scale=1e-3))
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
    # one starts from without averaging it in.
    c.ensemble = ml_collections.ConfigDict(dict(members=(), tta="flip", weights=()))

    # The training loss is logged, checked to be finite, and the budget checked, every
    # this many steps.
    c.log_every_steps = 20
    c.parallel = "jit"  # "jit" (jit + shard_map over a mesh) or "pmap"
    # Convolution kernels (fer_jax.kernels): "auto" (oneDNN's on x86-64 Linux CPUs where
    # they build and load, else XLA's), "onednn" (or fail saying why) or "xla".
    c.kernels = "auto"
    # How a run uses this machine (CPU devices, checkpoint cadence, W&B) is not part of
    # the experiment: those are flags of the train and study commands.
    return c


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


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CONFIG, or UserError naming the first key whose value cannot work.

    The training keys are checked here, before any data or model is loaded; the data
    keys by the data source, the model name and model_kwargs by the model registry, and
    the fine-tuning choices by fer_jax.transfer.finetune.check_transfer_config."""
    _choice(config, "lr_schedule", LR_SCHEDULES)
    _choice(config, "eval_tta", EVAL_TTA_MODES)
    _choice(config, "parallel", PARALLEL_MODES)
    _choice(config, "compute_dtype", COMPUTE_DTYPES)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "kernels", KERNEL_SETTINGS)
    _check(isinstance(config.nesterov, bool), "nesterov", "true or false", config.nesterov)
    _check(_number(config.momentum) and 0 <= config.momentum < 1, "momentum", "a number in [0, 1)",
           config.momentum)
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
    for key, low in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("max_train_steps", 0),
                     ("log_every_steps", 1), ("early_stopping_patience", 0), ("seed", 0)):
        _check(_whole(config[key], low), key, f"a whole number >= {low}", config[key])
    for key in ("learning_rate", "weight_decay", "grad_clip_norm", "budget_minutes", "warmup_epochs"):
        _check(_number(config[key]) and config[key] >= 0, key, "a number >= 0", config[key])
    _check(_number(config.final_lr_fraction) and 0 <= config.final_lr_fraction <= 1,
           "final_lr_fraction", "a number in [0, 1]", config.final_lr_fraction)
    _check(_number(config.label_smoothing) and 0 <= config.label_smoothing < 1,
           "label_smoothing", "a number in [0, 1)", config.label_smoothing)
    p = config.plateau
    _check(_number(p.factor) and 0 < p.factor < 1, "plateau.factor", "a number in (0, 1)", p.factor)
    _check(_whole(p.patience, 0), "plateau.patience", "a whole number >= 0", p.patience)
    _check(_number(p.min_scale) and 0 < p.min_scale <= 1, "plateau.min_scale", "a number in (0, 1]",
           p.min_scale)
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
    from fer_jax.checkout_packages import mapped_folder
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
                    raise UserError(f"--set {item}: unknown config key {key!r}")
                parent = parent[part]
        if leaf not in parent:
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
