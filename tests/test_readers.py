"""Readers for every form of FER2013, the writers that round-trip them, and the parsed cache."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from conftest import generated_fer_arrays, write_kaggle_csv
from fer_jax.data.cache import CacheWarning, load_fer_cached, load_fer_cached_with_report
from fer_jax.data.export import write_csv, write_image_folder
from fer_jax.data.readers import natural_key, read_fer, read_fer_with_report
from fer_jax.data.types import PRIVATE_TEST, PUBLIC_TEST, TEST, TRAINING, UNLABELLED, FerData
from fer_jax.errors import DataError

README_COUNTS = {
    TRAINING: [3995, 436, 4097, 7215, 4830, 3171, 4965],
    PUBLIC_TEST: [467, 56, 496, 895, 653, 415, 607],
}


@pytest.fixture(scope="module")
def sample(fer_sample_path) -> FerData:
    return read_fer(fer_sample_path)


@pytest.fixture(scope="module")
def three_splits() -> FerData:
    """Generated rows in Training, PublicTest and PrivateTest (the shared files lack PrivateTest)."""
    images, labels, usage = generated_fer_arrays(n_per_class_split=2)
    return FerData(images=images, labels=labels, usage=usage, source="generated", fingerprint="")


def assert_same_rows(actual: FerData, expected: FerData) -> None:
    np.testing.assert_array_equal(actual.images, expected.images)
    np.testing.assert_array_equal(actual.labels, expected.labels)
    np.testing.assert_array_equal(actual.usage, expected.usage)
    assert actual.images.dtype == np.uint8 and actual.labels.dtype == np.int32


def folder_order(data: FerData) -> np.ndarray:
    """The order the folder reader returns rows written by write_image_folder.

    That is split folder, class, then file name "<Usage>_<row>".
    """
    test_dir = np.array([usage != TRAINING for usage in data.usage])
    return np.lexsort((np.arange(len(data)), data.usage, data.labels, test_dir))


def pixel_text(image: np.ndarray) -> str:
    return " ".join(map(str, image.reshape(-1).tolist()))


def small_csv_lines(n: int = 6) -> list[str]:
    """Header and N valid Kaggle rows, as text lines (line k of the file is element k-1)."""
    images, labels, usage = generated_fer_arrays(n_per_class_split=1)
    return ["emotion,pixels,Usage"] + [f"{labels[i]},{pixel_text(images[i])},{usage[i]}" for i in range(n)]


def write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ good input


def test_sample_reads_as_kaggle_format(sample, fer_sample_path):
    assert sample.images.shape == (len(sample), 48, 48)
    assert set(np.unique(sample.labels)) == set(range(7))
    assert set(np.unique(sample.usage)) <= {TRAINING, PUBLIC_TEST, PRIVATE_TEST}
    assert sample.source == str(fer_sample_path)
    assert sample.fingerprint == hashlib.sha256(fer_sample_path.read_bytes()).hexdigest()
    # The first data line, parsed independently of the reader.
    with gzip.open(fer_sample_path, "rt") as f:
        f.readline()
        label, pixels, usage = f.readline().strip().split(",")
    np.testing.assert_array_equal(sample.images[0].reshape(-1), np.array(pixels.split(), dtype=np.uint8))
    assert (sample.labels[0], sample.usage[0]) == (int(label), usage)


def test_gzip_and_plain_read_the_same(sample, fer_sample_path, tmp_path):
    plain = tmp_path / "fer2013.csv"
    plain.write_bytes(gzip.decompress(fer_sample_path.read_bytes()))
    assert_same_rows(read_fer(plain), sample)
    # Detection goes by content: gzip data without .gz and plain text named .gz both read.
    (tmp_path / "gzipped_no_suffix.csv").write_bytes(fer_sample_path.read_bytes())
    assert_same_rows(read_fer(tmp_path / "gzipped_no_suffix.csv"), sample)
    (tmp_path / "plain.csv.gz").write_bytes(plain.read_bytes())
    assert_same_rows(read_fer(tmp_path / "plain.csv.gz"), sample)


def test_kaggle_file_with_any_subset_of_splits(three_splits, tmp_path):
    path = write_kaggle_csv(tmp_path / "fer2013.csv.gz", three_splits.images, three_splits.labels,
                            three_splits.usage)
    assert_same_rows(read_fer(path), three_splits)
    private_only = three_splits.split(PRIVATE_TEST)
    path = write_kaggle_csv(tmp_path / "private.csv", private_only.images, private_only.labels,
                            private_only.usage)
    assert_same_rows(read_fer(path), private_only)


def test_write_csv_round_trips(sample, three_splits, tmp_path):
    for data, name in ((sample, "out.csv.gz"), (three_splits, "out.csv")):
        assert_same_rows(read_fer(write_csv(data, tmp_path / name, gzip_level=1)), data)
    with gzip.open(tmp_path / "out.csv.gz", "rt") as f:
        assert f.readline() == "emotion,pixels,Usage\n"


def test_icml_face_data_form(three_splits, tmp_path):
    lines = ["emotion, Usage, pixels"] + [
        f"{label},{usage},{pixel_text(image)}"
        for image, label, usage in zip(three_splits.images, three_splits.labels, three_splits.usage)]
    assert_same_rows(read_fer(write_lines(tmp_path / "icml_face_data.csv", lines)), three_splits)


def test_competition_train_and_test_csv(three_splits, tmp_path):
    # The competition's files quote the pixel field.
    train = three_splits.split(TRAINING)
    train_lines = ["emotion,pixels"] + [f'{label},"{pixel_text(image)}"'
                                        for image, label in zip(train.images, train.labels)]
    assert_same_rows(read_fer(write_lines(tmp_path / "train.csv", train_lines)), train)

    test_lines = ["pixels"] + [pixel_text(image) for image in three_splits.images]
    test = read_fer(write_lines(tmp_path / "test.csv", test_lines))
    np.testing.assert_array_equal(test.images, three_splits.images)
    assert np.all(test.labels == UNLABELLED) and np.all(test.usage == TEST)
    assert not test.has_labels
    # Unlabelled data is written back in test.csv's form.
    assert_same_rows(read_fer(write_csv(test, tmp_path / "again.csv")), test)
    assert (tmp_path / "again.csv").read_text().startswith("pixels\n")


def test_image_folder_round_trip(three_splits, tmp_path):
    root = write_image_folder(three_splits, tmp_path / "fer")
    expected = three_splits.subset(folder_order(three_splits))
    assert_same_rows(read_fer(root), expected)
    # A folder holding ROOT (as a zip extracts) reads the same.
    assert_same_rows(read_fer(tmp_path), expected)
    assert read_fer(root).source == str(root)


def test_image_folder_from_csv_sample(sample, tmp_path):
    part = sample.subset(np.r_[0:150, len(sample) - 60:len(sample)])  # Training and PublicTest rows
    assert set(part.usage) == {TRAINING, PUBLIC_TEST}
    root = write_image_folder(part, tmp_path / "fer")
    assert_same_rows(read_fer(root), part.subset(folder_order(part)))


def test_image_folder_names_colour_sizes_and_order(tmp_path):
    root = tmp_path / "fer"
    (root / "Train" / "Happy").mkdir(parents=True)
    (root / "test" / "SAD").mkdir(parents=True)
    # Natural order: img2 before img10; a colour 96x96 image becomes 48x48 gray.
    Image.new("RGB", (96, 96), (90, 90, 90)).save(root / "Train" / "Happy" / "img10.png")
    Image.new("L", (48, 48), 7).save(root / "Train" / "Happy" / "img2.png")
    Image.new("L", (48, 48), 1).save(root / "test" / "SAD" / "PublicTest_5.png")
    Image.new("L", (48, 48), 2).save(root / "test" / "SAD" / "PrivateTest_3.png")
    Image.new("L", (48, 48), 3).save(root / "test" / "SAD" / "img_1.jpg")
    (root / "test" / "SAD" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    data = read_fer(root)
    assert data.images.shape == (5, 48, 48)
    np.testing.assert_array_equal(data.images[:, 0, 0], [7, 90, 3, 2, 1])
    np.testing.assert_array_equal(data.labels, [3, 3, 4, 4, 4])
    assert list(data.usage) == [TRAINING, TRAINING, TEST, PRIVATE_TEST, PUBLIC_TEST]
    assert natural_key("img2.png") < natural_key("img10.png")


def test_folder_fingerprint_depends_on_content_not_location(three_splits, tmp_path):
    first = read_fer(write_image_folder(three_splits, tmp_path / "a"))
    copy = read_fer(write_image_folder(three_splits, tmp_path / "b"))
    assert first.fingerprint == copy.fingerprint and len(first.fingerprint) == 64
    image = next((tmp_path / "b" / "train" / "angry").iterdir())
    Image.new("L", (48, 48), 0).save(image)
    assert read_fer(tmp_path / "b").fingerprint != first.fingerprint


def test_folder_fingerprint_is_every_entrys_path_and_sha256(three_splits, tmp_path):
    """The fingerprint checkpoints and the cache store: sha256 over the sorted relative
    paths, each with its file's sha256, skipped entries included (their bytes count too)."""
    root = write_image_folder(three_splits, tmp_path / "fer")
    (root / "test" / "happy" / "notes.txt").write_text("hello")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0"
                      + hashlib.sha256(path.read_bytes()).digest())
    fingerprint = read_fer(root, skip_bad_rows=True).fingerprint
    assert fingerprint == digest.hexdigest()
    (root / "test" / "happy" / "notes.txt").write_text("hello again")
    assert read_fer(root, skip_bad_rows=True).fingerprint != fingerprint


def test_blank_lines_crlf_and_bom(tmp_path):
    lines = small_csv_lines(4)
    text = "\r\n".join(lines[:3] + ["", ""] + lines[3:]) + "\r\n\r\n\n"
    path = tmp_path / "windows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    data = read_fer(path)
    assert len(data) == 4
    expected = read_fer(write_lines(tmp_path / "clean.csv", lines))
    assert_same_rows(data, expected)
    # Line numbers still count the blank lines: the row after them is on line 6.
    bad = replace_line(lines, 4, lambda line: line.rsplit(",", 1)[0] + ",Nowhere")
    bad = bad[:3] + ["", ""] + bad[3:]
    with pytest.raises(DataError, match=r": line 6: unknown Usage 'Nowhere'"):
        read_fer(write_lines(tmp_path / "blank.csv", bad))


def test_quoted_newline_keeps_line_numbers(tmp_path):
    lines = small_csv_lines(3)
    label, pixels, usage = lines[1].split(",")
    multi_line = f'{label},"{pixels.replace(" ", chr(10), 1)}",{usage}'  # a quoted field over 2 lines
    bad_third = replace_line(lines, 4, BAD_ROWS["non-integer pixel"][0])[3]
    path = write_lines(tmp_path / "quoted.csv", [lines[0], multi_line, lines[2], bad_third])
    with pytest.raises(DataError, match=r"quoted.csv: line 5: pixel 1 is 'abc'"):
        read_fer(path)  # lines 2-3 hold the first row, so the third row is on line 5
    path = write_lines(tmp_path / "quoted_ok.csv", [lines[0], multi_line, lines[2], lines[3]])
    assert_same_rows(read_fer(path), read_fer(write_lines(tmp_path / "plain.csv", lines)))


# ------------------------------------------------------------------- bad input


def replace_line(lines: list[str], number: int, edit) -> list[str]:
    out = list(lines)
    out[number - 1] = edit(out[number - 1])
    return out


def pixels_edit(edit):
    def apply(line: str) -> str:
        label, pixels, usage = line.split(",")
        return f"{label},{edit(pixels.split())},{usage}"
    return apply


def set_pixel(index: int, token: str):
    return pixels_edit(lambda p: " ".join(p[:index] + [token] + p[index + 1:]))


BAD_ROWS = {
    "too few pixels": (pixels_edit(lambda p: " ".join(p[:-1])), "expected 2304 pixels, found 2303"),
    "too many pixels": (pixels_edit(lambda p: " ".join(p + ["1"])), "expected 2304 pixels, found 2305"),
    "non-integer pixel": (set_pixel(0, "abc"), "pixel 1 is 'abc': not an integer"),
    "float pixel": (set_pixel(9, "3.5"), "pixel 10 is '3.5': not an integer"),
    "pixel above 255": (set_pixel(4, "256"), "pixel 5 is 256: out of range 0-255"),
    "long pixel": (set_pixel(4, "1000"), "pixel 5 is 1000: out of range 0-255"),
    "negative pixel": (set_pixel(0, "-1"), "pixel 1 is -1: out of range 0-255"),
    "label 7": (lambda line: "7" + line[1:], "emotion label 7 is outside 0-6"),
    "label -1": (lambda line: "-1" + line[1:], "emotion label -1 is outside 0-6"),
    "non-integer label": (lambda line: "x" + line[1:], "emotion label 'x' is not an integer 0-6"),
    "unknown usage": (lambda line: line.rsplit(",", 1)[0] + ",Validation", "unknown Usage 'Validation'"),
    "missing field": (lambda line: line.rsplit(",", 1)[0], "expected 3 fields, found 2"),
    "extra field": (lambda line: line + ",x", "expected 3 fields, found 4"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
@pytest.mark.parametrize("line", [2, 4])
def test_bad_row_names_file_and_line(case, line, tmp_path):
    edit, message = BAD_ROWS[case]
    path = write_lines(tmp_path / "fer2013.csv", replace_line(small_csv_lines(), line, edit))
    with pytest.raises(DataError) as raised:
        read_fer(path)
    assert str(raised.value).startswith(f"{path}: line {line}: {message}")
    assert raised.value.line == line


def test_leading_zero_pixels_are_accepted(tmp_path):
    lines = replace_line(small_csv_lines(1), 2, set_pixel(0, "0000255"))
    lines = replace_line(lines, 2, set_pixel(1, "007"))
    data = read_fer(write_lines(tmp_path / "zeros.csv", lines))
    assert data.images[0, 0, :2].tolist() == [255, 7]


def test_missing_columns_say_which(tmp_path):
    lines = ["emotion,Usage"] + [line.rsplit(",", 1)[0] for line in small_csv_lines(2)[1:]]
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) pixels; found 'emotion', 'Usage'"):
        read_fer(write_lines(tmp_path / "nopixels.csv", lines))
    lines = ["pixels,Usage", "1 2 3,Training"]
    with pytest.raises(DataError, match=r"missing column\(s\) emotion; found 'pixels', 'Usage'"):
        read_fer(write_lines(tmp_path / "nolabels.csv", lines))


def test_empty_missing_and_corrupt_files(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv: file is empty"):
        read_fer(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("\n\n  \n")
    with pytest.raises(DataError, match=r"blank.csv: file is empty"):
        read_fer(tmp_path / "blank.csv")
    (tmp_path / "header.csv").write_text("emotion,pixels,Usage\n")
    with pytest.raises(DataError, match=r"header.csv: no data rows"):
        read_fer(tmp_path / "header.csv")
    with pytest.raises(DataError, match=r"absent.csv: no such file or folder"):
        read_fer(tmp_path / "absent.csv")
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"emotion,pixels,Usage\n" * 1000)[:50])
    with pytest.raises(DataError, match=r"cut.csv.gz: corrupt gzip data"):
        read_fer(tmp_path / "cut.csv.gz")


def test_bad_image_folders(three_splits, tmp_path):
    root = write_image_folder(three_splits, tmp_path / "fer")
    broken = root / "train" / "fear" / "Training_broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=rf"{broken}: cannot read image: not a PNG, JPEG"):
        read_fer(root)
    valid = (root / "train" / "fear").glob("Training_*[0-9].png").__next__()
    broken.write_bytes(valid.read_bytes()[:200])  # a truncated PNG: the header reads, the pixels do not
    with pytest.raises(DataError, match=rf"{broken}: cannot read image"):
        read_fer(root)

    (root / "train" / "contempt").mkdir()
    with pytest.raises(DataError, match=r"contempt: unknown class folder 'contempt'"):
        read_fer(root)

    empty = tmp_path / "empty"
    for split in ("train", "test"):
        (empty / split / "happy").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images found"):
        read_fer(empty)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: folder holds no train/ or test/"):
        read_fer(tmp_path / "nothing")


def test_skip_bad_image_reports_it(three_splits, tmp_path, caplog):
    root = write_image_folder(three_splits, tmp_path / "fer")
    broken = root / "test" / "happy" / "PublicTest_broken.png"
    broken.write_bytes(b"not an image")
    (root / "test" / "happy" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        data, bad = read_fer_with_report(root, skip_bad_rows=True)
    assert len(data) == len(three_splits)
    assert sorted(pathlib.Path(row.source).name for row in bad) == ["PublicTest_broken.png", "notes.txt"]
    assert all(row.line is None for row in bad)
    assert "skipped 2 bad row(s)" in caplog.text


def test_skip_bad_rows_reports_lines(tmp_path, caplog):
    lines = small_csv_lines(8)
    lines = replace_line(lines, 3, BAD_ROWS["too few pixels"][0])
    lines = replace_line(lines, 6, BAD_ROWS["label 7"][0])
    lines = replace_line(lines, 7, BAD_ROWS["unknown usage"][0])
    path = write_lines(tmp_path / "fer2013.csv", lines)
    with pytest.raises(DataError, match=r"line 3: expected 2304 pixels, found 2303 \(2 more bad row"):
        read_fer(path)
    with caplog.at_level(logging.WARNING):
        data, bad = read_fer_with_report(path, skip_bad_rows=True)
    assert [row.line for row in bad] == [3, 6, 7]
    assert bad[1].reason == "emotion label 7 is outside 0-6"
    assert all(row.source == str(path) for row in bad)
    assert "skipped 3 bad row(s) (lines 3, 6, 7)" in caplog.text
    clean = read_fer(write_lines(tmp_path / "clean.csv", small_csv_lines(8)))
    assert_same_rows(data, clean.subset(np.array([0, 2, 3, 6, 7])))  # lines 2, 4, 5, 8, 9
    assert len(read_fer(path, skip_bad_rows=True)) == 5


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    lines = small_csv_lines(2)
    lines = replace_line(replace_line(lines, 2, BAD_ROWS["label 7"][0]), 3, BAD_ROWS["label 7"][0])
    with pytest.raises(DataError, match=r"no usable rows: all 2 are bad"):
        read_fer(write_lines(tmp_path / "bad.csv", lines), skip_bad_rows=True)


# ----------------------------------------------------------------------- cache


def test_cache_hit_and_invalidation(fer_sample_path, sample, tmp_path):
    source = tmp_path / "fer2013.csv.gz"
    source.write_bytes(fer_sample_path.read_bytes())
    cache = tmp_path / "cache"
    first = load_fer_cached_with_report(source, cache_dir=cache)
    second = load_fer_cached_with_report(source, cache_dir=cache)
    assert (first.hit, second.hit) == (False, True)
    assert first.cache_file.parent == cache and list(tmp_path.glob("*.npz")) == []
    assert_same_rows(second.data, sample)
    assert second.data.fingerprint == sample.fingerprint and second.data.source == str(source)

    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: re-parsed
    assert not load_fer_cached_with_report(source, cache_dir=cache).hit
    assert load_fer_cached_with_report(source, cache_dir=cache).hit

    # Same size and mtime, different content: the stored fingerprint catches it.
    plain = tmp_path / "fer2013.csv"
    plain.write_bytes(gzip.decompress(fer_sample_path.read_bytes()))
    assert not load_fer_cached_with_report(plain, cache_dir=cache).hit
    stat = plain.stat()
    content = plain.read_bytes()
    edited = content.replace(b"\n0,", b"\n1,", 1)
    assert len(edited) == len(content) and edited != content
    plain.write_bytes(edited)
    os.utime(plain, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = load_fer_cached_with_report(plain, cache_dir=cache)
    assert not changed.hit
    assert np.sum(changed.data.labels != sample.labels) == 1


def test_cache_keeps_skipped_rows_and_separates_skip_setting(tmp_path, caplog):
    lines = replace_line(small_csv_lines(4), 3, BAD_ROWS["label 7"][0])
    path = write_lines(tmp_path / "bad.csv", lines)
    cache = tmp_path / "cache"
    load_fer_cached(path, cache_dir=cache, skip_bad_rows=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_fer_cached_with_report(path, cache_dir=cache, skip_bad_rows=True)
    assert again.hit and [row.line for row in again.bad_rows] == [3] and len(again.data) == 3
    assert "skipped 1 bad row(s) (lines 3)" in caplog.text  # a cache hit still says so
    with pytest.raises(DataError, match="line 3"):
        load_fer_cached(path, cache_dir=cache)


def test_cache_of_a_folder_sees_changed_images(three_splits, tmp_path):
    root = write_image_folder(three_splits, tmp_path / "fer")
    cache = tmp_path / "cache"
    assert not load_fer_cached_with_report(root, cache_dir=cache).hit
    assert load_fer_cached_with_report(root, cache_dir=cache).hit
    Image.new("L", (48, 48), 0).save(root / "train" / "sad" / "Training_new.png")
    result = load_fer_cached_with_report(root, cache_dir=cache)
    assert not result.hit and len(result.data) == len(three_splits) + 1


def test_unwritable_cache_dir_warns_and_still_reads(fer_sample_path, sample, tmp_path):
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(CacheWarning, match="continuing without a cache"):
        data = load_fer_cached(fer_sample_path, cache_dir=blocked / "cache")
    assert_same_rows(data, sample)


def test_cache_dir_from_environment(fer_sample_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_JAX_CACHE_DIR", str(tmp_path / "envcache"))
    result = load_fer_cached_with_report(fer_sample_path)
    assert result.cache_file.parent == tmp_path / "envcache" and result.cache_file.exists()


def test_missing_source_through_cache(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_fer_cached(tmp_path / "absent.csv", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------- the real data


def test_full_public_file_counts(fer_public_path):
    data = read_fer(fer_public_path)
    assert len(data) == 32_298
    assert set(np.unique(data.usage)) == {TRAINING, PUBLIC_TEST}
    for usage, counts in README_COUNTS.items():
        assert data.split(usage).class_counts().tolist() == counts
    assert len(data.split(TRAINING)) == 28_709 and len(data.split(PUBLIC_TEST)) == 3_589


@pytest.mark.slow
def test_full_public_file_parses(fer_public_path):
    data = read_fer(fer_public_path)
    assert len(data) == 32_298

