"""Faces and their eyes in RGB images, found by MTCNN (the `mtcnn` package).

MTCNN runs on TensorFlow. TensorFlow is kept off the accelerators (their memory is
JAX's) and quiet; its weights ship inside the `mtcnn` wheel, so nothing is downloaded.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from fer_jax.errors import UserError

# Large photos are searched at most this many pixels on their long side: MTCNN's image
# pyramid starts at 12/20 of the input size, so a 12-megapixel photo would take seconds,
# and a face that small after the downscale (under 20 px) is too small to read anyway.
MAX_DETECTION_SIDE = 1280
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

    box: (x, y, width, height) as MTCNN gives it, not clipped to the image;
    left_eye / right_eye: (x, y) of the eye on the image's left / right.
    """

    box: tuple[float, float, float, float]
    confidence: float
    left_eye: tuple[float, float]
    right_eye: tuple[float, float]

    def clipped_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in whole pixels, inside a width x height image."""
        x, y, w, h = self.box
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def _load_mtcnn():
    """MTCNN with TensorFlow hidden from the GPUs and its logging reduced to errors."""
    from fer_jax.cli_common import quiet_tensorflow
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
    """Finds faces with MTCNN; the network is built on first use."""

    def __init__(self, max_side: int = MAX_DETECTION_SIDE, min_face_size: int = 20):
        self.max_side = max_side
        self.min_face_size = min_face_size
        self._mtcnn = None

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in one uint8 (H, W, 3) RGB image, left to right."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
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
        rows = self._mtcnn.detect_faces(searched, fit_to_image=False, output_type="numpy",
                                        min_face_size=self.min_face_size)
        faces = [_face_from_row(np.asarray(row, np.float64) / _unscale(scale)) for row in rows]
        return sorted(faces, key=lambda face: (face.box[0], face.box[1]))


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
