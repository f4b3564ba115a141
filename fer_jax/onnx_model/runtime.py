"""An exported model run by onnxruntime, with the interface of fer_jax.inference.classifier.Classifier."""
from __future__ import annotations

import pathlib

import numpy as np

from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES
from fer_jax.errors import UserError


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


def onnx_classifier(loaded, *, threads: int | None = None) -> OnnxClassifier:
    """The ONNX classifier of a loaded checkpoint: the model.onnx a released model ships
    in its folder, else the model exported now, in memory."""
    from fer_jax.onnx_model.export import ONNX_FILE, export_onnx
    if (loaded.step_dir / ONNX_FILE).is_file():
        return OnnxClassifier(loaded.step_dir / ONNX_FILE, threads=threads)
    return OnnxClassifier(export_onnx(loaded).SerializeToString(), threads=threads)
