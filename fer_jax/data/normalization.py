"""The models' input scale: pixels 0-255 to (pixel / 255 - mean) / std, one formula for the
training stream (TensorFlow tensors), the validation batches and inference (numpy arrays).

No TensorFlow or JAX here: inference imports it without them.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from fer_jax.errors import UserError

# x * float32(1/255) and x / 255 differ by one unit in the last place for some pixels: the
# training stream multiplies, so everything that feeds a trained model multiplies too.
_INVERSE_255 = np.float32(1 / 255)


def check_norm(norm: Mapping[str, float], name: str = "norm") -> tuple[float, float]:
    """NORM's (mean, std) as floats; UserError naming NAME unless both are finite and std > 0."""
    try:
        mean, std = float(norm["mean"]), float(norm["std"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{name} must be a mapping with numbers 'mean' and 'std', got {norm!r}") from None
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise UserError(f"{name} needs a finite mean and a positive std, got {norm!r}")
    return mean, std


def to_unit_scale(pixels):
    """Float32 pixels 0-255 on the 0-1 scale (where augmentation works); any array type."""
    return pixels * _INVERSE_255


def standardize(x, mean: float, std: float):
    """0-1 pixels minus the data set's MEAN over its STD (both on the 0-1 scale); any array type."""
    return (x - np.float32(mean)) / np.float32(std)


def normalize_images(images: np.ndarray, norm: Mapping[str, float]) -> np.ndarray:
    """uint8 (N, H, W) faces as float32 (N, H, W, 1) model inputs, normalized with NORM
    ({"mean", "std"} on the 0-1 scale) exactly as the training pipeline does."""
    x = to_unit_scale(np.asarray(images).astype(np.float32))
    return standardize(x, norm["mean"], norm["std"])[..., None]
