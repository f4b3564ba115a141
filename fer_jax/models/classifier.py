"""Class probabilities of a model for uint8 faces, normalized as in training."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data.normalization import normalize_images
from fer_jax.data.types import NUM_CLASSES
from fer_jax.data.tta import center_window


class Classifier:
    """A model's class probabilities for uint8 faces, in fixed-size batches (one compilation).

    `probabilities_fn(variables, x)` is the jitted softmax of the model on one normalized batch.
    crop > 0: the model was trained on crops of that size; faces larger than it are cut
    to their centre window (fer_jax.data.tta makes the other views).
    """

    def __init__(self, model, variables, norm: dict, batch_size: int = 256, crop: int = 0):
        self.norm = norm
        self.crop = int(crop)
        self.batch_size = batch_size
        self.variables = jax.device_put(variables)
        self.probabilities_fn = jax.jit(
            lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype(jnp.float32)))

    def probabilities_of_normalized(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, 7) for float32 (N, 48, 48, 1) faces already normalized."""
        n = len(x)
        out = np.zeros((n, NUM_CLASSES), np.float32)
        for start in range(0, n, self.batch_size):
            chunk = x[start:start + self.batch_size]
            padded = np.zeros((self.batch_size,) + x.shape[1:], np.float32)
            padded[:len(chunk)] = chunk
            out[start:start + len(chunk)] = np.asarray(self.probabilities_fn(self.variables, padded))[:len(chunk)]
        return out

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 7) for uint8 (N, 48, 48) faces (or faces of the crop size)."""
        if self.crop:
            images = center_window(images, self.crop)
        return self.probabilities_of_normalized(normalize_images(images, self.norm))
