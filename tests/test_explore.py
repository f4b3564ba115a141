"""The data exploration report: its statistics, its figures and the command."""
from __future__ import annotations

import collections
import hashlib
import math
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import generated_fer_arrays, write_kaggle_csv
from fer_jax import exploration as explore
from fer_jax.cli import explore as explore_cli
from fer_jax.data.readers import read_fer
from fer_jax.data.synthetic import SYNTHETIC_NOTICE
from fer_jax.data.types import (CLASS_NAMES, NUM_CLASSES, PRIVATE_TEST, PUBLIC_TEST, TRAINING,
                                UNLABELLED, FerData)
from fer_jax.errors import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The shared data README's class counts (angry ... neutral).
README_COUNTS = {TRAINING: [3995, 436, 4097, 7215, 4830, 3171, 4965],
                 PUBLIC_TEST: [467, 56, 496, 895, 653, 415, 607]}


@pytest.fixture(scope="module")
def sample(fer_sample_path) -> FerData:
    return read_fer(fer_sample_path)


def planted_arrays():
    """63 random (distinct) faces, 3 per class and split, with duplicates planted:
    rows 1 and 4 (Training, angry vs disgust: conflicting labels), rows 9 and 30
    (Training and PublicTest, both happy), rows 15-17 (Training, surprise, three copies),
    rows 19 and 60 (Training and PrivateTest, both neutral)."""
    images, labels, usage = generated_fer_arrays(n_per_class_split=3, seed=5)
    assert (labels[1], labels[4], labels[9], labels[30], labels[19], labels[60]) == (0, 1, 3, 3, 6, 6)
    assert (usage[9], usage[30], usage[60]) == (TRAINING, PUBLIC_TEST, PRIVATE_TEST)
    images[4] = images[1]
    images[30] = images[9]
    images[16] = images[17] = images[15]
    images[60] = images[19]
    return images, labels, usage


def brute_force_duplicates(images, labels, usage):
    """A second, independent count of exact duplicates: a dict of image bytes -> rows."""
    by_bytes = collections.defaultdict(list)
    for row, image in enumerate(images):
        by_bytes[image.tobytes()].append(row)
    groups = [rows for rows in by_bytes.values() if len(rows) > 1]
    held_out = {PUBLIC_TEST, PRIVATE_TEST, "Test"}
    training_bytes = {images[row].tobytes() for row in range(len(images)) if usage[row] == TRAINING}
    return {
        "unique_images": len(by_bytes),
        "duplicate_rows": sum(len(rows) for rows in groups),
        "groups": len(groups),
        "conflicting_groups": sum(len({labels[r] for r in rows if labels[r] != UNLABELLED}) > 1
                                  for rows in groups),
        "cross_split_groups": sum(any(usage[r] == TRAINING for r in rows) and any(usage[r] in held_out
                                                                                   for r in rows)
                                  for rows in groups),
        "held_out_rows_in_training": {split: sum(1 for row in range(len(images)) if usage[row] == split
                                                 and images[row].tobytes() in training_bytes)
                                      for split in sorted(held_out) if split in set(usage.tolist())},
    }


def assert_matches_brute_force(stats: explore.DuplicateStats, images, labels, usage):
    expected = brute_force_duplicates(images, labels, usage)
    assert stats.unique_images == expected["unique_images"]
    assert stats.duplicate_rows == expected["duplicate_rows"]
    assert stats.redundant_rows == len(images) - expected["unique_images"]
    assert stats.groups == expected["groups"]
    assert stats.conflicting_groups == expected["conflicting_groups"]
    assert stats.cross_split_groups == expected["cross_split_groups"]
    assert stats.held_out_rows_in_training == expected["held_out_rows_in_training"]


# ------------------------------------------------------------------------ statistics


def test_class_counts_per_split_on_the_sample(sample):
    counts = explore.split_class_counts(sample.labels, sample.usage)
    assert list(counts) == [u for u in (TRAINING, PUBLIC_TEST, PRIVATE_TEST) if u in set(sample.usage)]
    for split, per_class in counts.items():
        in_split = sample.labels[sample.usage == split]
        assert per_class.tolist() == [int(np.sum(in_split == label)) for label in range(NUM_CLASSES)]
    assert sum(int(c.sum()) for c in counts.values()) == len(sample)


def test_counts_keep_unlabelled_rows_apart():
    labels = np.array([0, 0, 3, UNLABELLED, UNLABELLED])
    usage = np.array([TRAINING, TRAINING, TRAINING, "Test", "Test"])
    counts = explore.split_class_counts(labels, usage)
    assert counts[TRAINING].tolist() == [2, 0, 0, 1, 0, 0, 0]
    assert counts["Test"].tolist() == [0] * NUM_CLASSES
    assert explore.unlabelled_counts(labels, usage) == {TRAINING: 0, "Test": 2}


@pytest.mark.parametrize("counts, ratio", [
    ([3995, 436, 4097, 7215, 4830, 3171, 4965], 7215 / 436),
    ([10, 2, 5, 5, 5, 5, 5], 5.0),
    ([4, 4, 4, 4, 4, 4, 4], 1.0),
])
def test_imbalance_ratio(counts, ratio):
    assert explore.imbalance_ratio(np.array(counts)) == pytest.approx(ratio)


def test_imbalance_ratio_without_a_class_or_any_rows():
    assert math.isinf(explore.imbalance_ratio(np.array([3, 0, 1, 1, 1, 1, 1])))
    assert math.isnan(explore.imbalance_ratio(np.zeros(7, dtype=int)))
    assert explore.format_ratio(7215 / 436) == "16.55:1"


def test_planted_duplicates_are_counted():
    images, labels, usage = planted_arrays()
    stats = explore.duplicate_stats(images, labels, usage)
    assert stats.rows == 63
    assert stats.unique_images == 58
    assert stats.duplicate_rows == 9  # 2 + 2 + 3 + 2
    assert stats.redundant_rows == 5
    assert stats.groups == 4
    assert stats.conflicting_groups == 1
    assert stats.conflicting_rows == 2
    assert stats.cross_split_groups == 2
    assert stats.held_out_rows_in_training == {PUBLIC_TEST: 1, PRIVATE_TEST: 1}
    assert stats.within_split_groups == {TRAINING: 2, PUBLIC_TEST: 0, PRIVATE_TEST: 0}
    biggest = stats.largest[0]
    assert biggest.rows == (15, 16, 17) and biggest.usages == (TRAINING,) * 3 and not biggest.conflicting
    assert [len(group.rows) for group in stats.largest] == [3, 2, 2, 2]
    assert sum(group.conflicting for group in stats.largest) == 1
    assert_matches_brute_force(stats, images, labels, usage)


def test_conflicts_ignore_unlabelled_copies_and_blank_images_are_named():
    images = np.zeros((3, 48, 48), dtype=np.uint8)
    labels = np.array([2, UNLABELLED, 2])
    usage = np.array([TRAINING, "Test", TRAINING])
    stats = explore.duplicate_stats(images, labels, usage)
    assert (stats.groups, stats.conflicting_groups, stats.cross_split_groups) == (1, 0, 1)
    assert stats.held_out_rows_in_training == {"Test": 1}
    assert stats.largest[0].constant_value == 0


def test_no_duplicates_in_distinct_images():
    images, labels, usage = generated_fer_arrays(n_per_class_split=2, seed=3)
    stats = explore.duplicate_stats(images, labels, usage)
    assert (stats.duplicate_rows, stats.groups, stats.redundant_rows, stats.largest) == (0, 0, 0, ())


def test_duplicates_on_the_sample_match_a_brute_force_count(sample):
    stats = explore.duplicate_stats(sample.images, sample.labels, sample.usage)
    assert_matches_brute_force(stats, sample.images, sample.labels, sample.usage)


def test_pixel_stats_of_known_images():
    images = np.zeros((4, 48, 48), dtype=np.uint8)
    images[2:] = 255
    usage = np.array([TRAINING, TRAINING, PUBLIC_TEST, PUBLIC_TEST])
    stats = {name: explore.pixel_stats_from_histogram(h)
             for name, h in explore.split_pixel_histograms(images, usage).items()}
    assert (stats[TRAINING].mean, stats[TRAINING].std) == (0.0, 0.0)
    assert (stats[PUBLIC_TEST].mean, stats[PUBLIC_TEST].std) == (255.0, 0.0)
    assert stats["all"].pixels == 4 * 48 * 48
    assert stats["all"].mean == pytest.approx(127.5)
    assert stats["all"].std == pytest.approx(127.5)
    assert (stats["all"].mean_unit, stats["all"].std_unit) == (pytest.approx(0.5), pytest.approx(0.5))


def test_pixel_stats_on_the_sample_match_numpy(sample):
    result = explore.explore(sample)
    for name, stats in result.pixels.items():
        pixels = (sample.images if name == "all" else sample.images[sample.usage == name]).astype(np.float64)
        assert stats.pixels == pixels.size
        assert stats.mean == pytest.approx(pixels.mean(), rel=1e-12)
        assert stats.std == pytest.approx(pixels.std(), rel=1e-12)
        assert stats.mean_unit == pytest.approx((pixels / 255).mean(), rel=1e-12)
        assert stats.std_unit == pytest.approx((pixels / 255).std(), rel=1e-12)
    assert set(result.pixels) == {*set(sample.usage.tolist()), "all"}


def test_sample_indices_are_per_class_seeded_and_padded():
    labels = np.array([0] * 20 + [1] * 3 + [3] * 10)
    first = explore.sample_indices(labels, per_class=5, seed=7)
    assert first.shape == (NUM_CLASSES, 5)
    np.testing.assert_array_equal(first, explore.sample_indices(labels, per_class=5, seed=7))
    assert not np.array_equal(first, explore.sample_indices(labels, per_class=5, seed=8))
    for label in range(NUM_CLASSES):
        taken = first[label][first[label] >= 0]
        assert len(taken) == min(5, int(np.sum(labels == label)))
        assert len(set(taken.tolist())) == len(taken)
        assert np.all(labels[taken] == label)
    assert first[1].tolist()[3:] == [-1, -1]


def test_class_mean_faces():
    images = np.stack([np.full((48, 48), v, dtype=np.uint8) for v in (10, 20, 200)])
    means = explore.class_mean_faces(images, np.array([0, 0, 4]))
    assert means.shape == (NUM_CLASSES, 48, 48)
    assert np.all(means[0] == 15.0) and np.all(means[4] == 200.0)
    assert np.isnan(means[1]).all()


def test_report_states_the_planted_numbers():
    images, labels, usage = planted_arrays()
    data = FerData(images=images, labels=labels, usage=usage, source="planted.csv", fingerprint="ab" * 32)
    result = explore.explore(data)
    identity = explore.DataIdentity("planted.csv", "ab" * 32, False, "")
    text = explore.render_report(result, identity, "python -m fer_jax.explore --data planted.csv",
                                 TRAINING, seed=0, per_class=8)
    assert "| groups with conflicting labels | 1 (2 rows) |" in text
    assert "| groups across splits (Training and a test split) | 2 |" in text
    assert "| PublicTest rows whose image is also in Training | 1 |" in text
    assert "| rows whose image occurs more than once | 9 |" in text
    assert "Class imbalance on Training: **1.00:1**" in text
    assert "ab" * 32 in text and "SYNTHETIC" not in text


# ------------------------------------------------------------------------ the command


def assert_valid_png(path: pathlib.Path):
    assert path.stat().st_size > 5000, f"{path} is suspiciously small"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= 300


def test_command_writes_report_and_figures(fer_sample_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FER_JAX_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "report"
    assert explore_cli.main(["--data", str(fer_sample_path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert str(out / "report.md") in captured.out
    assert "drawing sample faces" in captured.err  # status messages go to stderr
    report = (out / "report.md").read_text()
    for name in explore.FIGURE_FILES:
        assert_valid_png(out / name)
        assert f"]({name})" in report  # linked relative to the report
    assert hashlib.sha256(fer_sample_path.read_bytes()).hexdigest() in report
    assert os.path.abspath(fer_sample_path) in report
    assert f"`python -m fer_jax.explore --data {fer_sample_path} --out {out}`" in report
    sample = read_fer(fer_sample_path)
    assert f"- rows: {len(sample):,}" in report
    training = np.bincount(sample.labels[sample.usage == TRAINING], minlength=NUM_CLASSES)
    row = "| Training | " + " | ".join(f"{c:,}" for c in training) + f" | {training.sum():,} |"
    assert row in report
    assert "SYNTHETIC" not in report


def test_command_without_data_explores_the_synthetic_set_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FER2013_PATH", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    out = tmp_path / "synthetic_report"
    assert explore_cli.main(["--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert SYNTHETIC_NOTICE in report
    assert "(synthetic)" in report
    assert "SYNTHETIC DATA" in capsys.readouterr().out
    for name in explore.FIGURE_FILES:
        assert_valid_png(out / name)


def test_command_on_unlabelled_rows_still_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_JAX_CACHE_DIR", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 256, (4, 2304))
    source = tmp_path / "test.csv"
    source.write_text("pixels\n" + "\n".join(" ".join(map(str, row)) for row in images) + "\n")
    out = tmp_path / "out"
    assert explore_cli.main(["--data", str(source), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "No labelled rows" in report
    assert "| Test | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 4 | 4 |" in report
    for name in explore.FIGURE_FILES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def run_command(capsys, monkeypatch, tmp_path: pathlib.Path, *args: str) -> tuple[int, str]:
    """The command as `python -m fer_jax.explore` runs it, in this process: (exit status, stderr)."""
    monkeypatch.setenv("FER_JAX_CACHE_DIR", str(tmp_path / "cache"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(explore_cli.main, list(args))
    return exit_.value.code, capsys.readouterr().err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_missing_file_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    missing = tmp_path / "no_such_fer2013.csv"
    status, err = run_command(capsys, monkeypatch, tmp_path, "--data", str(missing), "--out", str(tmp_path / "out"))
    assert status == 2
    # Progress lines come first; the one error line ends the output.
    assert error_lines(err) == [f"error: {missing}: no such file or folder"]
    assert err.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "out" / "report.md").exists()


def test_unwritable_output_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    source = write_kaggle_csv(tmp_path / "tiny.csv", *generated_fer_arrays(n_per_class_split=1))
    status, err = run_command(capsys, monkeypatch, tmp_path, "--data", str(source), "--out", str(blocker / "out"))
    assert status == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "output folder" in lines[0] and err.strip().endswith(lines[0])


# ------------------------------------------------------------------------ the real public file


@pytest.fixture(scope="module")
def public(fer_public_path) -> FerData:
    return read_fer(fer_public_path)


def test_public_counts_match_the_data_readme(public):
    counts = explore.split_class_counts(public.labels, public.usage)
    assert {split: c.tolist() for split, c in counts.items()} == README_COUNTS
    assert len(public) == 32298


def test_public_training_imbalance_is_16_55(public):
    result = explore.explore(public)
    assert result.imbalance_split == TRAINING
    assert round(result.imbalance, 2) == 16.55
    assert CLASS_NAMES[int(np.argmax(result.counts[TRAINING]))] == "happy"


def test_public_duplicates_match_a_brute_force_count(public):
    stats = explore.duplicate_stats(public.images, public.labels, public.usage)
    assert_matches_brute_force(stats, public.images, public.labels, public.usage)
    assert stats.groups > 0 and stats.cross_split_groups > 0 and stats.conflicting_groups > 0
