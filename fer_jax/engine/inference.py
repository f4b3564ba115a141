"""Forward passes for evaluation and prediction from restored host variables."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.models import get_model


def build_model(config, *, bn_axis_name: str | None = None):
    """The config's model; the compute dtype and widths come from the config."""
    from fer_jax.transfer.finetune import transfer_model_kwargs
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    kwargs = {**transfer_model_kwargs(config), **dict(config.model_kwargs)}
    return get_model(config.model, dtype=dtype, bn_axis_name=bn_axis_name, **kwargs)


def normalize_images(images: np.ndarray, norm: dict) -> np.ndarray:
    """uint8 (N,48,48) to float32 (N,48,48,1), exactly as the training pipeline does."""
    x = images.astype(np.float32) / 255.0
    return ((x - norm["mean"]) / norm["std"])[..., None].astype(np.float32)


class Predictor:
    """Class probabilities for uint8 faces, in fixed-size batches (one compilation)."""

    def __init__(self, model, variables, norm: dict, batch_size: int = 256):
        self.norm = norm
        self.batch_size = batch_size
        self.variables = jax.device_put(variables)
        self._forward = jax.jit(
            lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype(jnp.float32)))

    def logits_fn(self, x):
        return self._forward(self.variables, x)

    def predict_normalized(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        out = np.zeros((n, 7), np.float32)
        for start in range(0, n, self.batch_size):
            chunk = x[start:start + self.batch_size]
            padded = np.zeros((self.batch_size,) + x.shape[1:], np.float32)
            padded[:len(chunk)] = chunk
            out[start:start + len(chunk)] = np.asarray(self._forward(self.variables, padded))[:len(chunk)]
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_normalized(normalize_images(images, self.norm))
