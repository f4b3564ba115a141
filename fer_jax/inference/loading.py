"""A config's network, and a model restored from a checkpoint with what it needs to run."""
from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import ml_collections

from fer_jax.checkout_packages import released_checkpoint
from fer_jax.config import base_config, input_size
from fer_jax.engine.checkpoint import read_meta, resolve_checkpoint, restore_variables
from fer_jax.engine.restore_checks import check_meta, check_readable, check_variables
from fer_jax.errors import UserError
from fer_jax.models.classifier import Classifier
from fer_jax.models.from_config import build_model


class LoadedModel(NamedTuple):
    """A restored checkpoint: unpacks as (config, model, variables, normalization, step_dir, meta)."""

    config: ml_collections.ConfigDict
    model: Any
    variables: Any
    normalization: dict
    step_dir: pathlib.Path
    meta: dict

    def classifier(self, batch_size: int = 256) -> Classifier:
        crop = self.config.augment.random_crop
        return Classifier(self.model, self.variables, self.normalization, batch_size=batch_size,
                          crop=crop)


def in_float32(loaded: LoadedModel) -> LoadedModel:
    """LOADED computing in float32: the same float32 weights, only the arithmetic changes
    (a model trained with compute_dtype=bfloat16 is otherwise scored in bfloat16)."""
    if loaded.config.compute_dtype == "float32":
        return loaded
    config = loaded.config.copy_and_resolve_references()
    config.compute_dtype = "float32"
    return loaded._replace(config=config, model=build_model(config))


def load_model(checkpoint: str | pathlib.Path | None) -> LoadedModel:
    """The model of a checkpoint alone: a run's workdir (its best checkpoint), a step
    folder, a released model's folder, or None for the default released model."""
    step_dir = resolve_checkpoint(checkpoint or released_checkpoint())
    meta = read_meta(step_dir)
    if "config" not in meta or "normalization" not in meta:
        raise UserError(f"{step_dir}: the checkpoint's metadata lacks its config or normalization")
    check_meta(meta, step_dir)
    config = base_config()
    saved = ml_collections.ConfigDict(meta["config"])
    config.model = saved.model
    config.compute_dtype = saved.get("compute_dtype", "float32")
    config.model_kwargs = ml_collections.ConfigDict(dict(saved.get("model_kwargs", {})))
    config.augment.random_crop = int(saved.get("augment", {}).get("random_crop", 0))
    model = build_model(config)
    check_readable(step_dir)
    variables = restore_variables(step_dir)
    check_variables(model, variables, step_dir, config.model, image_size=input_size(config))
    return LoadedModel(config, model, variables, meta["normalization"], step_dir, meta)
