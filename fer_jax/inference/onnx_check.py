"""An ONNX export checked against the Flax model it came from, on the same faces with
onnxruntime: the largest difference of a probability and how many argmaxes agree.
`python -m fer_jax.export` and `python -m fer_jax.release` write a file only when it passes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fer_jax.inference.loading import LoadedModel
from fer_jax.onnx_model.runtime import OnnxClassifier

TOLERANCE = 1e-4
CHECKED_FACES = 512


@dataclasses.dataclass(frozen=True)
class OnnxCheck:
    faces: int
    difference: float  # the largest absolute difference of a probability
    same_argmax: int

    @property
    def passed(self) -> bool:
        return self.difference <= TOLERANCE and self.same_argmax == self.faces

    def summary(self) -> str:
        return (f"checked on {self.faces} faces: largest probability difference {self.difference:.2e}, "
                f"argmax the same on {self.same_argmax} of {self.faces}")


def check_onnx(loaded: LoadedModel, model: bytes, faces: np.ndarray) -> OnnxCheck:
    """The serialized ONNX MODEL of LOADED against LOADED itself on uint8 (N, 48, 48) FACES."""
    expected = loaded.classifier(256).probabilities(faces)
    got = OnnxClassifier(model).probabilities(faces)
    return OnnxCheck(faces=len(faces), difference=float(np.abs(got - expected).max()),
                     same_argmax=int((got.argmax(1) == expected.argmax(1)).sum()))
