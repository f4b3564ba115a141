"""Faces and their eyes in RGB images, found by MTCNN (the `mtcnn` package).

MTCNN runs on TensorFlow. TensorFlow is kept off the accelerators (their memory is
JAX's) and quiet; its weights ship inside the `mtcnn` wheel, so nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from fer_jax.errors import UserError
from fer_jax.runtime import quiet_tensorflow
from fer_jax.faces.sampling import apply, sample_square, square_to_image

# Large photos are searched at most this many pixels on their long side: MTCNN's image
# pyramid starts at 12/20 of the input size, so a 12-megapixel photo would take seconds,
# and a face that small after the downscale (under 20 px) is too small to read anyway.
MAX_DETECTION_SIDE = 1280
# MTCNN's last stage keeps candidates from 0.8; between 0.8 and 0.95 we saw collars and
# compression blocks (a spacesuit's neck ring at 0.91), while frontal and profile faces
# in the test photos score above 0.99.
MIN_CONFIDENCE = 0.95
# Heads tilted more than this (eye line, radians) are measured again once levelled; below
# it the box hardly grows, and a second search would only add the detector's jitter.
REMEASURE_TILT = math.radians(15)
# MTCNN's numpy output, one row per face: image index, box (x, y, w, h), confidence,
# then the x of its five landmarks and then their y, in the order
# left eye, right eye, nose, left mouth corner, right mouth corner.
_BOX = slice(1, 5)
_CONFIDENCE = 5
_LEFT_EYE = (6, 11)
_RIGHT_EYE = (7, 12)


@dataclasses.dataclass(frozen=True)
class DetectedFace:
    """A face in image pixel coordinates (pixel j's centre at x = j).

    box: (x, y, width, height) as MTCNN found it in the image, not clipped to it;
    left_eye / right_eye: (x, y) of the eye on the image's left / right;
    upright_box: (centre x, centre y, width, height) of the box MTCNN finds once the
    face is levelled, measured for tilted heads only (None otherwise).
    """

    box: tuple[float, float, float, float]
    confidence: float
    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    upright_box: tuple[float, float, float, float] | None = None

    def centre_box(self) -> tuple[float, float, float, float]:
        """The box as (centre x, centre y, width, height)."""
        x, y, w, h = self.box
        return x + w / 2, y + h / 2, w, h

    def eye_angle(self) -> float:
        """Radians from the image's x axis to the line from the left to the right eye."""
        (lx, ly), (rx, ry) = self.left_eye, self.right_eye
        return math.atan2(ry - ly, rx - lx) if (rx, ry) != (lx, ly) else 0.0

    def clipped_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in whole pixels, inside a width x height image."""
        x, y, w, h = self.box
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def _load_mtcnn():
    """MTCNN with TensorFlow hidden from the GPUs and its logging reduced to errors."""
    quiet_tensorflow()
    try:
        import tensorflow as tf
    except ImportError as err:
        raise UserError(f"face detection needs TensorFlow ({err}); or pass --no-detect "
                        "with images that are already face crops") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass  # TensorFlow is already initialized by someone else; nothing to undo
    tf.get_logger().setLevel("ERROR")  # tf.function retracing warnings for new image sizes
    try:
        from mtcnn import MTCNN
    except ImportError:
        raise UserError("face detection needs the mtcnn package (pip install mtcnn); or pass "
                        "--no-detect with images that are already face crops") from None
    return MTCNN(device="CPU:0")


class FaceDetector:
    """Finds faces with MTCNN; the network is built on first use.

    min_confidence: detections MTCNN is less sure of are dropped; max_side: photos are
    searched at most this large. The smallest face found is MTCNN's default, 20 searched
    pixels: mtcnn 1.0 sizes its image pyramid as if it were 12, so a larger minimum makes
    its last level too small for its first network, which then fails (downscale instead).
    """

    def __init__(self, min_confidence: float = MIN_CONFIDENCE, *, max_side: int = MAX_DETECTION_SIDE):
        self.min_confidence = min_confidence
        self.max_side = max_side
        self._mtcnn = None

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in one uint8 (H, W, 3) RGB image, left to right."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        faces = self._search(image)
        return [self._measure_upright(image, face) if abs(face.eye_angle()) > REMEASURE_TILT else face
                for face in faces]

    def _search(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        if min(height, width) < 12:  # smaller than MTCNN's first network's window
            return []
        if self._mtcnn is None:
            self._mtcnn = _load_mtcnn()
        scale = min(1.0, self.max_side / max(height, width))
        searched = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            searched = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        rows = self._mtcnn.detect_faces(searched, fit_to_image=False, output_type="numpy")
        faces = [_face_from_row(np.asarray(row, np.float64) / _unscale(scale)) for row in rows]
        kept = [face for face in faces if face.confidence >= self.min_confidence]
        return sorted(kept, key=lambda face: (face.box[0], face.box[1]))

    def _measure_upright(self, image: np.ndarray, face: DetectedFace) -> DetectedFace:
        return measure_upright(self._search, image, face, self.max_side)


def measure_upright(search, image: np.ndarray, face: DetectedFace,
                    max_side: int = MAX_DETECTION_SIDE) -> DetectedFace:
    """The face with the box and eyes `search` finds on a levelled patch around it.

    search: a detector's single pass, RGB image to faces. Detectors' boxes are upright
    in the image, so a tilted head gets a box too large for its face (by about 9% at
    25 degrees, with MTCNN). Searching a patch turned by the eyes' angle gives the box
    of the levelled face, as on the (mostly upright) FER2013 faces.
    """
    cx, cy, w, h = face.centre_box()
    side = 2.25 * math.sqrt(max(w, 1.0) * max(h, 1.0))  # the FER frame and as much around it
    size = int(min(max(round(side), 24), max_side))
    matrix = square_to_image(cx, cy, side, face.eye_angle(), size)
    patch = sample_square(image, matrix, size, gray=False)
    found = search(patch)
    if not found:
        return face  # too tilted or too small to find again: keep the first measurement
    middle = (size - 1) / 2
    again = min(found, key=lambda f: math.dist(f.centre_box()[:2], (middle, middle)))
    pcx, pcy, pw, ph = again.centre_box()
    per_pixel = side / size
    return dataclasses.replace(
        face, left_eye=apply(matrix, *again.left_eye), right_eye=apply(matrix, *again.right_eye),
        upright_box=(*apply(matrix, pcx, pcy), pw * per_pixel, ph * per_pixel))


def _unscale(scale: float) -> np.ndarray:
    """Divisor that maps one output row from the searched image back to the original."""
    divisor = np.full(16, scale)
    divisor[0] = divisor[_CONFIDENCE] = 1.0
    return divisor


def _face_from_row(row: np.ndarray) -> DetectedFace:
    x, y, w, h = (float(v) for v in row[_BOX])
    return DetectedFace(box=(x, y, w, h), confidence=float(row[_CONFIDENCE]),
                        left_eye=(float(row[_LEFT_EYE[0]]), float(row[_LEFT_EYE[1]])),
                        right_eye=(float(row[_RIGHT_EYE[0]]), float(row[_RIGHT_EYE[1]])))
