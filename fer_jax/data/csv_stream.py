"""Opens a FER2013 CSV as untrusted input: what the file is, from its first bytes, then its records streamed.

Limits, so that no file can make the reader use much memory:
- the first HEAD_BYTES (of text, after gzip) must look like text and hold the first line:
  a binary file, a UTF-16 or UTF-32 file, a zip archive, an image or a pickle is named
  as such, before anything else is read;
- a file holds at most MAX_TEXT_BYTES of text (the full FER2013 CSV holds ~290 MB);
- a line holds at most MAX_LINE_BYTES (a FER2013 row is under 10 KB): a longer one is a
  bad row, skipped through without being kept.
Records come one at a time, so memory follows the rows being parsed, not the file.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import pathlib
import zlib
from typing import BinaryIO, Iterator

from fer_jax.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
UTF8_BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 64 << 10
MAX_TEXT_BYTES = 1 << 30
MAX_LINE_BYTES = 1 << 20
_BUFFER_BYTES = 1 << 20

_WIDE_TEXT = ((b"\xff\xfe\x00\x00", "UTF-32 text"), (b"\x00\x00\xfe\xff", "UTF-32 text"),
              (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"))
_KNOWN_BINARY = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                 (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy .npy array"),
                 (b"\x80", "a Python pickle (a PyTorch .pth file?)"), (b"BZh", "bzip2-compressed data"),
                 (b"\xfd7zXZ", "xz-compressed data"), (b"7z\xbc\xaf", "a 7-Zip archive"),
                 (b"\x89HDF", "an HDF5 file"))
_CONTROL = bytes(c for c in range(32) if c not in b"\t\n\r\f\v") + b"\x7f"


@dataclasses.dataclass(frozen=True)
class CsvSource:
    path: pathlib.Path
    compressed: bool
    line_ends_cr: bool  # only "\r" ends lines (old Mac files): the csv module splits them

    def open(self) -> BinaryIO:
        """The file's text bytes (gunzipped), refusing to give more than MAX_TEXT_BYTES."""
        inner = gzip.open(self.path, "rb") if self.compressed else open(self.path, "rb")
        return io.BufferedReader(_Limited(inner, self.path), buffer_size=_BUFFER_BYTES)


class _Limited(io.RawIOBase):
    def __init__(self, inner: BinaryIO, path: pathlib.Path):
        self._inner, self._path, self._total = inner, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._inner.readinto(buffer)
        self._total += count
        if self._total > MAX_TEXT_BYTES:
            raise DataError(self._path, f"holds more than {MAX_TEXT_BYTES >> 30} GiB of text, the most a "
                                        "FER2013 CSV may hold (the full data set is about 290 MB)")
        return count

    def close(self) -> None:
        self._inner.close()
        super().close()


def open_csv(path: pathlib.Path) -> CsvSource:
    """Checks the file's first bytes; a file that is not CSV text raises DataError saying what it is."""
    try:
        with open(path, "rb") as f:
            start = f.read(HEAD_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DataError(path, "no such file or folder") from None
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror or err}") from None
    if start.startswith(ZIP_MAGIC):
        raise DataError(path, "is a zip archive: extract it and pass the CSV or folder inside")
    compressed = start.startswith(GZIP_MAGIC)
    head = _gunzipped_head(path) if compressed else start
    what = describe_non_text(head)
    if what:
        advice = "; save it as UTF-8" if what.startswith("UTF") else ""
        raise DataError(path, f"is {what}, not a FER2013 CSV (UTF-8 or ASCII text){advice}")
    if not compressed and size > MAX_TEXT_BYTES:
        raise DataError(path, f"is {size / 2 ** 30:.1f} GiB, more than the {MAX_TEXT_BYTES >> 30} GiB a "
                              "FER2013 CSV may hold (the full data set is about 290 MB)")
    if len(head) == HEAD_BYTES and b"\n" not in head and b"\r" not in head:
        raise DataError(path, f"its first line is longer than {HEAD_BYTES >> 10} KiB: not a FER2013 CSV "
                              "(expected a header such as 'emotion,pixels,Usage' on the first line)")
    return CsvSource(path, compressed, line_ends_cr=b"\n" not in head and b"\r" in head)


def _gunzipped_head(path: pathlib.Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(path, f"corrupt gzip data: {err}") from None


def describe_non_text(head: bytes) -> str | None:
    """What the first bytes of a file are when they are not UTF-8 or ASCII text, else None."""
    for magic, what in _WIDE_TEXT:
        if head.startswith(magic):
            return f"{what} (it starts with a {what[:6]} byte-order mark)"
    for magic, what in _KNOWN_BINARY:
        if head.startswith(magic):
            return what
    if len(head) >= 8 and head.count(0) * 3 >= len(head) and head.count(0) < len(head):
        half = head[1::2] if head[1::2].count(0) > head[0::2].count(0) else head[0::2]
        if half.count(0) >= 0.9 * len(half):
            return "UTF-16 text without a byte-order mark (every other byte is zero)"
    if head and head.count(0) == len(head):
        return f"binary data: its first {len(head)} bytes are all zero"
    if b"\0" in head or sum(head.count(c) for c in _CONTROL) > len(head) // 100:
        return f"binary data (it starts with {head[:12]!r})"
    return None


def records(source: CsvSource) -> Iterator[tuple[int, list[bytes] | str]]:
    """(line, fields) of each non-blank record, header first; a str for fields says why the line was not read.

    Kaggle's files quote nothing, so lines are split directly (fast); a line with
    quotes is parsed by the csv module, and an unbalanced quote (a quoted newline)
    hands the rest of the file to it, so that line numbers stay right.
    """
    try:
        with source.open() as stream:
            if source.line_ends_cr:
                yield from _csv_module_records(source, stream, first_line=1)
                return
            for number, line in _lines(stream):
                if isinstance(line, str):
                    yield number, line
                    continue
                if number == 1 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]
                line = line.rstrip(b"\n").rstrip(b"\r")
                if not line.strip():
                    continue  # blank lines hold no row
                if b'"' in line:
                    if line.count(b'"') % 2:
                        with source.open() as again:
                            yield from _csv_module_records(source, again, first_line=number)
                        return
                    row = [field.encode() for field in next(csv.reader([line.decode("utf-8", "replace")]))]
                else:
                    row = line.split(b",")
                yield number, row
    except (OSError, EOFError, zlib.error) as err:
        if source.compressed:
            raise DataError(source.path, f"corrupt gzip data: {err}") from None
        raise DataError(source.path, f"cannot read: {getattr(err, 'strerror', None) or err}") from None


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | str]]:
    """Numbered lines; one longer than MAX_LINE_BYTES is read through and given as a reason instead."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(_BUFFER_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield number, f"line is longer than {MAX_LINE_BYTES >> 20} MiB (a FER2013 row is under 10 KB)"
            continue
        yield number, line


def _csv_module_records(source: CsvSource, stream: BinaryIO,
                        first_line: int) -> Iterator[tuple[int, list[bytes]]]:
    """Records parsed by the csv module, from those starting on FIRST_LINE (earlier ones were given)."""
    reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline=""))
    previous_end = 0
    try:
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if start < first_line or not any(field.strip() for field in row):
                continue
            yield start, [field.encode() for field in row]
    except csv.Error as err:
        raise DataError(source.path, f"malformed CSV: {err}", line=previous_end + 1) from None
