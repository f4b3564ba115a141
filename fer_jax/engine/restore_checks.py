"""Checks on a checkpoint loaded for inference: its files, its metadata, its variables.

A checkpoint folder is input like any other: it may be truncated, edited, or hold
another model's weights. Each check refuses with one UserError line saying what is
wrong, instead of a Flax scope error deep in the model or, worse, running with a
normalization std of 0 (every face then gets the same class):
- check_readable: every stored value of an OCDBT checkpoint can be read. The read
  is synchronous, so a truncated file is refused before Orbax's asynchronous restore
  fails halfway and leaves reads finishing on a closed event loop.
- check_meta: the config names a known model, a compute dtype and model attributes,
  the normalization is a finite mean in [0, 1] and a finite std in (0, 1], and class
  names and image size, where recorded, are this project's.
- check_variables: the restored tree has exactly the model's variables and shapes,
  with finite values; the refusal names what is missing, unexpected or differently shaped.
"""
from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from flax import traverse_util

from fer_jax.data.types import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_jax.errors import UserError
from fer_jax.models import MODEL_NAMES

_COMPUTE_DTYPES = ("float32", "bfloat16")
_LISTED = 4  # names shown per kind of difference


def check_readable(step_dir: str | pathlib.Path) -> None:
    """Reads every value of the step's variables (when stored as OCDBT); damage raises UserError."""
    folder = pathlib.Path(step_dir).absolute() / "variables"
    if not (folder / "manifest.ocdbt").is_file():
        return
    try:
        store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{folder}/"}).result()
        for key in store.list().result():
            store.read(key).result()
    except ValueError as err:
        raise UserError(f"{step_dir}: the checkpoint's variables are damaged or incomplete "
                        f"({_one_line(err)}); use another checkpoint or train again") from None


def check_meta(meta: Mapping[str, Any], step_dir: str | pathlib.Path) -> None:
    """The metadata inference relies on, checked; a bad field raises UserError naming it."""
    where = f"{step_dir}: the checkpoint's metadata"
    config = meta.get("config")
    if not isinstance(config, Mapping):
        raise UserError(f"{where} lacks its config")
    model = config.get("model")
    if model not in MODEL_NAMES:
        raise UserError(f"{where} names model {_short(model)}, which this version does not know "
                        f"(known: {', '.join(MODEL_NAMES)})")
    if "model" in meta and meta["model"] != model:
        raise UserError(f"{where} names two models: {_short(meta['model'])} and, in its config, {model}")
    if config.get("compute_dtype", "float32") not in _COMPUTE_DTYPES:
        raise UserError(f"{where} has compute_dtype {_short(config.get('compute_dtype'))}, "
                        f"not one of {', '.join(_COMPUTE_DTYPES)}")
    kwargs = config.get("model_kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise UserError(f"{where} has model_kwargs {_short(kwargs)}, not a mapping")
    if kwargs.get("num_classes", NUM_CLASSES) != NUM_CLASSES:
        raise UserError(f"{where} has {_short(kwargs['num_classes'])} classes; FER2013 has {NUM_CLASSES}")
    _check_normalization(meta.get("normalization"), where)
    names = meta.get("class_names", CLASS_NAMES)
    if not isinstance(names, (list, tuple)) or list(names) != list(CLASS_NAMES):
        raise UserError(f"{where} has class names {_short(names)}, not {', '.join(CLASS_NAMES)}")
    size = meta.get("image_size", IMAGE_SIZE)
    if size != IMAGE_SIZE:
        raise UserError(f"{where} has image size {_short(size)}; the faces are {IMAGE_SIZE}x{IMAGE_SIZE}")


def _check_normalization(norm: Any, where: str) -> None:
    if not isinstance(norm, Mapping) or "mean" not in norm or "std" not in norm:
        raise UserError(f"{where} lacks its normalization (mean and std)")
    mean, std = norm["mean"], norm["std"]
    if not (_is_number(mean) and 0.0 <= mean <= 1.0):
        raise UserError(f"{where} has normalization mean {_short(mean)}: not a number in [0, 1] "
                        "(pixels are scaled to [0, 1])")
    if not (_is_number(std) and 0.0 < std <= 1.0):
        raise UserError(f"{where} has normalization std {_short(std)}: not a number in (0, 1] "
                        "(0 would make every input the same)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def expected_shapes(model, image_size: int = IMAGE_SIZE) -> dict[str, tuple]:
    """'params/.../kernel' -> shape of every variable MODEL has, without computing any."""
    def init():
        rng = jax.random.PRNGKey(0)
        return model.init({"params": rng, "dropout": rng},
                          jnp.zeros((1, image_size, image_size, 1), jnp.float32), train=False)

    return {path: tuple(leaf.shape) for path, leaf in _flat(jax.eval_shape(init)).items()}


def check_variables(model, variables: Mapping[str, Any], step_dir: str | pathlib.Path,
                    model_name: str, image_size: int = IMAGE_SIZE) -> None:
    """VARIABLES must be exactly MODEL's (names and shapes, built for IMAGE_SIZE inputs) and
    finite, else UserError saying how not."""
    expected = expected_shapes(model, image_size)
    found = {path: tuple(np.shape(leaf)) for path, leaf in _flat(variables).items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = [f"{path} is {found[path]}, the model has {expected[path]}"
                for path in sorted(set(expected) & set(found)) if found[path] != expected[path]]
    if missing or unexpected or reshaped:
        parts = [f"{kind}: {_listing(items)}" for kind, items in
                 (("missing", missing), ("unexpected", unexpected), ("different shapes", reshaped)) if items]
        raise UserError(f"{step_dir}: the checkpoint's variables are not those of model {model_name} "
                        f"that its metadata names ({'; '.join(parts)}); the metadata was edited or "
                        "belongs to another checkpoint")
    bad = [path for path, leaf in _flat(variables).items()
           if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()]
    if bad:
        raise UserError(f"{step_dir}: the checkpoint holds values that are not finite in "
                        f"{_listing(sorted(bad))}; use an earlier checkpoint")


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {"/".join(map(str, path)): leaf for path, leaf in traverse_util.flatten_dict(dict(tree)).items()}


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."
