"""One set of test-time views: the jitted validation step (fer_jax.engine.step) and inference
(fer_jax.data.tta, the Classifier) mirror and crop faces alike."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.data.normalization import normalize_images
from fer_jax.data.types import NUM_CLASSES
from fer_jax.engine.parallel import DATA_AXIS
from fer_jax.engine.step import eval_step
from fer_jax.models.classifier import Classifier
from fer_jax.data.tta import probabilities_with_tta, tta_views

NORM = {"mean": 0.5, "std": 0.25}


class Linear:
    """A stand-in model: logits linear in the pixels, so that a face and its mirror image
    (or another window) score differently."""

    def __init__(self, size: int):
        self.weights = jax.random.normal(jax.random.key(0), (size * size, NUM_CLASSES)) * 0.1

    def apply(self, variables, x, train=False):
        return x.reshape(x.shape[0], -1) @ variables["w"]


class State:
    def __init__(self, variables):
        self.eval_variables = variables


def faces(n: int = 16, size: int = 48) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.mark.parametrize("tta, crop", [("none", 0), ("flip", 0), ("none", 40), ("flip", 40)])
def test_validation_scores_the_views_inference_averages(tta, crop):
    """The engine's validation loss and predictions with eval_tta=TTA are those of the
    inference library's TTA probabilities on the same faces (a model trained on CROP)."""
    images = faces()
    labels = np.random.default_rng(2).integers(0, NUM_CLASSES, len(images)).astype(np.int32)
    size = crop or 48
    model = Linear(size)
    variables = {"w": model.weights}
    probabilities = probabilities_with_tta(Classifier(model, variables, NORM, batch_size=8, crop=crop),
                                           images, tta)

    batch = {"image": normalize_images(images, NORM), "label": labels,
             "mask": np.ones(len(images), bool)}
    step = jax.vmap(lambda b: eval_step(State(variables), b, apply_fn=model.apply, tta=tta,
                                        image_size=size), axis_name=DATA_AXIS)
    sums = jax.tree.map(lambda x: np.asarray(x[0]), step(jax.tree.map(lambda x: x[None], batch)))

    expected_loss = -np.log(probabilities[np.arange(len(images)), labels]).sum()
    np.testing.assert_allclose(sums["loss_sum"], expected_loss, rtol=1e-5)
    expected_confusion = np.zeros((NUM_CLASSES, NUM_CLASSES))
    np.add.at(expected_confusion, (labels, probabilities.argmax(1)), 1)
    np.testing.assert_array_equal(sums["confusion"], expected_confusion)


def test_the_views_are_the_same_for_numpy_and_jax_arrays():
    images = faces(4).astype(np.float32)[..., None]
    for tta, crop in [("none", 0), ("flip", 0), ("flip", 40)]:
        on_numpy = tta_views(images, tta, crop)
        in_jit = jax.jit(lambda x: tta_views(x, tta, crop))(jnp.asarray(images))
        assert len(on_numpy) == len(in_jit) == (2 if tta == "flip" else 1)
        for a, b in zip(on_numpy, in_jit):
            np.testing.assert_array_equal(a, np.asarray(b))
    # The mirror is left to right, on (N, H, W) and (N, H, W, C) faces alike.
    np.testing.assert_array_equal(tta_views(images, "flip")[1][:, :, 0], images[:, :, -1])
    np.testing.assert_array_equal(tta_views(images[..., 0], "flip")[1][:, :, 0], images[:, :, -1, 0])
