"""Expressions on numpy images from a checkpoint: load the model once, then predict.

    from fer_jax.predictor import ExpressionPredictor              # the documented import
    predictor = ExpressionPredictor("runs/simple_cnn_v1")        # a run's workdir, or None: release/final
    faces = predictor.predict_image(rgb)                         # detect, level, crop, classify
    per_image = predictor.predict_images([rgb1, rgb2])           # all faces in one batched pass
    crops = predictor.predict_faces([face1, face2])              # images that already are faces
    probs = predictor.classify(uint8_48x48_stack)                # (N, 7), columns in CLASS_NAMES order
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np

from fer_jax.data.types import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_jax.errors import UserError
from fer_jax.faces.align import align_face, whole_image_face
from fer_jax.faces.detect import DetectedFace, FaceDetector
from fer_jax.faces.detectors import DEFAULT_DETECTOR, Detector, make_detector
from fer_jax.data.tta import check_tta, probabilities_with_tta
from fer_jax.onnx_model.runtime import OnnxClassifier, onnxruntime_installed, shipped_onnx

BACKENDS = ("auto", "jax", "onnx")


@dataclasses.dataclass(frozen=True, eq=False)
class FacePrediction:
    """One face and its expression.

    box: (x, y, width, height) in the image's pixels, inside the image (the whole image
    when it was given as a face); probabilities: every class name to its probability;
    detection_confidence: the detector's, None for a given face; face: the uint8 48 x 48 crop
    the model saw.
    """

    box: tuple[int, int, int, int]
    label: str
    probabilities: dict[str, float]
    detection_confidence: float | None
    face: np.ndarray

    @property
    def score(self) -> float:
        """The probability of the predicted label."""
        return self.probabilities[self.label]

    def to_json(self) -> dict:
        return {"box": list(self.box), "label": self.label,
                "probabilities": {name: round(p, 6) for name, p in self.probabilities.items()},
                "detection_confidence": (None if self.detection_confidence is None
                                         else round(self.detection_confidence, 6))}


class ExpressionPredictor:
    """A restored model, its training normalization and a face detector, kept together.

    checkpoint: a run's workdir (its best checkpoint), a step folder, or None for the
    released model. tta: a mode of fer_jax.data.tta ("none", "flip", "flip_crops"),
    or True for "flip" (each face averaged with its mirror image) and False for "none".
    batch_size: faces per jitted forward pass (fixed, so the model compiles once).
    detector: "auto" (default), "blazeface" or "mtcnn" (fer_jax.faces.detectors), or a
    detector object. backend: "jax"; "onnx" (onnxruntime: a release's model.onnx, or the
    model exported in memory); or "auto" (default): ONNX when the checkpoint is a release
    that ships model.onnx and onnxruntime is installed, else JAX.
    """

    def __init__(self, checkpoint: str | pathlib.Path | None = None, *, batch_size: int = 64,
                 tta: bool | str = False, detector: Detector | str | None = None, backend: str = "auto"):
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
        self.tta = tta
        self.tta_mode = ("flip" if tta else "none") if isinstance(tta, bool) else check_tta(tta)
        # A name (fer_jax.faces.detectors.DETECTORS) or any object with detect(rgb) -> faces.
        self.detector = (make_detector(detector or DEFAULT_DETECTOR)
                         if detector is None or isinstance(detector, str) else detector)
        shipped = shipped_onnx(checkpoint) if backend != "jax" and onnxruntime_installed() else None
        if shipped is not None:
            # A release's ONNX file: neither JAX nor the checkpoint's arrays are loaded.
            self.checkpoint: pathlib.Path = shipped.folder
            self.model_name: str = shipped.meta["config"]["model"]
            self.normalization: dict = shipped.meta["normalization"]
            self.meta: dict = shipped.meta
            self.backend = "onnx"
            self._classifier = OnnxClassifier(shipped.path)
            return
        # JAX, Flax and Orbax take seconds to import: only a predictor that needs them does.
        from fer_jax.inference.loading import load_model
        loaded = load_model(checkpoint)
        self.checkpoint = loaded.step_dir
        self.model_name = loaded.config.model
        self.normalization = loaded.normalization
        self.meta = loaded.meta
        self.backend = "onnx" if backend == "onnx" else "jax"
        if self.backend == "onnx":
            from fer_jax.onnx_model.export import onnx_classifier
            self._classifier = onnx_classifier(loaded)
        else:
            self._classifier = loaded.classifier(batch_size)

    def classify(self, faces: np.ndarray) -> np.ndarray:
        """float32 (N, 7) probabilities for uint8 (N, 48, 48) FER-framed grayscale faces."""
        faces = np.asarray(faces)
        if faces.ndim != 3 or faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or faces.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}) faces, got {faces.dtype} {faces.shape}")
        if len(faces) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        # Mirrored faces are as likely in FER2013 as the originals (training flips them too).
        return probabilities_with_tta(self._classifier, faces, self.tta_mode)

    def predict_faces(self, faces: Sequence[np.ndarray]) -> list[FacePrediction]:
        """Images that already are face crops (a list, or an array whose first axis runs
        over faces), of any size, grayscale, RGB or RGBA uint8; one prediction each."""
        crops = [whole_image_face(np.asarray(face)) for face in faces]
        boxes = [(0, 0, np.shape(face)[1], np.shape(face)[0]) for face in faces]
        return self._predictions(crops, boxes, [None] * len(crops))

    def predict_image(self, image: np.ndarray) -> list[FacePrediction]:
        """The faces MTCNN finds in one uint8 image (RGB, RGBA or grayscale), left to right."""
        return self.predict_images([image])[0]

    def predict_images(self, images: Sequence[np.ndarray]) -> list[list[FacePrediction]]:
        """The faces of each image; the faces of all images are classified together."""
        crops, boxes, confidences, owners = [], [], [], []
        for owner, image in enumerate(images):
            rgb = as_rgb(np.asarray(image))
            height, width = rgb.shape[:2]
            for face in self.detector.detect(rgb):
                crops.append(align_face(rgb, face))
                boxes.append(face.clipped_box(width, height))
                confidences.append(face.confidence)
                owners.append(owner)
        flat = self._predictions(crops, boxes, confidences)
        grouped: list[list[FacePrediction]] = [[] for _ in images]
        for owner, prediction in zip(owners, flat):
            grouped[owner].append(prediction)
        return grouped

    def _predictions(self, crops: list[np.ndarray], boxes: list, confidences: list) -> list[FacePrediction]:
        stacked = np.stack(crops) if crops else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        probabilities = self.classify(stacked)
        return [FacePrediction(box=tuple(int(v) for v in box), label=CLASS_NAMES[int(np.argmax(p))],
                               probabilities={name: float(v) for name, v in zip(CLASS_NAMES, p)},
                               detection_confidence=confidence, face=crop)
                for crop, box, confidence, p in zip(crops, boxes, confidences, probabilities)]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB from a uint8 grayscale (H, W) / (H, W, 1), RGB or RGBA image."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")


__all__ = ["DetectedFace", "ExpressionPredictor", "FacePrediction", "FaceDetector", "as_rgb"]
