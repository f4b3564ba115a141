"""Reads FER2013 in each form it is published in into one FerData.

Forms (detected from the content, not the name):
- Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) and ``icml_face_data.csv``
  (``emotion, Usage, pixels``), plain or gzip;
- the competition's ``train.csv`` (``emotion,pixels``: all Training) and
  ``test.csv`` (``pixels``: unlabelled Test rows);
- an image folder ``ROOT/train/<emotion>/*.png|jpg|jpeg`` and ``ROOT/test/<emotion>/*``.

Bad rows raise DataError naming the file and the 1-based line (header = line 1), or,
with ``skip_bad_rows=True`` (``--skip-bad-rows`` on the command line), are left out
and listed in the returned report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import re
from typing import Iterator, Sequence

import numpy as np

from fer_jax.data.csv_stream import open_csv, records
from fer_jax.data.types import (CLASS_NAMES, IMAGE_SIZE, NUM_PIXELS, PRIVATE_TEST, PUBLIC_TEST,
                                TEST, TRAINING, UNLABELLED, USAGES, FerData)
from fer_jax.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A FER2013 face is ~2 KB; a larger file is not read at all (Pillow refuses huge pixel counts).
MAX_IMAGE_BYTES = 64 << 20
SPLIT_FOLDERS = ("train", "test")

# Rows parsed per vectorized pass: bounds the working memory (~200 MB) on the full file.
_PIXEL_CHUNK_ROWS = 2048
_LABEL_CODES = {str(label).encode(): label for label in range(len(CLASS_NAMES))}
_USAGE_CODES = {usage.lower().encode(): usage for usage in USAGES}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DIGITS = re.compile(r"[0-9]+")


@dataclasses.dataclass(frozen=True)
class BadRow:
    """One row (or image) that was not read: where it is and why."""

    source: str  # the CSV file, or the image file for a folder
    line: int | None  # 1-based CSV line (header = 1); None for an image
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}: line {self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}"


def read_fer(path: str | os.PathLike, *, skip_bad_rows: bool = False) -> FerData:
    """Reads any form of FER2013 (see the module docstring); bad rows raise DataError."""
    data, _ = read_fer_with_report(path, skip_bad_rows)
    return data


def read_fer_with_report(path: str | os.PathLike,
                         skip_bad_rows: bool = False) -> tuple[FerData, list[BadRow]]:
    """Like read_fer, and also returns the rows skipped (empty unless skip_bad_rows)."""
    path = pathlib.Path(path)
    if path.is_dir():
        root = find_folder_root(path)
        if root is None:
            raise DataError(path, "folder holds no train/ or test/ folder of class folders "
                                  "(expected ROOT/train/<emotion>/*.png and ROOT/test/<emotion>/*.png)")
        return _read_image_folder(path, root, skip_bad_rows)
    return _read_csv_file(path, skip_bad_rows)


def file_digest(path: str | os.PathLike) -> bytes:
    """sha256 of a file's bytes, read in blocks (as stored: a gzip file is hashed compressed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """A data file's identity in the parsed cache and in checkpoints: file_digest in hex."""
    return file_digest(path).hex()


def find_folder_root(path: pathlib.Path) -> pathlib.Path | None:
    """The folder holding train/ and/or test/: PATH itself or its only subfolder."""
    if _split_folders(path):
        return path
    subfolders = [entry for entry in path.iterdir() if entry.is_dir() and not _is_hidden(entry)]
    if len(subfolders) == 1 and _split_folders(subfolders[0]):
        return subfolders[0]
    return None


def natural_key(name: str) -> tuple:
    """Sort key in which digit runs compare as numbers ("img2" < "img10")."""
    parts = re.split(r"([0-9]+)", name)
    # Even positions are text, odd ones digits, so tuples never compare str with int.
    key = tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))
    return key + (name,)


# --------------------------------------------------------------------------- CSV


def _read_csv_file(path: pathlib.Path, skip_bad_rows: bool) -> tuple[FerData, list[BadRow]]:
    rows = records(open_csv(path))
    first = next(rows, None)
    if first is None:
        raise DataError(path, "file is empty")
    header_line, header = first
    if isinstance(header, str):
        raise DataError(path, header, line=header_line)
    columns = _column_positions(path, [name.decode("utf-8", "replace") for name in header], header_line)
    parsed = _parse_rows(rows, columns)
    if not parsed.lines:
        raise DataError(path, "no data rows after the header")
    problems = parsed.problems
    bad_rows = [BadRow(str(path), parsed.lines[i], reason) for i, reason in sorted(problems.items())]
    keep = np.ones(len(parsed.lines), dtype=bool)
    keep[list(problems)] = False
    _handle_bad_rows(path, bad_rows, skip_bad_rows, total=len(keep))
    data = FerData(images=parsed.images[keep], labels=parsed.labels[keep], usage=parsed.usage[keep],
                   source=str(path), fingerprint=file_fingerprint(path))
    return data, bad_rows


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "no such file or folder") from None
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror or err}") from None


@dataclasses.dataclass(frozen=True)
class _Columns:
    count: int  # fields every row must have
    pixels: int
    emotion: int | None  # None: the form has no labels (test.csv)
    usage: int | None  # None: the form has no Usage column (train.csv, test.csv)


def _column_positions(path: pathlib.Path, header: Sequence[str], line: int) -> _Columns:
    names = [name.strip().lower() for name in header]
    duplicated = sorted({name for name in names if name and names.count(name) > 1})
    if duplicated:
        raise DataError(path, f"column(s) {', '.join(duplicated)} appear more than once", line=line)
    position = {name: i for i, name in enumerate(names)}
    missing = []
    if "pixels" not in position:
        missing.append("pixels")
    if "usage" in position and "emotion" not in position:
        missing.append("emotion")
    if missing:
        found = ", ".join(repr(_shorten(name.strip())) for name in header)
        raise DataError(
            path, f"missing column(s) {', '.join(missing)}; found {found} (expected a header "
                  "'emotion,pixels,Usage' as in fer2013.csv, 'emotion,pixels' as in train.csv "
                  "or 'pixels' as in test.csv)", line=line)
    return _Columns(len(names), position["pixels"], position.get("emotion"), position.get("usage"))


@dataclasses.dataclass(frozen=True)
class _ParsedRows:
    labels: np.ndarray
    usage: np.ndarray
    images: np.ndarray
    lines: list[int]  # 1-based line on which each record starts
    problems: dict[int, str]  # record index -> why it is bad


_USAGE_DTYPE = f"<U{max(map(len, USAGES))}"


def _parse_rows(rows: Iterator[tuple[int, list[bytes] | str]], columns: _Columns) -> _ParsedRows:
    """Parses the records as they stream in, a chunk at a time, so only a chunk's text is held."""
    lines: list[int] = []
    problems: dict[int, str] = {}
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    batch: list[list[bytes] | str] = []
    for number, row in rows:
        lines.append(number)
        batch.append(row)
        if len(batch) == _PIXEL_CHUNK_ROWS:
            parts.append(_parse_batch(batch, columns, len(lines) - len(batch), problems))
            batch = []
    if batch or not parts:
        parts.append(_parse_batch(batch, columns, len(lines) - len(batch), problems))
    labels, usage, images = (np.concatenate(arrays) for arrays in zip(*parts))
    return _ParsedRows(labels, usage, images, lines, problems)


def _parse_batch(batch: Sequence[list[bytes] | str], columns: _Columns, first: int,
                 problems: dict[int, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, usage and images of records FIRST, FIRST + 1, ...; bad ones go into PROBLEMS."""
    n = len(batch)
    pixel_fields: list[bytes] = []
    labels = np.full(n, UNLABELLED, dtype=np.int32)
    usage = np.full(n, TRAINING if columns.emotion is not None else TEST, dtype=_USAGE_DTYPE)
    for i, row in enumerate(batch):
        problem = _row_problem(row, columns)
        pixel_fields.append(b"" if problem else row[columns.pixels])
        if problem:
            problems[first + i] = problem
            continue
        if columns.emotion is not None:
            label = _LABEL_CODES.get(row[columns.emotion].strip())
            if label is None:
                problems[first + i] = _label_problem(row[columns.emotion])
                continue
            labels[i] = label
        if columns.usage is not None:
            split = _USAGE_CODES.get(row[columns.usage].strip().lower())
            if split is None:
                problems[first + i] = _usage_problem(row[columns.usage])
                continue
            usage[i] = split
    images, pixel_ok = parse_pixel_fields(pixel_fields)
    for i in np.flatnonzero(~pixel_ok):
        problems.setdefault(first + int(i), describe_pixel_problem(pixel_fields[i]))
    return labels, usage, images


def _row_problem(row: list[bytes] | str, columns: _Columns) -> str | None:
    if isinstance(row, str):
        return row
    if len(row) != columns.count:
        return f"expected {columns.count} fields, found {len(row)}"
    return None


def _label_problem(field: bytes) -> str:
    text = field.decode("utf-8", "replace").strip()
    if not text:
        return "emotion label is empty"
    if _INTEGER.fullmatch(text):
        return f"emotion label {text} is outside 0-6"
    return f"emotion label {_shorten(text)!r} is not an integer 0-6"


def _usage_problem(field: bytes) -> str:
    text = field.decode("utf-8", "replace").strip()
    return f"unknown Usage {_shorten(text)!r} (expected one of {', '.join(USAGES)})"


def parse_pixel_fields(fields: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Parses space-separated pixel strings: (images uint8 (N, 48, 48), ok (N,) bool).

    Rows that are not exactly 2304 integers 0-255 are False in ``ok`` and zero in
    ``images``. Work is vectorized over bytes, a chunk of rows at a time.
    """
    images = np.zeros((len(fields), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    ok = np.zeros(len(fields), dtype=bool)
    for start in range(0, len(fields), _PIXEL_CHUNK_ROWS):
        stop = min(start + _PIXEL_CHUNK_ROWS, len(fields))
        images[start:stop], ok[start:stop] = _parse_pixel_chunk(fields[start:stop])
    return images, ok


def _parse_pixel_chunk(fields: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    n = len(fields)
    lengths = np.fromiter(map(len, fields), dtype=np.int64, count=n)
    row_starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=row_starts[1:])
    # Rows are joined with "\n", which separates tokens like a space does.
    buf = np.frombuffer(b"\n".join(fields), dtype=np.uint8)
    digit = (buf - np.uint8(ord("0"))) < 10
    separator = (buf == ord(" ")) | (buf == ord("\t")) | (buf == ord("\n"))
    bad = np.zeros(n, dtype=bool)
    bad[_row_of(row_starts, np.flatnonzero(~(digit | separator)))] = True

    starts = np.flatnonzero(digit[1:] & ~digit[:-1]) + 1
    if len(digit) and digit[0]:
        starts = np.concatenate(([0], starts))
    ends = np.flatnonzero(digit[:-1] & ~digit[1:]) + 1
    if len(digit) and digit[-1]:
        ends = np.concatenate((ends, [len(digit)]))
    # Tokens never span rows (the joining "\n" ends them), so row i owns tokens
    # first_token[i]:first_token[i + 1].
    first_token = np.searchsorted(starts, row_starts)
    tokens_per_row = np.diff(first_token, append=len(starts))
    bad |= tokens_per_row != NUM_PIXELS

    width = ends - starts
    # The last three digits give the value (indices before a token start are masked out).
    value = (buf[ends - 1] - np.uint8(ord("0"))).astype(np.int16)
    value += np.where(width >= 2, buf[ends - 2].astype(np.int16) - ord("0"), 0) * 10
    value += np.where(width >= 3, buf[ends - 3].astype(np.int16) - ord("0"), 0) * 100
    too_big = value > 255
    long_tokens = width > 3
    if long_tokens.any():
        # Longer tokens are in range only when everything before the last 3 digits is "0".
        nonzero_before = np.concatenate(([0], np.cumsum(digit & (buf != ord("0")), dtype=np.int64)))
        too_big |= long_tokens & (nonzero_before[np.maximum(ends - 3, starts)] - nonzero_before[starts] > 0)
    bad[_row_of(row_starts, starts[too_big])] = True

    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    good_tokens = np.repeat(~bad, tokens_per_row)
    images[~bad] = value[good_tokens].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, ~bad


def _row_of(row_starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.searchsorted(row_starts, positions, side="right") - 1


def describe_pixel_problem(field: bytes) -> str:
    """Why a pixel string is not 2304 integers 0-255 (run only on rows already found bad)."""
    tokens = field.decode("utf-8", "replace").split()
    for position, token in enumerate(tokens, start=1):
        if _DIGITS.fullmatch(token) and int(token) <= 255:
            continue
        if _INTEGER.fullmatch(token):
            return f"pixel {position} is {_shorten(token)}: out of range 0-255"
        return f"pixel {position} is {_shorten(token)!r}: not an integer"
    if len(tokens) != NUM_PIXELS:
        return f"expected {NUM_PIXELS} pixels, found {len(tokens)}"
    return "pixels hold characters other than digits, spaces and tabs"


def _shorten(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------ folders


def _is_hidden(path: pathlib.Path) -> bool:
    return path.name.startswith(".")


def _split_folders(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """{"train": ..., "test": ...} for the split folders PATH holds (names case-insensitive)."""
    found: dict[str, pathlib.Path] = {}
    for entry in path.iterdir():
        name = entry.name.lower()
        if name in SPLIT_FOLDERS and entry.is_dir():
            if name in found:
                raise DataError(path, f"both {found[name].name}/ and {entry.name}/ exist: keep one")
            found[name] = entry
    return found


@dataclasses.dataclass(frozen=True)
class _ImageFile:
    path: pathlib.Path
    usage: str
    label: int


def _read_image_folder(path: pathlib.Path, root: pathlib.Path,
                       skip_bad_rows: bool) -> tuple[FerData, list[BadRow]]:
    try:
        files, bad_rows = _list_image_files(root)
    except OSError as err:
        raise DataError(err.filename or root, f"cannot list: {err.strerror or err}") from None
    if not files and not bad_rows:
        raise DataError(root, "no images found in the train/ or test/ class folders")
    entries = len(files) + len(bad_rows)
    images, labels, usage = [], [], []
    digests: dict[str, bytes] = {}
    for bad in bad_rows:
        digests[_relative(root, bad.source)] = _digest_or_empty(pathlib.Path(bad.source))
    for item in files:
        size = _file_size(item.path)
        if size > MAX_IMAGE_BYTES:
            digests[_relative(root, item.path)] = _digest_or_empty(item.path)
            reason = (f"image file is {size / 2 ** 20:.0f} MiB, larger than the "
                      f"{MAX_IMAGE_BYTES >> 20} MiB an image may be")
            bad_rows.append(BadRow(str(item.path), None, reason))
            continue
        raw = _read_bytes(item.path)
        # The bytes are in memory for decoding: hashed there, the same digest as file_digest's.
        digests[_relative(root, item.path)] = hashlib.sha256(raw).digest()
        try:
            images.append(decode_image(raw))
        except ValueError as err:
            bad_rows.append(BadRow(str(item.path), None, f"cannot read image: {err}"))
            continue
        labels.append(item.label)
        usage.append(item.usage)
    _handle_bad_rows(path, bad_rows, skip_bad_rows, total=entries)
    fingerprint = hashlib.sha256()
    for relative in sorted(digests):
        fingerprint.update(relative.encode() + b"\0" + digests[relative])
    data = FerData(
        images=np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
        labels=np.array(labels, dtype=np.int32), usage=np.array(usage, dtype=f"<U{max(map(len, USAGES))}"),
        source=str(path), fingerprint=fingerprint.hexdigest())
    return data, bad_rows


def _relative(root: pathlib.Path, path: str | pathlib.Path) -> str:
    return pathlib.Path(path).relative_to(root).as_posix()


def _file_size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror or err}") from None


def _digest_or_empty(path: pathlib.Path) -> bytes:
    """file_digest, or nothing for an entry that cannot be read (it is reported as bad)."""
    try:
        return file_digest(path)
    except OSError:
        return b""


def _list_image_files(root: pathlib.Path) -> tuple[list[_ImageFile], list[BadRow]]:
    """Image files in load order (split, class, natural name) and entries that are not images."""
    files: list[_ImageFile] = []
    not_images: list[BadRow] = []
    for split_name, split_dir in sorted(_split_folders(root).items(),
                                        key=lambda item: SPLIT_FOLDERS.index(item[0])):
        for class_dir in sorted(split_dir.iterdir()):
            if _is_hidden(class_dir):
                continue
            if not class_dir.is_dir():
                not_images.append(BadRow(str(class_dir), None,
                                         f"a file where class folders are expected in {split_dir.name}/"))
                continue
            label = _class_index(class_dir)
            for entry in sorted(class_dir.iterdir(), key=lambda p: natural_key(p.name)):
                if _is_hidden(entry):
                    continue
                if entry.is_dir() or entry.suffix.lower() not in IMAGE_SUFFIXES:
                    not_images.append(BadRow(str(entry), None,
                                             f"not an image file ({', '.join(IMAGE_SUFFIXES)})"))
                    continue
                files.append(_ImageFile(entry, _folder_usage(split_name, entry.name), label))
    files.sort(key=lambda f: (SPLIT_FOLDERS.index(_split_of(f.usage)), f.label, natural_key(f.path.name)))
    return files, not_images


def _class_index(class_dir: pathlib.Path) -> int:
    name = class_dir.name.lower()
    if name not in CLASS_NAMES:
        raise DataError(class_dir, f"unknown class folder {class_dir.name!r}; expected one of "
                                   f"{', '.join(CLASS_NAMES)} (case-insensitive)")
    return CLASS_NAMES.index(name)


def _folder_usage(split_name: str, file_name: str) -> str:
    if split_name == "train":
        return TRAINING
    lowered = file_name.lower()
    for usage in (PUBLIC_TEST, PRIVATE_TEST):
        if lowered.startswith(usage.lower() + "_"):
            return usage
    return TEST


def _split_of(usage: str) -> str:
    return "train" if usage == TRAINING else "test"


def decode_image(raw: bytes) -> np.ndarray:
    """An image file's bytes as uint8 (48, 48) grayscale; ValueError when unreadable."""
    from PIL import Image, UnidentifiedImageError  # Pillow is only needed for folder sources

    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            gray = image.convert("L")
            if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
                gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ValueError("not a PNG, JPEG or other format Pillow reads") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(str(err) or type(err).__name__) from None


# ---------------------------------------------------------------------- reporting


def _handle_bad_rows(path: pathlib.Path, bad_rows: list[BadRow], skip_bad_rows: bool, total: int) -> None:
    """Raises for the first bad row, or (when skipping) warns with the count and first lines."""
    if not bad_rows:
        return
    bad_rows.sort(key=lambda bad: (bad.line is None, bad.line or 0, bad.source))
    first = bad_rows[0]
    if not skip_bad_rows:
        more = len(bad_rows) - 1
        leave_out = "--skip-bad-rows leaves bad rows out"
        hint = f" ({more} more bad row(s) follow; {leave_out})" if more else f" ({leave_out})"
        raise DataError(first.source, first.reason + hint, line=first.line)
    if len(bad_rows) >= total:
        raise DataError(path, f"no usable rows: all {len(bad_rows)} are bad; first: {first}")
    log_skipped_rows(path, bad_rows)


def log_skipped_rows(path: str | os.PathLike, bad_rows: Sequence[BadRow]) -> None:
    """Warns (logging, so stderr by default) how many rows were skipped and where the first are."""
    if not bad_rows:
        return
    shown = [str(bad.line) if bad.line is not None else pathlib.Path(bad.source).name
             for bad in bad_rows[:10]]
    what = "lines" if bad_rows[0].line is not None else "files"
    etc = ", ..." if len(bad_rows) > len(shown) else ""
    logger.warning("%s: skipped %d bad row(s) (%s %s%s); first: %s",
                   path, len(bad_rows), what, ", ".join(shown), etc, bad_rows[0])
