"""Pixels of a turned and scaled square taken out of an image (bilinear, edge-clamped).

Coordinates are pixel indices: pixel (row i, column j) has its centre at x = j, y = i.
"""
from __future__ import annotations

import math

import numpy as np

# ITU-R BT.601 luma, as Pillow's and OpenCV's grayscale conversions weigh R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) luma of a uint8 RGB (H, W, 3), RGBA (H, W, 4) or gray (H, W) image."""
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., :3].astype(np.float32) @ LUMA
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0].astype(np.float32)
    raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")


def square_to_image(cx: float, cy: float, side: float, angle: float, size: int) -> np.ndarray:
    """2 x 3 matrix taking (u, v, 1) in a size x size output to image coordinates.

    The output covers the square of the given side centred at (cx, cy), turned by
    `angle` radians (its u axis points along (cos angle, sin angle); image y points down).
    """
    scale = side / size
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    middle = (size - 1) / 2  # the output's centre lies between its middle pixels
    return np.array([[cos, -sin, cx - cos * middle + sin * middle],
                     [sin, cos, cy - sin * middle - cos * middle]], np.float64)


def apply(matrix: np.ndarray, u: float, v: float) -> tuple[float, float]:
    """The image point of output point (u, v)."""
    x, y = matrix @ np.array([u, v, 1.0])
    return float(x), float(y)


def sample_square(image: np.ndarray, matrix: np.ndarray, size: int, *, gray: bool,
                  max_supersampling: int = 8) -> np.ndarray:
    """uint8 (size, size) gray or (size, size, 3) RGB pixels of the square `matrix` maps.

    Each output pixel averages k x k bilinear samples spread over its area (k: image
    pixels per output pixel, at most max_supersampling), so shrinking does not alias.
    Points outside the image repeat its edge pixels.
    """
    pixel_size = math.hypot(matrix[0, 0], matrix[1, 0])
    k = int(min(max_supersampling, max(1, math.ceil(pixel_size - 1e-9))))
    offsets = (np.arange(size * k) + 0.5) / k - 0.5
    u, v = np.meshgrid(offsets, offsets)
    xs = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2]
    ys = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2]
    window, xs, ys = _window(image, xs, ys)
    channels = to_gray(window)[..., None] if gray else _rgb(window)
    samples = _bilinear(channels, xs, ys)
    pooled = samples.reshape(size, k, size, k, -1).mean(axis=(1, 3))
    out = np.clip(np.rint(pooled), 0, 255).astype(np.uint8)
    return out[..., 0] if gray else out


def _window(image: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """The part of the image the samples fall in, and the samples relative to it, so
    that a face in a large photo costs what the face costs."""
    height, width = image.shape[:2]
    x0 = int(np.clip(np.floor(xs.min()), 0, width - 1))
    x1 = int(np.clip(np.floor(xs.max()) + 2, x0 + 1, width))
    y0 = int(np.clip(np.floor(ys.min()), 0, height - 1))
    y1 = int(np.clip(np.floor(ys.max()) + 2, y0 + 1, height))
    return image[y0:y1, x0:x1], xs - x0, ys - y0


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    return image[..., :3].astype(np.float32)


def _bilinear(channels: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    height, width = channels.shape[:2]
    xs = np.clip(xs, 0, width - 1)
    ys = np.clip(ys, 0, height - 1)
    left = np.floor(xs).astype(np.int64)
    top = np.floor(ys).astype(np.int64)
    right = np.minimum(left + 1, width - 1)
    bottom = np.minimum(top + 1, height - 1)
    fx, fy = (xs - left)[..., None], (ys - top)[..., None]
    upper = channels[top, left] * (1 - fx) + channels[top, right] * fx
    lower = channels[bottom, left] * (1 - fx) + channels[bottom, right] * fx
    return upper * (1 - fy) + lower * fy
