"""A detected face to the 48 x 48 grayscale crop the models were trained on.

How FER2013 frames a face, measured with this package's own detector: MTCNN run
(`fit_to_image=False`) on 400 faces of the shared FER2013 sample, upscaled 4x, found
336; its box covers on median 37.5 x 49.5 of the 48 x 48 frame (the frame cuts through
the box at the forehead and chin), centred at (23.5, 24.5), with the eyes 17.4 px apart
at y = 18.75. So the FER frame is a square whose side is 1.12 times the geometric mean
of the box's sides (48 / sqrt(37.5 * 49.5)), centred on the box's centre (the half-pixel
offset is below the detector's jitter). The geometric mean keeps the scale steady for
faces in profile, whose eye distance collapses; the eyes only give the rotation.
(scratch script: MTCNN over the sample, medians of box and landmarks; see BUILD_NOTES.)
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from fer_jax.data.types import IMAGE_SIZE
from fer_jax.faces.detect import DetectedFace

FRAME_PER_BOX = 1.12
# Each output pixel averages up to this many samples per side, so that a large face is
# shrunk without aliasing (a 480 px face gives 8 x 8 bilinear samples per pixel).
MAX_SUPERSAMPLING = 8
# ITU-R BT.601 luma, as Pillow's and OpenCV's grayscale conversions weigh R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def face_square(face: DetectedFace) -> tuple[float, float, float, float]:
    """(centre x, centre y, side, angle in radians) of the FER-like frame around a face.

    The angle is that of the line from the left to the right eye (image y points down),
    so rotating the frame by it levels the eyes.
    """
    x, y, w, h = face.box
    side = FRAME_PER_BOX * math.sqrt(max(w, 1.0) * max(h, 1.0))
    (lx, ly), (rx, ry) = face.left_eye, face.right_eye
    angle = math.atan2(ry - ly, rx - lx) if (rx, ry) != (lx, ly) else 0.0
    return x + w / 2, y + h / 2, side, angle


def crop_to_image(face: DetectedFace, size: int = IMAGE_SIZE) -> np.ndarray:
    """2 x 3 affine matrix taking crop pixel coordinates (u, v, 1) to image coordinates."""
    cx, cy, side, angle = face_square(face)
    scale = side / size
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    middle = (size - 1) / 2  # pixel centres: the crop's middle lies between pixels 23 and 24
    return np.array([[cos, -sin, cx - cos * middle + sin * middle],
                     [sin, cos, cy - sin * middle - cos * middle]], np.float64)


def align_face(image: np.ndarray, face: DetectedFace, size: int = IMAGE_SIZE) -> np.ndarray:
    """The face levelled and framed as in FER2013: uint8 (size, size) grayscale.

    image: uint8 (H, W, 3) RGB or (H, W) grayscale. Parts of the frame outside the
    image repeat its edge pixels.
    """
    matrix = crop_to_image(face, size)
    pixel_size = math.hypot(matrix[0, 0], matrix[1, 0])  # image pixels per crop pixel
    k = int(min(MAX_SUPERSAMPLING, max(1, math.ceil(pixel_size))))
    # Sample positions: k x k per crop pixel, spread evenly over its area.
    offsets = (np.arange(size * k) + 0.5) / k - 0.5
    u, v = np.meshgrid(offsets, offsets)
    xs = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2]
    ys = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2]
    samples = _sample_gray(image, xs, ys)
    pooled = samples.reshape(size, k, size, k).mean(axis=(1, 3))
    return np.clip(np.rint(pooled), 0, 255).astype(np.uint8)


def _sample_gray(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear grayscale samples at (xs, ys), clamped to the image's edge.

    Only the window the samples fall in is converted to gray, so a face in a large
    photo costs what the face costs.
    """
    height, width = image.shape[:2]
    x0 = int(np.clip(np.floor(xs.min()), 0, width - 1))
    x1 = int(np.clip(np.floor(xs.max()) + 2, 1, width))
    y0 = int(np.clip(np.floor(ys.min()), 0, height - 1))
    y1 = int(np.clip(np.floor(ys.max()) + 2, 1, height))
    window = to_gray(image[y0:y1, x0:x1])
    xs = np.clip(xs - x0, 0, window.shape[1] - 1)
    ys = np.clip(ys - y0, 0, window.shape[0] - 1)
    left = np.floor(xs).astype(np.int64)
    top = np.floor(ys).astype(np.int64)
    right = np.minimum(left + 1, window.shape[1] - 1)
    bottom = np.minimum(top + 1, window.shape[0] - 1)
    fx, fy = xs - left, ys - top
    upper = window[top, left] * (1 - fx) + window[top, right] * fx
    lower = window[bottom, left] * (1 - fx) + window[bottom, right] * fx
    return upper * (1 - fy) + lower * fy


def to_gray(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) luma of a uint8 RGB (H, W, 3), RGBA (H, W, 4) or gray (H, W) image."""
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., :3].astype(np.float32) @ LUMA
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0].astype(np.float32)
    raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")


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
