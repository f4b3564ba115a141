"""Writes a FerData back out: as Kaggle's CSV, or as the train/test image-folder layout.

Both forms read back through fer_jax.data.readers to the same arrays (a folder in the
reader's order: split, class, then file name).
"""
from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from fer_jax.data.types import CLASS_NAMES, NUM_PIXELS, TEST, TRAINING, UNLABELLED, FerData
from fer_jax.errors import UserError

_ROWS_PER_CHUNK = 1024
# " 0", " 1", ..., " 255", each NUL-padded to 4 bytes: NULs are dropped after lookup.
_PIXEL_TEXT = np.zeros((256, 4), dtype=np.uint8)
for _value in range(256):
    _text = f" {_value}".encode()
    _PIXEL_TEXT[_value, :len(_text)] = np.frombuffer(_text, dtype=np.uint8)
del _value, _text


def write_csv(data: FerData, path: str | os.PathLike, *, gzip_level: int = 6) -> pathlib.Path:
    """Writes DATA as Kaggle's fer2013.csv (``emotion,pixels,Usage``); gzip when PATH ends in .gz.

    Unlabelled data (all Test rows, as read from the competition's test.csv) is written
    in test.csv's form (``pixels`` only), since Kaggle's form needs a label on every row.
    GZIP_LEVEL trades speed for size (1 is several times faster than 6).
    """
    path = pathlib.Path(path)
    unlabelled = data.labels == UNLABELLED
    if unlabelled.all() and len(data) and np.all(data.usage == TEST):
        header, labelled = b"pixels\n", False
    elif unlabelled.any():
        raise UserError(f"cannot write {path}: {int(unlabelled.sum())} rows have no label, and "
                        "fer2013.csv needs one on every row")
    else:
        header, labelled = b"emotion,pixels,Usage\n", True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as raw:
        # mtime=0 and no stored name: the same data always gives the same bytes.
        out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=gzip_level, mtime=0)
               if path.suffix == ".gz" else raw)
        out.write(header)
        for start in range(0, len(data), _ROWS_PER_CHUNK):
            rows = slice(start, start + _ROWS_PER_CHUNK)
            out.write(_csv_lines(data.images[rows], data.labels[rows], data.usage[rows], labelled))
        if out is not raw:
            out.close()
    os.replace(tmp, path)
    return path


def _csv_lines(images: np.ndarray, labels: np.ndarray, usage: np.ndarray, labelled: bool) -> bytes:
    """CSV lines for a chunk of rows; the pixel text is built by table lookup, not per pixel."""
    text = _PIXEL_TEXT[images.reshape(len(images), NUM_PIXELS)].reshape(len(images), -1)
    lines = []
    for row, label, split in zip(text, labels, usage):
        pixels = row[row != 0].tobytes()[1:]  # [1:] drops the first pixel's leading space
        lines.append(f"{label},".encode() + pixels + f",{split}\n".encode() if labelled else pixels + b"\n")
    return b"".join(lines)


def write_image_folder(data: FerData, root: str | os.PathLike) -> pathlib.Path:
    """Writes DATA as ROOT/train/<emotion>/Training_<row>.png and ROOT/test/<emotion>/<Usage>_<row>.png.

    PNG is lossless, so the pixels read back unchanged; the Usage prefix keeps
    PublicTest and PrivateTest apart in test/.
    """
    root = pathlib.Path(root)
    if np.any(data.labels == UNLABELLED):
        raise UserError(f"cannot write {root}: the folder layout needs a label (class folder) on every row")
    for split_dir in ("train", "test"):
        if (root / split_dir).exists() and any((root / split_dir).iterdir()):
            raise UserError(f"{root / split_dir} already holds files: write into an empty folder")
    from PIL import Image  # Pillow is only needed here

    digits = max(5, len(str(max(len(data) - 1, 0))))
    for index, (image, label, usage) in enumerate(zip(data.images, data.labels, data.usage)):
        folder = root / ("train" if usage == TRAINING else "test") / CLASS_NAMES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{usage}_{index:0{digits}d}.png")
    return root
