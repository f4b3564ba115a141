"""Test-time augmentation: the views of a face whose class probabilities are averaged.

  none        the face as it is (1 view);
  flip        the face and its mirror image (2 views);
  flip_crops  the face and its mirror, each whole and shifted 2 pixels towards each
              of the four corners, the uncovered border filled by repeating the edge
              pixels (10 views: a ten-crop that keeps the 48x48 scale the models
              were trained at, like the translation augmentation does).

A model trained on random crops (augment.random_crop, the classifier's `crop`) sees
crop-sized views: none and flip take the centre window, flip_crops the classic
ten-crop: the four corner windows and the centre one, each with its mirror image.

The views of none and flip (and the centre window) are slices of the array, so the same
functions make them for numpy faces and inside the jitted validation step
(fer_jax.engine.step), on (N, H, W) or (N, H, W, C) arrays alike.
"""
from __future__ import annotations

import numpy as np

from fer_jax.errors import UserError

TTA_MODES = ("none", "flip", "flip_crops")
CROP_SHIFT = 2


def check_tta(tta: str) -> str:
    """TTA unchanged when it is one of TTA_MODES; UserError naming the valid ones otherwise."""
    if tta not in TTA_MODES:
        raise UserError(f"unknown --tta {tta!r}; valid: {', '.join(TTA_MODES)}")
    return tta


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 (N, H, W) moved by (dy, dx) pixels, the uncovered border repeating the edge."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return images
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = images.shape[1:]
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def center_window(images, size: int):
    """The centre SIZE x SIZE window of (N, H, W[, C]) images (themselves when already SIZE)."""
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, top:top + size, left:left + size]


def mirrored(images):
    """(N, H, W[, C]) images mirrored left to right."""
    return images[:, :, ::-1]


def crop_windows(images: np.ndarray, size: int) -> list[np.ndarray]:
    """The centre and the four corner SIZE x SIZE windows of (N, H, W) images."""
    h, w = images.shape[1:3]
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return [center_window(images, size)] + [images[:, y:y + size, x:x + size] for y, x in corners]


def tta_views(images, tta: str, crop: int = 0) -> list:
    """The views of (N, 48, 48[, C]) faces that a TTA mode averages over; CROP > 0: views
    of that size for a model trained on crops. none and flip also take JAX arrays (inside
    jit); flip_crops pads with numpy."""
    check_tta(tta)
    if crop:
        if tta == "flip_crops":
            windows = crop_windows(images, crop)
            return windows + [mirrored(w) for w in windows]
        images = center_window(images, crop)
    if tta == "none":
        return [images]
    if tta == "flip":
        return [images, mirrored(images)]
    offsets = [(0, 0)] + [(dy, dx) for dy in (-CROP_SHIFT, CROP_SHIFT) for dx in (-CROP_SHIFT, CROP_SHIFT)]
    return [shifted(base, dy, dx) for base in (images, mirrored(images)) for dy, dx in offsets]


def probabilities_with_tta(classifier, images: np.ndarray, tta: str) -> np.ndarray:
    """A Classifier's probabilities for uint8 faces, averaged over the TTA views."""
    views = tta_views(images, tta, getattr(classifier, "crop", 0))
    return np.mean([classifier.probabilities(np.ascontiguousarray(v)) for v in views],
                   axis=0).astype(np.float32)
