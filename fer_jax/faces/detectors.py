"""The face detectors by name, as `--detector` and `ExpressionPredictor(detector=...)` take them.

- `blazeface`: MediaPipe's BlazeFace on TensorFlow Lite (fer_jax.faces.blazeface), about
  10x faster than MTCNN at 640 x 480 and finding more of the FER faces in the tests;
- `mtcnn`: MTCNN on TensorFlow (fer_jax.faces.detect), slower, steadier on faces in
  profile;
- `auto` (the default): BlazeFace, and MTCNN on the pictures where BlazeFace finds no
  face, so that the fast path serves nearly every frame and MTCNN only the rest.

docs/results/serving.md has the speed and recall of each.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from fer_jax.errors import UserError
from fer_jax.faces.blazeface import BlazeFaceDetector
from fer_jax.faces.detect import DetectedFace, FaceDetector

DETECTORS = ("auto", "blazeface", "mtcnn")
DEFAULT_DETECTOR = "auto"


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...


class FirstFound:
    """The faces of the first detector that finds any, trying them in order."""

    def __init__(self, *detectors: Detector):
        self.detectors = detectors

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        for detector in self.detectors:
            faces = detector.detect(image)
            if faces:
                return faces
        return []


def make_detector(name: str = DEFAULT_DETECTOR, min_confidence: float | None = None) -> Detector:
    """The detector called `name`; min_confidence: None keeps each detector's default."""
    def blazeface():
        return BlazeFaceDetector() if min_confidence is None else BlazeFaceDetector(min_confidence)

    def mtcnn():
        return FaceDetector() if min_confidence is None else FaceDetector(min_confidence)

    if name == "blazeface":
        return blazeface()
    if name == "mtcnn":
        return mtcnn()
    if name == "auto":
        return FirstFound(blazeface(), mtcnn())
    raise UserError(f"unknown face detector {name!r}; expected one of: {', '.join(DETECTORS)}")
