"""Experiment configs: the shared defaults, loading `experiments/NAME.py`, and `--set` overrides.

Configs are data (ml_collections.ConfigDict): an experiment file only changes values,
it never selects a code path that the base config cannot describe.
"""
from __future__ import annotations

import ast
import importlib
import pathlib

import ml_collections

from fer_jax.errors import UserError


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
    # The synthetic set is for trying the system: a run on it is kept short.
    c.data.synthetic_epochs = 3
    c.data.skip_bad_rows = False

    c.augment = ml_collections.ConfigDict(dict(
        rotation_deg=0.0, hflip_prob=0.0, translate_frac=0.0, scale_range=(1.0, 1.0),
        shear_deg=0.0, brightness=0.0, contrast=0.0, erasing_prob=0.0, fill_mode="nearest"))
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
    c.seed = 0
    c.max_train_steps = 0  # a cap on the total number of steps (smoke runs); 0 = no cap
    # A cap on the training loop's wall-clock time (steps, compilation, per-epoch validation
    # and checkpoints), summed over resumptions and checked every log_every_steps steps;
    # the epoch it ends in is validated as a partial epoch. 0 = no cap.
    c.budget_minutes = 0.0
    # The per-step learning rate: "constant", or "cosine" (linear warm-up over
    # warmup_epochs, then cosine decay to learning_rate * final_lr_fraction at `epochs`).
    # The plateau factor multiplies either.
    c.lr_schedule = "constant"
    c.warmup_epochs = 0.0
    c.final_lr_fraction = 0.0

    # optax.contrib.reduce_on_plateau on the validation loss, stepped once per epoch.
    c.plateau = ml_collections.ConfigDict(dict(
        enabled=True, factor=0.5, patience=3, cooldown=0, min_scale=1e-3, rtol=1e-4, atol=0.0))
    c.early_stopping_patience = 0  # epochs without a better validation accuracy; 0 disables

    # A fer_jax checkpoint (a run's workdir or a step folder) of the same model whose params
    # and batch_stats start this run (a second training stage); empty: fresh weights.
    c.init_from = ""

    # Fine-tuning from converted ImageNet weights (fer_jax.transfer); empty init_from: none.
    c.transfer = ml_collections.ConfigDict(dict(
        init_from="", arch="", gray_to_rgb="sum", input_size=48, freeze=(), backbone_lr_scale=0.1,
        warmup_steps=0, imagenet_normalization=False))

    # An ensemble experiment names member experiments: each is trained in turn (resuming
    # any already trained) under WORKDIR/members/NAME, then all are evaluated together.
    # weights: one per member (empty: equal); a weight of 0 trains a member that another
    # one starts from without averaging it in.
    c.ensemble = ml_collections.ConfigDict(dict(members=(), tta="flip", weights=()))

    c.checkpoint = ml_collections.ConfigDict(dict(keep_latest=2, every_steps=500))
    c.log_every_steps = 20
    c.parallel = "jit"  # "jit" (jit + shard_map over a mesh) or "pmap"
    # On a CPU, the cores are exposed as this many devices for data parallelism within
    # the process (0: the largest power of two up to the cores, at most 8; 1: one device
    # on all cores). Set by the commands before jax starts; ignored if XLA_FLAGS sets it.
    c.cpu_devices = 0

    c.wandb = ml_collections.ConfigDict(dict(
        mode="offline", project="facial-expression-recognition", experiment_type="baseline",
        num_sample_predictions=32))
    return c


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
