"""The input picture with a box per face and its label and probability."""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One colour per class name (fer_jax.data.types.CLASS_NAMES), readable under white text.
CLASS_COLOURS = {
    "angry": (214, 39, 40), "disgust": (140, 86, 75), "fear": (148, 103, 189),
    "happy": (44, 160, 44), "sad": (31, 119, 180), "surprise": (255, 127, 14),
    "neutral": (127, 127, 127),
}

# Formats an annotated copy keeps; anything else (GIF, PNM, ...) is written as PNG.
_KEEPS_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
                 ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}


def annotate(image: np.ndarray, faces: Sequence) -> Image.Image:
    """uint8 (H, W, 3) RGB with each face's box and "label 0.87" drawn on; same size.

    faces: objects with `box` (x, y, w, h in pixels), `label` and `score`.
    """
    picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    short_side = min(picture.size)
    line = max(2, short_side // 250)
    font = ImageFont.load_default(size=max(12, short_side // 35))
    for face in faces:
        x, y, w, h = face.box
        colour = CLASS_COLOURS.get(face.label, (255, 255, 0))
        draw.rectangle([x, y, x + max(w - 1, 0), y + max(h - 1, 0)], outline=colour, width=line)
        text = f"{face.label} {face.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(2, line)
        # Above the box when there is room, else just inside its top edge.
        label_top = y - text_h - 2 * pad if y - text_h - 2 * pad >= 0 else y
        label_left = min(max(0, x), max(0, picture.size[0] - text_w - 2 * pad))
        draw.rectangle([label_left, label_top, label_left + text_w + 2 * pad, label_top + text_h + 2 * pad],
                       fill=colour)
        draw.text((label_left + pad - left, label_top + pad - top), text, fill=(255, 255, 255), font=font)
    return picture


def annotated_name(name: str) -> str:
    """The annotated copy's file name: the input's, as PNG when its format is not kept."""
    suffix = pathlib.PurePath(name).suffix.lower()
    return name if suffix in _KEEPS_FORMAT else f"{os.path.splitext(name)[0]}.png"


def save_picture(picture: Image.Image, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_format = _KEEPS_FORMAT.get(path.suffix.lower(), "PNG")
    options = {"quality": 92} if image_format in ("JPEG", "WEBP") else {}
    picture.save(path, format=image_format, **options)
