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


def crop_windows(images: np.ndarray, size: int) -> list[np.ndarray]:
    """The centre and the four corner SIZE x SIZE windows of (N, H, W) images."""
    h, w = images.shape[1:3]
    origins = [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size), (h - size, 0),
               (h - size, w - size)]
    return [images[:, y:y + size, x:x + size] for y, x in origins]


def tta_views(images: np.ndarray, tta: str, crop: int = 0) -> list[np.ndarray]:
    """The views of uint8 (N, 48, 48) faces that a TTA mode averages over; CROP > 0: views
    of that size for a model trained on crops."""
    check_tta(tta)
    if crop:
        windows = crop_windows(images, crop)
        if tta == "flip_crops":
            return windows + [w[:, :, ::-1] for w in windows]
        images = windows[0]
    if tta == "none":
        return [images]
    mirrored = images[:, :, ::-1]
    if tta == "flip":
        return [images, mirrored]
    offsets = [(0, 0)] + [(dy, dx) for dy in (-CROP_SHIFT, CROP_SHIFT) for dx in (-CROP_SHIFT, CROP_SHIFT)]
    return [shifted(base, dy, dx) for base in (images, mirrored) for dy, dx in offsets]


def probabilities_with_tta(classifier, images: np.ndarray, tta: str) -> np.ndarray:
    """A Classifier's probabilities for uint8 faces, averaged over the TTA views."""
    views = tta_views(images, tta, getattr(classifier, "crop", 0))
    return np.mean([classifier.probabilities(np.ascontiguousarray(v)) for v in views],
                   axis=0).astype(np.float32)
