"""A checkpoint as one ONNX model: uint8 (N, 48, 48) faces in, float32 (N, 7) probabilities out.

The training normalization, the model in inference mode (BatchNorm's running statistics,
no dropout) and the softmax are all inside, so a user of the file needs nothing else.
A model trained on random crops (augment.random_crop=C) is built for C x C input; its
graph still takes 48x48 faces and cuts their centre C x C window first, as
fer_jax.models.classifier does, so every exported file has the same interface and
the runtimes (predict, serve) need not know the crop.
The network is rebuilt with XLA's own convolutions (not the oneDNN custom calls, which
have no ONNX form); both compute the same convolution. The graph computes in float32,
also for a model trained with bfloat16 compute.
"""
from __future__ import annotations

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import onnx

from fer_jax.config import input_size
from fer_jax.data.types import CLASS_NAMES, IMAGE_SIZE
from fer_jax.inference.loading import LoadedModel
from fer_jax.models.from_config import build_model
from fer_jax.onnx_model.convert import to_onnx
from fer_jax.onnx_model.runtime import ONNX_FILE, OnnxClassifier

INPUT_NAME = "faces"
OUTPUT_NAME = "probabilities"


def probabilities_fn(loaded: LoadedModel):
    """uint8 (N, 48, 48) -> float32 (N, 7), cut to the model's input size and normalized
    exactly as fer_jax.models.classifier."""
    config = loaded.config.copy_and_resolve_references()
    size = input_size(config)
    top = (IMAGE_SIZE - size) // 2
    config.kernels = "xla"
    # onnxruntime's CPU convolutions take no bfloat16: a model trained with bfloat16 compute
    # is written in float32, from the same float32 weights.
    config.compute_dtype = "float32"
    model = build_model(config)
    variables = jax.tree_util.tree_map(np.asarray, loaded.variables)
    mean = np.float32(loaded.normalization["mean"])
    std = np.float32(loaded.normalization["std"])

    def probabilities(faces):
        if size != IMAGE_SIZE:
            faces = jax.lax.slice_in_dim(jax.lax.slice_in_dim(faces, top, top + size, axis=1),
                                         top, top + size, axis=2)
        x = faces.astype(jnp.float32) / jnp.float32(255.0)
        x = ((x - mean) / std)[..., None]
        return jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32))

    return probabilities


def export_onnx(loaded: LoadedModel) -> onnx.ModelProto:
    """The loaded model as an ONNX model (input "faces", output "probabilities")."""
    size = input_size(loaded.config)
    window = f" (the model reads their centre {size}x{size} window)" if size != IMAGE_SIZE else ""
    doc = (f"fer_jax {loaded.config.model} from {loaded.step_dir.name}: uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}) "
           f"grayscale faces framed as FER2013{window} -> float32 (N, 7) probabilities of {', '.join(CLASS_NAMES)}")
    model = to_onnx(probabilities_fn(loaded), jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE), jnp.uint8),
                    input_name=INPUT_NAME, output_name=OUTPUT_NAME, doc=doc)
    model.metadata_props.add(key="class_names", value=",".join(CLASS_NAMES))
    return model


def write_onnx(model: onnx.ModelProto, path: str | pathlib.Path) -> str:
    """Writes the model; returns the file's sha256."""
    data = model.SerializeToString()
    pathlib.Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def onnx_classifier(loaded: LoadedModel, *, threads: int | None = None) -> OnnxClassifier:
    """The ONNX classifier of a loaded checkpoint: the model.onnx a released model ships
    in its folder, else the model exported now, in memory."""
    if (loaded.step_dir / ONNX_FILE).is_file():
        return OnnxClassifier(loaded.step_dir / ONNX_FILE, threads=threads)
    return OnnxClassifier(export_onnx(loaded).SerializeToString(), threads=threads)
