"""A parsed-data cache: reading FER2013 once, then loading the parsed arrays.

One .npz per source (and skip_bad_rows setting) under the cache folder; it is used
when the source's size and mtime_ns (every file's, for a folder) are unchanged and,
for a file, its sha256 still matches the stored fingerprint. Anything else re-parses
and replaces the entry. Nothing is ever written next to the source.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile
import warnings
import zipfile

import numpy as np

from fer_jax.data.readers import BadRow, file_fingerprint, log_skipped_rows, read_fer_with_report
from fer_jax.data.types import FerData

CACHE_DIR_ENV = "FER_JAX_CACHE_DIR"
# Bump when the reader's output for the same file could change.
CACHE_FORMAT = 1


class CacheWarning(UserWarning):
    """The cache could not be used; data is still read, only not cached."""


@dataclasses.dataclass(frozen=True)
class CachedRead:
    """What load_fer_cached_with_report found: the data, skipped rows and whether the cache served it."""

    data: FerData
    bad_rows: tuple[BadRow, ...]
    hit: bool
    cache_file: pathlib.Path


def default_cache_dir() -> pathlib.Path:
    """$FER_JAX_CACHE_DIR, else ~/.cache/fer_jax."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return pathlib.Path(configured) if configured else pathlib.Path.home() / ".cache" / "fer_jax"


def load_fer_cached(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                    skip_bad_rows: bool = False) -> FerData:
    """read_fer through the cache (see the module docstring)."""
    return load_fer_cached_with_report(path, cache_dir=cache_dir, skip_bad_rows=skip_bad_rows).data


def load_fer_cached_with_report(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                                skip_bad_rows: bool = False) -> CachedRead:
    """Like load_fer_cached, also saying whether it was a hit and which rows were skipped."""
    source = pathlib.Path(path)
    cache_file = cache_file_for(source, cache_dir, skip_bad_rows)
    if not source.exists():
        read_fer_with_report(source, skip_bad_rows)  # raises the reader's DataError
    signature = source_signature(source)
    cached = _load_entry(cache_file, signature, source)
    if cached is not None:
        data, bad_rows = cached
        log_skipped_rows(source, bad_rows)  # skipped rows are reported on every load, not only the first
        return CachedRead(dataclasses.replace(data, source=str(source)), bad_rows, True, cache_file)
    data, bad_rows = read_fer_with_report(source, skip_bad_rows)
    _store_entry(cache_file, signature, data, bad_rows)
    return CachedRead(data, tuple(bad_rows), False, cache_file)


def cache_file_for(source: pathlib.Path, cache_dir: str | os.PathLike | None,
                   skip_bad_rows: bool) -> pathlib.Path:
    """Where SOURCE's entry lives: one name per absolute path and skip setting."""
    folder = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    absolute = os.path.abspath(source)
    key = hashlib.sha256(f"{absolute}\0skip={skip_bad_rows}".encode()).hexdigest()[:24]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.name)[:40]
    return folder / f"{stem}-{key}.npz"


def source_signature(source: pathlib.Path) -> str:
    """Changes when the source does: absolute path, size and mtime_ns of it (or of every file under it)."""
    if source.is_dir():
        parts = []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                stat = os.stat(os.path.join(dirpath, name))
                relative = os.path.relpath(os.path.join(dirpath, name), source)
                parts.append(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}")
        listing = "\n".join(parts)
    else:
        stat = source.stat()
        listing = f"{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(f"{os.path.abspath(source)}\n{listing}".encode()).hexdigest()


def _load_entry(cache_file: pathlib.Path, signature: str,
                source: pathlib.Path) -> tuple[FerData, tuple[BadRow, ...]] | None:
    try:
        with np.load(cache_file, allow_pickle=False) as entry:
            if int(entry["format"]) != CACHE_FORMAT or str(entry["signature"]) != signature:
                return None
            fingerprint = str(entry["fingerprint"])
            # A same-size edit within the mtime granularity would keep the signature:
            # re-hashing a file costs a fraction of a second, so check the content too.
            if source.is_file() and file_fingerprint(source) != fingerprint:
                return None
            data = FerData(images=entry["images"], labels=entry["labels"], usage=entry["usage"],
                           source=str(entry["source"]), fingerprint=fingerprint)
            stored = zip(entry["bad_sources"], entry["bad_lines"], entry["bad_reasons"])
            bad_rows = tuple(BadRow(str(where), None if line < 0 else int(line), str(reason))
                             for where, line, reason in stored)
            return data, bad_rows
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # absent, unreadable or stale-format entry: parse again


def _store_entry(cache_file: pathlib.Path, signature: str, data: FerData,
                 bad_rows: list[BadRow]) -> None:
    arrays = {
        "format": np.array(CACHE_FORMAT), "signature": np.array(signature),
        "fingerprint": np.array(data.fingerprint), "source": np.array(data.source),
        "images": data.images, "labels": data.labels, "usage": data.usage,
        "bad_sources": np.array([bad.source for bad in bad_rows], dtype=str),
        "bad_lines": np.array([-1 if bad.line is None else bad.line for bad in bad_rows],
                              dtype=np.int64),
        "bad_reasons": np.array([bad.reason for bad in bad_rows], dtype=str),
    }
    tmp_name = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=cache_file.name + ".", suffix=".tmp", dir=cache_file.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        # The rename is atomic, so readers never see a half-written entry.
        os.replace(tmp_name, cache_file)
    except OSError as err:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        # The warnings module shows a given message once, so repeated loads stay quiet.
        warnings.warn(f"cannot write the FER2013 cache in {cache_file.parent} ({err.strerror or err}); "
                      f"continuing without a cache (set {CACHE_DIR_ENV} to a writable folder)",
                      CacheWarning, stacklevel=3)
