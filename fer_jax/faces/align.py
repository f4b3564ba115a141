"""A detected face to the 48 x 48 grayscale crop the models were trained on.

How FER2013 frames a face, measured with this package's own detector: MTCNN run
(`fit_to_image=False`) on 400 faces of the shared FER2013 sample, upscaled 4x, found
336; its box covers on median 37.5 x 49.5 of the 48 x 48 frame (the frame cuts through
the box at the forehead and chin), centred at (23.5, 24.5), with the eyes 17.4 px apart
at y = 18.75. So the FER frame is a square whose side is 1.12 times the geometric mean
of the box's sides (48 / sqrt(37.5 * 49.5)), centred on the box's centre (the half-pixel
offset is below the detector's jitter). The geometric mean keeps the scale steady for
faces in profile, whose eye distance collapses; the eyes only give the rotation. For a
tilted head MTCNN's upright box grows with the tilt, so the detector measures the box
again on the levelled face (see detect.py).

Round trip: FER faces enlarged 4x inside a larger picture, detected and aligned again,
match their originals best (median pixel correlation about 0.65) at 1.06 to 1.25 times
the box, depending on what surrounds them; 0.85 or 1.5 do clearly worse
(tests/test_faces.py checks this on the shared sample).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from fer_jax.data.types import IMAGE_SIZE
from fer_jax.faces.detect import DetectedFace
from fer_jax.faces.sampling import sample_square, square_to_image

FRAME_PER_BOX = 1.12


def face_square(face: DetectedFace) -> tuple[float, float, float, float]:
    """(centre x, centre y, side, angle in radians) of the FER-like frame around a face.

    The angle is that of the line from the left to the right eye (image y points down),
    so turning the frame by it levels the eyes. The box is the one MTCNN found on the
    levelled face when the detector measured it (tilted heads), else its first box.
    """
    cx, cy, w, h = face.upright_box if face.upright_box is not None else face.centre_box()
    side = FRAME_PER_BOX * math.sqrt(max(w, 1.0) * max(h, 1.0))
    return cx, cy, side, face.eye_angle()


def crop_to_image(face: DetectedFace, size: int = IMAGE_SIZE) -> np.ndarray:
    """2 x 3 affine matrix taking crop pixel coordinates (u, v, 1) to image coordinates."""
    return square_to_image(*face_square(face), size)


def align_face(image: np.ndarray, face: DetectedFace, size: int = IMAGE_SIZE) -> np.ndarray:
    """The face levelled and framed as in FER2013: uint8 (size, size) grayscale.

    image: uint8 (H, W, 3) RGB or (H, W) grayscale. Parts of the frame outside the
    image repeat its edge pixels.
    """
    return sample_square(image, crop_to_image(face, size), size, gray=True)


def whole_image_face(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """An image that already is a face crop, of any size or colour, as uint8 (size, size) gray.

    The whole image is resized (not cropped: the user framed it), with Pillow's
    antialiasing; a 48 x 48 grayscale FER image comes back unchanged.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        gray = Image.fromarray(image)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        gray = Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L")
    else:
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, np.uint8)
