"""Faces and their eyes found by MediaPipe's BlazeFace, run on TensorFlow Lite.

BlazeFace is a single-shot detector for one 128 x 128 (short range) or 192 x 192 (full
range) picture: about 1 ms and 3 ms a picture on one CPU core, against MTCNN's image
pyramid. Its weights ship in `fer_jax/faces/weights` (see the README there). The
interpreter is LiteRT's (`ai-edge-litert`, imported in 0.1 s) when installed, else
TensorFlow's own `tf.lite` (imported with all of TensorFlow, 3 s).

Boxes come back as MTCNN would draw them (BlazeFace's own box is tighter: it stops at
the brows), so that `align` frames the faces of both detectors the same way.
"""
from __future__ import annotations

import dataclasses
import pathlib
import threading
import warnings

import numpy as np
from PIL import Image

from fer_jax.errors import UserError
from fer_jax.faces.detect import REMEASURE_TILT, DetectedFace, measure_upright

WEIGHTS = pathlib.Path(__file__).resolve().parent / "weights"


@dataclasses.dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace network: its file, input side and SSD anchor layout.

    strides: one per anchor layer (MediaPipe's `ssd_anchors_calculator` options);
    anchors_per_cell: anchors per grid cell for each distinct stride.
    """

    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]


SHORT_RANGE = BlazeFaceModel("blazeface_short_range.tflite", 128, (8, 16), (2, 6))
FULL_RANGE = BlazeFaceModel("blazeface_full_range_sparse.tflite", 192, (4,), (1,))

# MediaPipe keeps detections from 0.5; here the cat of scikit-image's `chelsea`, saved as
# a JPEG, scores 0.50. Frontal faces in photos score above 0.75, FER faces filling their
# frame 0.5-0.85 (most of those under 0.55 are found by the search inside a border).
# 0.55 for both searches found 98 of 100 LFW and of 100 FER faces filling the frame,
# 0.6 95 and 93.
MIN_CONFIDENCE = 0.55
# A picture that is one face filling the frame gives BlazeFace too little context: when
# nothing is found, the picture is searched once more inside a border of repeated edge
# pixels (this fraction of its long side on each side). Only a face that fills the
# frame is taken from that second search (its box side at least FILL_SIDE of the
# picture's short side: the border lifted a star field to 0.79 with a small box).
FILL_BORDER = 0.25
FILL_SIDE = 0.3
FILL_MIN_CONFIDENCE = 0.55
# Overlapping detections (IoU above this) are merged, weighted by score, as MediaPipe does.
MERGE_IOU = 0.3
# BlazeFace's square box to MTCNN's (medians over the 24 of FER faces 400-429, set 4x
# into a photo as tests/test_faces.py does, that both found): MTCNN's box is this much
# narrower and taller, and its centre this many BlazeFace box heights higher.
BOX_SCALE = (0.92, 1.21)
BOX_SHIFT_UP = 0.07
# Keypoints of the model's output, after the box: the eye on the image's left in an
# upright face, then the other eye (then nose, mouth, two ear points, unused here).
_LEFT_EYE, _RIGHT_EYE = 0, 1


def ssd_anchors(model: BlazeFaceModel) -> np.ndarray:
    """(A, 2) anchor centres in [0, 1] image units, in the order of the model's outputs."""
    centres = []
    for stride, count in zip(model.strides, model.anchors_per_cell):
        cells = model.size // stride
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        centres.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), count, axis=0))
    return np.concatenate(centres)


def _interpreter(path: pathlib.Path, threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            import tensorflow as tf
        except ImportError as err:
            raise UserError(f"BlazeFace needs ai-edge-litert or TensorFlow ({err})") from None
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite's notice that LiteRT replaces it
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


class BlazeFaceNetwork:
    """One loaded BlazeFace model: raw detections of one square picture. Not thread-safe."""

    def __init__(self, model: BlazeFaceModel, threads: int | None = 1):
        self.model = model
        self._interpreter = _interpreter(WEIGHTS / model.file, threads)
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: d["shape"][-1])
        self._scores, self._regressors = outputs[0]["index"], outputs[1]["index"]
        self.anchors = ssd_anchors(model)

    def __call__(self, square: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """(scores (K,), points (K, 8, 2)) for uint8 (size, size, 3) RGB, in [0, 1] units.

        points[:, 0] is the box centre, points[:, 1] its width and height, then the six
        keypoints; K counts the detections scoring at least min_score, before merging.
        """
        x = square.astype(np.float32) * (2.0 / 255.0) - 1.0
        self._interpreter.set_tensor(self._input, x[None])
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._regressors)[0]
        logits = np.clip(self._interpreter.get_tensor(self._scores)[0, :, 0], -80, 80)
        scores = 1.0 / (1.0 + np.exp(-logits))
        keep = scores >= min_score
        points = raw[keep].reshape(-1, 8, 2) / self.model.size
        anchors = self.anchors[keep][:, None, :]
        points[:, [0, 2, 3, 4, 5, 6, 7]] += anchors
        return scores[keep], points


def merge_overlapping(scores: np.ndarray, points: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """MediaPipe's weighted non-maximum suppression: each cluster's score-weighted mean."""
    order = np.argsort(-scores)
    scores, points = scores[order], points[order]
    corners = np.concatenate([points[:, 0] - points[:, 1] / 2, points[:, 0] + points[:, 1] / 2], axis=1)
    remaining = np.arange(len(scores))
    merged = []
    while len(remaining):
        best = corners[remaining[0]]
        others = corners[remaining]
        low, high = np.maximum(best[:2], others[:, :2]), np.minimum(best[2:], others[:, 2:])
        inter = np.prod(np.clip(high - low, 0, None), axis=1)
        areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
        iou = inter / np.maximum(areas[0] + areas - inter, 1e-12)
        cluster = remaining[iou > MERGE_IOU]
        cluster = cluster if len(cluster) else remaining[:1]
        weights = scores[cluster]
        mean = (points[cluster] * weights[:, None, None]).sum(0) / weights.sum()
        merged.append((float(scores[remaining[0]]), mean))
        remaining = remaining[iou <= MERGE_IOU] if len(cluster) else remaining[1:]
    return merged


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """(square uint8 (size, size, 3), scale, x offset, y offset): the image shrunk to fit,
    centred on black; image point p lands at p * scale + offset."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR,
                                                        reducing_gap=3.0 if scale < 0.5 else None))
    square = np.zeros((size, size, 3), np.uint8)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    square[y0:y0 + new_h, x0:x0 + new_w] = resized
    return square, new_w / width, float(x0), float(y0)


def _to_face(score: float, points: np.ndarray, size: int, scale: float, dx: float, dy: float) -> DetectedFace:
    pixels = points * size
    image_point = lambda p: ((p[0] - dx) / scale, (p[1] - dy) / scale)  # noqa: E731
    cx, cy = image_point(pixels[0])
    w, h = pixels[1] / scale
    w, h = w * BOX_SCALE[0], h * BOX_SCALE[1]
    cy -= BOX_SHIFT_UP * pixels[1][1] / scale
    (lx, ly), (rx, ry) = image_point(pixels[2 + _LEFT_EYE]), image_point(pixels[2 + _RIGHT_EYE])
    return DetectedFace(box=(float(cx - w / 2), float(cy - h / 2), float(w), float(h)), confidence=float(score),
                        left_eye=(float(lx), float(ly)), right_eye=(float(rx), float(ry)))


class BlazeFaceDetector:
    """Finds faces with BlazeFace: the short-range network, then the full-range one when
    the first finds nothing (small faces in a wide picture). Thread-safe (one lock).

    min_confidence: detections scored lower are dropped; threads: LiteRT's CPU threads.
    """

    def __init__(self, min_confidence: float = MIN_CONFIDENCE, *, threads: int | None = 1,
                 models: tuple[BlazeFaceModel, ...] = (SHORT_RANGE, FULL_RANGE)):
        self.min_confidence = min_confidence
        self._threads = threads
        self._models = models
        self._networks: list[BlazeFaceNetwork] | None = None
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in one uint8 (H, W, 3) RGB image, left to right."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        with self._lock:
            faces = self._search(image) or self._search_filled(image)
            return [measure_upright(self._search, image, face) if abs(face.eye_angle()) > REMEASURE_TILT
                    else face for face in faces]

    def _search_filled(self, image: np.ndarray) -> list[DetectedFace]:
        """The face filling the picture, found inside a border of its edge pixels."""
        border = int(round(FILL_BORDER * max(image.shape[:2])))
        framed = np.pad(image, ((border, border), (border, border), (0, 0)), mode="edge")
        short = min(image.shape[:2])
        found = [dataclasses.replace(face, box=(face.box[0] - border, face.box[1] - border, *face.box[2:]),
                                     left_eye=(face.left_eye[0] - border, face.left_eye[1] - border),
                                     right_eye=(face.right_eye[0] - border, face.right_eye[1] - border))
                 for face in self._search(framed)
                 if face.confidence >= max(FILL_MIN_CONFIDENCE, self.min_confidence)
                 and np.sqrt(face.box[2] * face.box[3]) >= FILL_SIDE * short]
        return found[:1]

    def _search(self, image: np.ndarray) -> list[DetectedFace]:
        if min(image.shape[:2]) < 8:
            return []
        if self._networks is None:
            self._networks = [BlazeFaceNetwork(model, self._threads) for model in self._models]
        for network in self._networks:
            square, scale, dx, dy = letterbox(image, network.model.size)
            scores, points = network(square, self.min_confidence)
            faces = [_to_face(score, mean, network.model.size, scale, dx, dy)
                     for score, mean in merge_overlapping(scores, points) if score >= self.min_confidence]
            if faces:
                return sorted(faces, key=lambda face: (face.box[0], face.box[1]))
        return []
