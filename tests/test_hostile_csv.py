"""Hostile and careless CSV input: huge files, binary and UTF-16 files, endless lines, gzip bombs.

The reader must say what a file is from its first bytes and keep memory bounded
(fer_jax/data/csv_stream.py states the limits); reads that a broken reader would
blow up run in a child process under an address-space limit (tests/peak_rss.py).
"""
from __future__ import annotations

import gzip
import logging
import pathlib
import struct
import sys
import zlib

import numpy as np
import pytest

from conftest import generated_fer_arrays
from peak_rss import run_capped
from fer_jax.data import csv_stream
from fer_jax.data.readers import read_fer, read_fer_with_report
from fer_jax.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
ADDRESS_SPACE_LIMIT = 3 << 30
REFUSAL_RSS_LIMIT = 2_000_000_000
GIB = 1 << 30


def _rows(n: int = 4) -> list[str]:
    images, labels, usage = generated_fer_arrays(n_per_class_split=1)
    return [f"{labels[i]},{' '.join(map(str, images[i].reshape(-1).tolist()))},{usage[i]}" for i in range(n)]


def _csv(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("\n".join(["emotion,pixels,Usage"] + lines) + "\n")
    return path


def _refusal(path) -> str:
    with pytest.raises(DataError) as err:
        read_fer(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


def _peak(command: list[str]) -> tuple[dict, str]:
    return run_capped(ADDRESS_SPACE_LIMIT, command)


def _read_in_child(path: pathlib.Path) -> tuple[dict, str]:
    script = ("import sys\nfrom fer_jax.errors import run_cli\nfrom fer_jax.data.readers import read_fer\n"
              "run_cli(lambda argv: print(len(read_fer(argv[0]))) or 0, sys.argv[1:])")
    return _peak([sys.executable, "-c", script, str(path)])


# ----------------------------------------------------------------------------- huge files

def test_explore_refuses_a_2gb_file_of_zeros_from_its_first_bytes(tmp_path):
    zeros = tmp_path / "zeros.csv"
    with open(zeros, "wb") as f:
        f.truncate(2 * GIB)  # sparse: no disk used
    result, stderr = _peak([sys.executable, "-m", "fer_jax.explore", "--data", str(zeros),
                            "--out", str(tmp_path / "out")])
    assert result["returncode"] == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "binary data: its first 65536 bytes are all zero" in errors[0]
    assert result["peak_rss"] < REFUSAL_RSS_LIMIT, result


def test_a_text_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    big = _csv(tmp_path / "big.csv", _rows(20))
    with open(big, "r+b") as f:
        f.truncate(csv_stream.MAX_TEXT_BYTES + GIB // 2)
    result, stderr = _read_in_child(big)
    assert result["returncode"] == 2 and "more than the 1 GiB a FER2013 CSV may hold" in stderr, stderr
    assert result["peak_rss"] < REFUSAL_RSS_LIMIT, result


def _gzip_member(raw_deflate: bytes, size: int, crc: int = 0) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw_deflate + struct.pack("<II", crc, size % 2 ** 32)


def _deflated(byte: bytes, size: int, chunk: int = 16 << 20) -> bytes:
    """Raw deflate of SIZE copies of BYTE: after a full flush every chunk compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(byte * chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (size // chunk - 1) + compressor.compress(byte * chunk) + compressor.flush(zlib.Z_FINISH)


def test_a_gzip_bomb_is_cut_off_at_the_text_limit(tmp_path):
    head = ("\n".join(["emotion,pixels,Usage"] + _rows(2)) + "\n").encode()
    bomb = tmp_path / "bomb.csv.gz"
    # A readable start, then 1.25 GiB of spaces on one line (as a second gzip member).
    bomb.write_bytes(gzip.compress(head) + _gzip_member(_deflated(b" ", GIB + GIB // 4), GIB + GIB // 4))
    assert bomb.stat().st_size < 4 << 20
    result, stderr = _read_in_child(bomb)
    assert result["returncode"] == 2 and "holds more than 1 GiB of text" in stderr, stderr
    assert result["peak_rss"] < REFUSAL_RSS_LIMIT, result


def test_a_line_longer_than_the_limit_is_a_bad_row_read_through(tmp_path):
    rows = _rows(3)
    path = _csv(tmp_path / "long.csv", [rows[0], "1," + "7 " * (csv_stream.MAX_LINE_BYTES // 2) + ",Training",
                                        rows[1], rows[2]])
    assert "line 3: line is longer than 1 MiB" in _refusal(path)
    data, bad = read_fer_with_report(path, skip_bad_rows=True)
    assert len(data) == 3 and [row.line for row in bad] == [3]


def test_a_header_line_longer_than_the_head_is_refused(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_bytes(b"emotion," + b"x" * csv_stream.HEAD_BYTES + b"\n1,2,3\n")
    assert "first line is longer than 64 KiB" in _refusal(path)


# ------------------------------------------------------------------- what the file looks like

@pytest.mark.parametrize("encoding,expected", [
    ("utf-16", "is UTF-16 text (it starts with a UTF-16 byte-order mark)"),
    ("utf-16-be", "is UTF-16 text without a byte-order mark"),
    ("utf-16-le", "is UTF-16 text without a byte-order mark"),
    ("utf-32", "is UTF-32 text"),
], ids=["utf16-bom", "utf16-be", "utf16-le", "utf32"])
def test_a_wide_text_file_is_named_by_its_encoding(tmp_path, encoding, expected):
    path = tmp_path / "wide.csv"
    path.write_bytes(("\n".join(["emotion,pixels,Usage"] + _rows(2)) + "\n").encode(encoding))
    message = _refusal(path)
    assert expected in message and "save it as UTF-8" in message and "missing column" not in message


def test_a_gzipped_utf16_file_is_named_too(tmp_path):
    path = tmp_path / "wide.csv.gz"
    path.write_bytes(gzip.compress(("emotion,pixels,Usage\n" + _rows(1)[0]).encode("utf-16")))
    assert "is UTF-16 text" in _refusal(path)


@pytest.mark.parametrize("start,expected", [
    (np.random.default_rng(0).bytes(4096), "is binary data (it starts with b'"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "is a PNG image"),
    (b"\xff\xd8\xff\xe0" + bytes(64), "is a JPEG image"),
    (b"\x80\x02}q\x00." + bytes(8), "is a Python pickle"),
    (b"\x93NUMPY\x01\x00" + bytes(64), "is a NumPy .npy array"),
], ids=["random", "png", "jpeg", "pickle", "npy"])
def test_a_binary_file_is_named_as_binary(tmp_path, start, expected):
    path = tmp_path / "data.csv"
    path.write_bytes(start)
    message = _refusal(path)
    assert expected in message and "missing column" not in message, message


def test_text_files_still_read_in_every_line_ending(tmp_path):
    lines = ["emotion,pixels,Usage"] + _rows(3)
    for name, text in (("lf", "\n".join(lines)), ("crlf", "\r\n".join(lines) + "\r\n"),
                       ("cr", "\r".join(lines) + "\r"), ("bom", "\ufeff" + "\n".join(lines))):
        path = tmp_path / f"{name}.csv"
        path.write_bytes(text.encode("utf-8"))
        assert len(read_fer(path)) == 3, name


# --------------------------------------------------------------------------- bad-row hints

def test_the_bad_row_hint_gives_the_command_line_spelling(tmp_path):
    rows = _rows(3)
    path = _csv(tmp_path / "bad.csv", [rows[0], "9," + rows[1].split(",", 1)[1], "x,1 2,Training"])
    message = _refusal(path)
    assert "line 3: emotion label 9 is outside 0-6" in message
    assert "--skip-bad-rows" in message and "--set data.skip_bad_rows" not in message
    assert "skip_bad_rows=True" not in message


def test_explore_skips_bad_rows_when_asked(tmp_path, caplog, monkeypatch):
    from fer_jax.cli.explore import main

    monkeypatch.setenv("FER_JAX_CACHE_DIR", str(tmp_path / "cache"))
    rows = _rows(8)
    path = _csv(tmp_path / "bad.csv", rows[:4] + ["3,not pixels,Training"] + rows[4:])
    with pytest.raises(DataError, match="--skip-bad-rows"):
        main(["--data", str(path), "--out", str(tmp_path / "refused")])
    with caplog.at_level(logging.WARNING):
        assert main(["--data", str(path), "--out", str(tmp_path / "out"), "--skip-bad-rows"]) == 0
    assert "skipped 1 bad row(s) (lines 6)" in caplog.text


def test_evaluate_skips_bad_rows_when_asked(tmp_path, caplog, monkeypatch):
    from fer_jax.cli.evaluate import main

    released = REPO / "release" / "final"
    if not (released / "variables").is_dir():
        pytest.skip("no released model")
    monkeypatch.setenv("FER_JAX_CACHE_DIR", str(tmp_path / "cache"))
    rows = _rows(8)
    path = _csv(tmp_path / "bad.csv", rows[:4] + ["3,1 2 3,Training"] + rows[4:])
    argv = ["--checkpoint", str(released), "--data", str(path), "--split", "all"]
    with pytest.raises(DataError, match="--skip-bad-rows"):
        main(argv)
    with caplog.at_level(logging.WARNING):
        assert main(argv + ["--skip-bad-rows"]) == 0
    assert "skipped 1 bad row(s) (lines 6)" in caplog.text


# ------------------------------------------------------------------------------ real data

@pytest.mark.slow
def test_the_real_300mb_csv_still_reads_in_bounded_memory(tmp_path, fer_public_path):
    if not str(fer_public_path).endswith(".gz"):
        pytest.skip("no shared public CSV")
    plain = tmp_path / "fer2013_public.csv"
    with gzip.open(fer_public_path, "rb") as source, open(plain, "wb") as out:
        while block := source.read(1 << 24):
            out.write(block)
    assert plain.stat().st_size > 250_000_000
    result, stderr = _read_in_child(plain)
    assert result["returncode"] == 0, stderr
    # The whole file is 271 MB of text; its parsed images are 74 MB.
    assert result["peak_rss"] < 700_000_000, result


# ---------------------------------------------------------------------------- image folders

def test_a_huge_file_in_an_image_folder_is_a_bad_row_never_read(tmp_path):
    from PIL import Image

    from fer_jax.data import readers

    for index, name in enumerate(("a.png", "b.png")):
        folder = tmp_path / "faces" / "train" / "happy"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 48), index * 40, np.uint8)).save(folder / name)
    huge = tmp_path / "faces" / "train" / "happy" / "huge.png"
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(readers.MAX_IMAGE_BYTES + 1)
    with pytest.raises(DataError, match=r"huge.png: image file is 64 MiB, larger than the 64 MiB"):
        read_fer(tmp_path / "faces")
    data, bad = read_fer_with_report(tmp_path / "faces", skip_bad_rows=True)
    assert len(data) == 2 and [pathlib.Path(row.source).name for row in bad] == ["huge.png"]


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims WIDTH x HEIGHT grey pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_odd_images_are_read_or_named_as_bad_rows(tmp_path):
    from PIL import Image

    folder = tmp_path / "faces" / "train" / "sad"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(folder / "sixteen_bit.png")
    Image.new("RGBA", (48, 48), (10, 20, 30, 0)).save(folder / "rgba.png")
    Image.new("CMYK", (48, 48), (0, 0, 0, 0)).save(folder / "cmyk.jpg")
    frames = [Image.new("L", (48, 48), value) for value in (5, 200)]
    frames[0].save(folder / "animated.png", save_all=True, append_images=frames[1:])
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge_pixels.png").write_bytes(_png_claiming(20000, 20000))
    data, bad = read_fer_with_report(tmp_path / "faces", skip_bad_rows=True)
    assert len(data) == 4 and data.images.dtype == np.uint8
    reasons = {pathlib.Path(row.source).name: row.reason for row in bad}
    assert sorted(reasons) == ["empty.png", "huge_pixels.png"], reasons
    assert "exceeds limit" in reasons["huge_pixels.png"] or "decompression bomb" in reasons["huge_pixels.png"]


# ------------------------------------------------------------------------------- fuzzing

_CSV_NOISE = (b'"', b",", b"\n", b"\r", b"\0", b"\xff\xfe", b"\xef\xbb\xbf", b" ", b"-", b"999", b"\t")


def _mutated_csv(rng, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(int(rng.integers(1, 4))):
        kind, at = rng.integers(4), int(rng.integers(len(data) + 1))
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = rng.integers(256)
        elif kind == 1:
            data[at:at] = _CSV_NOISE[rng.integers(len(_CSV_NOISE))] * int(rng.integers(1, 4))
        elif kind == 2:
            del data[at: at + int(rng.integers(1, 400))]
        else:
            data = data[:at]
    out = bytes(data)
    if rng.random() < 0.25:
        out = gzip.compress(out)
        if rng.random() < 0.5:  # a damaged gzip: cut short, or a flipped byte past the header
            at = int(rng.integers(10, len(out)))
            out = out[:at] if rng.random() < 0.5 else out[:at] + bytes([out[at] ^ 0x5A]) + out[at + 1:]
    return out


def test_fuzzed_csv_files_end_in_data_or_a_one_line_refusal(tmp_path):
    rng = np.random.default_rng(5)
    valid = ("\n".join(["emotion,pixels,Usage"] + _rows(12)) + "\n").encode()
    outcomes = {"read": 0, "refused": 0}
    for i in range(300):
        path = tmp_path / f"fuzz{i}.csv"
        path.write_bytes(_mutated_csv(rng, valid))
        for skip in (False, True):
            try:
                read_fer(path, skip_bad_rows=skip)
                outcomes["read"] += 1
            except DataError as err:
                assert "\n" not in str(err) and len(str(err)) < 1000, str(err)
                outcomes["refused"] += 1
    assert outcomes["read"] >= 60 and outcomes["refused"] >= 60, outcomes
