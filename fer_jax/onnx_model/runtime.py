"""An exported model run by onnxruntime, with the interface of fer_jax.models.classifier.Classifier.

A released model's folder ships its `model.onnx`: `shipped_onnx` finds it and the model's
metadata (plain JSON) without importing JAX or Orbax, which is most of the start-up time
of a command that classifies a few faces.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib

import numpy as np

from fer_jax.checkout_packages import installed_release, released_checkpoint
from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES
from fer_jax.errors import UserError

ONNX_FILE = "model.onnx"
# Orbax's JSON checkpoint of a release's metadata (config, normalization, ...).
META_FILE = pathlib.Path("meta") / "metadata"


@dataclasses.dataclass(frozen=True)
class ShippedOnnx:
    """A released model's ONNX file, its folder and its metadata."""

    path: pathlib.Path
    folder: pathlib.Path
    meta: dict


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def shipped_onnx(checkpoint: str | pathlib.Path | None) -> ShippedOnnx | None:
    """The ONNX file shipped in a released model's folder (None: the default release),
    or None when the folder ships none (a training run's checkpoints never do)."""
    if checkpoint is None:
        folder = released_checkpoint()
    else:
        given = pathlib.Path(checkpoint)
        folder = given if given.exists() else installed_release(given)
    if folder is None or not (folder / ONNX_FILE).is_file() or not (folder / META_FILE).is_file():
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None  # left to the full checkpoint loader, which names the problem
    if "normalization" not in meta or "model" not in meta.get("config", {}):
        return None
    return ShippedOnnx(folder / ONNX_FILE, folder.absolute(), meta)


class OnnxClassifier:
    """Probabilities of uint8 (N, 48, 48) faces from an ONNX model (a file or its bytes).

    Unlike the JAX classifier nothing is padded: the ONNX graph takes any batch size.
    """

    def __init__(self, model: str | pathlib.Path | bytes, *, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise UserError("--backend onnx needs onnxruntime: pip install 'fer_jax[onnx]'") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self._session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 7) for uint8 (N, 48, 48) faces."""
        images = np.ascontiguousarray(images, np.uint8)
        if len(images) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected (N, {IMAGE_SIZE}, {IMAGE_SIZE}) faces, got {images.shape}")
        return self._session.run(None, {self._input: images})[0]
