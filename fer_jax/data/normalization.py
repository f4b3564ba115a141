"""The models' input scale: pixels 0-255 to (pixel / 255 - mean) / std, one formula for the
training stream (TensorFlow tensors), the validation batches and inference (numpy arrays).

No TensorFlow or JAX here: inference imports it without them.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

# x * float32(1/255) and x / 255 differ by one unit in the last place for some pixels: the
# training stream multiplies, so everything that feeds a trained model multiplies too.
_INVERSE_255 = np.float32(1 / 255)


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
