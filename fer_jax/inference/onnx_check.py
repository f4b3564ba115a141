"""An ONNX export checked against the Flax model it came from, on the same faces with
onnxruntime: the largest difference of a probability and how many argmaxes agree.
`python -m fer_jax.export` and `python -m fer_jax.release` write a file only when it passes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fer_jax.inference.loading import LoadedModel, in_float32
from fer_jax.onnx_model.runtime import OnnxClassifier

TOLERANCE = 1e-4
CHECKED_FACES = 512


@dataclasses.dataclass(frozen=True)
class OnnxCheck:
    faces: int
    difference: float  # the largest absolute difference of a probability
    same_argmax: int
    # The file computes in float32 (onnxruntime's CPU convolutions take no bfloat16), so a
    # model that computes in bfloat16 is checked against its own weights in float32.
    from_bfloat16: bool = False

    @property
    def passed(self) -> bool:
        return self.difference <= TOLERANCE and self.same_argmax == self.faces

    def summary(self) -> str:
        against = (" (against the same weights computed in float32: the model itself computes in "
                   "bfloat16, and the file in float32)" if self.from_bfloat16 else "")
        return (f"checked on {self.faces} faces{against}: largest probability difference "
                f"{self.difference:.2e}, argmax the same on {self.same_argmax} of {self.faces}")


def check_onnx(loaded: LoadedModel, model: bytes, faces: np.ndarray) -> OnnxCheck:
    """The serialized ONNX MODEL of LOADED against LOADED itself on uint8 (N, 48, 48) FACES."""
    expected = in_float32(loaded).classifier(256).probabilities(faces)
    got = OnnxClassifier(model).probabilities(faces)
    return OnnxCheck(faces=len(faces), difference=float(np.abs(got - expected).max()),
                     same_argmax=int((got.argmax(1) == expected.argmax(1)).sum()),
                     from_bfloat16=loaded.config.compute_dtype == "bfloat16")
