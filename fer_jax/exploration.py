"""Exploration of a FER2013 source: rows per class and split, class imbalance, exact
duplicate images (conflicting labels, Training images repeated in a test split),
pixel statistics, and figures (class distribution, sample faces, mean faces,
pixel histogram), and the report.md that shows them (`python -m fer_jax.explore`).
Without data (no path, $FER2013_PATH or TFDS manual copy) the built-in synthetic set
is explored, and the report says so.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Callable, Sequence

import numpy as np

from fer_jax import explore_figures as figures
from fer_jax.data.cache import load_fer_cached
from fer_jax.data.source import locate_data
from fer_jax.data.splits import duplicate_groups
from fer_jax.data.synthetic import SYNTHETIC_NOTICE, make_synthetic
from fer_jax.data.types import (CLASS_NAMES, NUM_CLASSES, PRIVATE_TEST, PUBLIC_TEST, TEST,
                                TRAINING, UNLABELLED, USAGES, FerData)
from fer_jax.errors import UserError

DEFAULT_OUT = pathlib.Path("reports") / "explore"
FIGURE_FILES = ("class_distribution.png", "sample_faces.png", "mean_faces.png", "pixel_histogram.png")
# Splits that are held out from training: a Training image repeated in one of them leaks.
HELD_OUT_USAGES = (PUBLIC_TEST, PRIVATE_TEST, TEST)


# ------------------------------------------------------------------------ statistics


def present_usages(usage: np.ndarray) -> tuple[str, ...]:
    """The splits that occur in USAGE, in USAGES order."""
    found = set(np.unique(usage).tolist())
    return tuple(name for name in USAGES if name in found)


def split_class_counts(labels: np.ndarray, usage: np.ndarray) -> dict[str, np.ndarray]:
    """Per split present (USAGES order): labelled rows per class, int64 (NUM_CLASSES,)."""
    counts = {}
    for name in present_usages(usage):
        chosen = labels[(usage == name) & (labels != UNLABELLED)]
        counts[name] = np.bincount(chosen, minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.int64)
    return counts


def unlabelled_counts(labels: np.ndarray, usage: np.ndarray) -> dict[str, int]:
    """Per split present: rows without a label (only test.csv has such rows)."""
    return {name: int(np.sum((usage == name) & (labels == UNLABELLED))) for name in present_usages(usage)}


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class count over smallest; inf when a class has no rows, nan when none has any."""
    counts = np.asarray(counts)
    if counts.size == 0 or counts.max() == 0:
        return math.nan
    if counts.min() == 0:
        return math.inf
    return float(counts.max() / counts.min())


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
    """One set of rows holding the same image."""

    rows: tuple[int, ...]  # 0-based row indices into the data
    labels: tuple[int, ...]
    usages: tuple[str, ...]
    constant_value: int | None  # the pixel value when the image is blank (one value), else None

    @property
    def conflicting(self) -> bool:
        return len({label for label in self.labels if label != UNLABELLED}) > 1


@dataclasses.dataclass(frozen=True)
class DuplicateStats:
    """Exact duplicate images (identical bytes) in one data set."""

    rows: int  # all rows
    unique_images: int
    duplicate_rows: int  # rows whose image occurs in at least one other row
    redundant_rows: int  # rows beyond the first of each image: rows - unique_images
    groups: int  # images that occur more than once
    conflicting_groups: int  # groups whose labelled rows carry more than one label
    conflicting_rows: int  # rows in those groups
    cross_split_groups: int  # groups with a Training row and a held-out (test) row
    # Per held-out split present: its rows whose image is also a Training row.
    held_out_rows_in_training: dict[str, int]
    within_split_groups: dict[str, int]  # per split: groups with more than one row in that split
    largest: tuple[DuplicateGroup, ...]  # the biggest groups, biggest first


def duplicate_stats(images: np.ndarray, labels: np.ndarray, usage: np.ndarray,
                    largest: int = 5) -> DuplicateStats:
    """Counts exact duplicates (see DuplicateStats); LARGEST biggest groups are kept for the report."""
    n = len(images)
    groups = duplicate_groups(images)
    n_groups = int(groups.max()) + 1 if n else 0
    sizes = np.bincount(groups, minlength=n_groups)
    repeated = sizes > 1

    labelled = labels != UNLABELLED
    # Distinct labels per group: count distinct (group, label) pairs among labelled rows.
    pairs = np.unique(groups[labelled] * NUM_CLASSES + labels[labelled])
    distinct_labels = np.bincount(pairs // NUM_CLASSES, minlength=n_groups)
    conflicting = distinct_labels > 1

    def rows_per_group(mask: np.ndarray) -> np.ndarray:
        return np.bincount(groups[mask], minlength=n_groups)

    in_training = rows_per_group(usage == TRAINING)
    in_held_out = rows_per_group(np.isin(usage, HELD_OUT_USAGES))
    held_out_rows = {name: int(np.sum((usage == name) & (in_training[groups] > 0)))
                     for name in present_usages(usage) if name in HELD_OUT_USAGES}
    within = {name: int(np.sum(rows_per_group(usage == name) > 1)) for name in present_usages(usage)}

    order = np.argsort(-sizes, kind="stable")
    biggest = [int(g) for g in order[:largest] if sizes[g] > 1]
    return DuplicateStats(
        rows=n,
        unique_images=n_groups,
        duplicate_rows=int(sizes[repeated].sum()),
        redundant_rows=n - n_groups,
        groups=int(repeated.sum()),
        conflicting_groups=int(conflicting.sum()),
        conflicting_rows=int(sizes[conflicting].sum()),
        cross_split_groups=int(np.sum((in_training > 0) & (in_held_out > 0))),
        held_out_rows_in_training=held_out_rows,
        within_split_groups=within,
        largest=tuple(_describe_group(images, labels, usage, np.flatnonzero(groups == g)) for g in biggest),
    )


def _describe_group(images: np.ndarray, labels: np.ndarray, usage: np.ndarray,
                    rows: np.ndarray) -> DuplicateGroup:
    image = images[rows[0]]
    constant = int(image.flat[0]) if image.min() == image.max() else None
    return DuplicateGroup(rows=tuple(int(r) for r in rows), labels=tuple(int(labels[r]) for r in rows),
                          usages=tuple(str(usage[r]) for r in rows), constant_value=constant)


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """Number of pixels at each value 0-255, int64 (256,)."""
    return np.bincount(np.asarray(images, dtype=np.uint8).reshape(-1), minlength=256).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class PixelStats:
    """Mean and (population) standard deviation of all pixels, on the 0-255 scale."""

    pixels: int
    mean: float
    std: float

    @property
    def mean_unit(self) -> float:
        """The mean on the 0-1 scale (pixel / 255), as models see it."""
        return self.mean / 255.0

    @property
    def std_unit(self) -> float:
        return self.std / 255.0


def pixel_stats_from_histogram(histogram: np.ndarray) -> PixelStats:
    """Exact mean and std from a 256-bin histogram (no float copy of the images)."""
    histogram = np.asarray(histogram, dtype=np.float64)
    total = histogram.sum()
    if total == 0:
        return PixelStats(0, math.nan, math.nan)
    values = np.arange(256, dtype=np.float64)
    mean = float((histogram * values).sum() / total)
    var = float((histogram * (values - mean) ** 2).sum() / total)
    return PixelStats(int(total), mean, math.sqrt(var))


def split_pixel_histograms(images: np.ndarray, usage: np.ndarray) -> dict[str, np.ndarray]:
    """Per split present, then "all": pixel_histogram of its rows."""
    histograms = {name: pixel_histogram(images[usage == name]) for name in present_usages(usage)}
    histograms["all"] = sum(histograms.values(), np.zeros(256, dtype=np.int64))
    return histograms


def reference_rows(data: FerData) -> tuple[np.ndarray, str]:
    """Rows the per-class figures draw from: labelled Training rows, else every labelled row."""
    labelled = data.labels != UNLABELLED
    training = labelled & (data.usage == TRAINING)
    if training.any():
        return np.flatnonzero(training), TRAINING
    return np.flatnonzero(labelled), "all labelled rows"


def sample_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """(NUM_CLASSES, per_class) row indices drawn without replacement per class, -1 where a
    class has fewer rows; the same seed gives the same draw."""
    rng = np.random.default_rng(seed)
    chosen = np.full((NUM_CLASSES, per_class), -1, dtype=np.int64)
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        take = rng.choice(members, size=min(per_class, len(members)), replace=False)
        chosen[label, :len(take)] = np.sort(take)
    return chosen


def class_mean_faces(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(NUM_CLASSES, H, W) float64 mean image per class on the 0-255 scale; NaN for an absent class."""
    means = np.full((NUM_CLASSES,) + images.shape[1:], np.nan)
    for label in range(NUM_CLASSES):
        members = images[labels == label]
        if len(members):
            means[label] = members.mean(axis=0, dtype=np.float64)
    return means


@dataclasses.dataclass(frozen=True)
class Exploration:
    """Everything the report states about one data set."""

    counts: dict[str, np.ndarray]
    unlabelled: dict[str, int]
    imbalance_split: str
    imbalance: float
    duplicates: DuplicateStats
    pixels: dict[str, PixelStats]
    histograms: dict[str, np.ndarray]


def explore(data: FerData) -> Exploration:
    """The statistics of DATA (figures aside)."""
    counts = split_class_counts(data.labels, data.usage)
    if TRAINING in counts:
        imbalance_split, imbalance_counts = TRAINING, counts[TRAINING]
    else:
        imbalance_split = "all labelled rows"
        imbalance_counts = sum(counts.values(), np.zeros(NUM_CLASSES, dtype=np.int64))
    histograms = split_pixel_histograms(data.images, data.usage)
    return Exploration(
        counts=counts,
        unlabelled=unlabelled_counts(data.labels, data.usage),
        imbalance_split=imbalance_split,
        imbalance=imbalance_ratio(imbalance_counts),
        duplicates=duplicate_stats(data.images, data.labels, data.usage),
        pixels={name: pixel_stats_from_histogram(h) for name, h in histograms.items()},
        histograms=histograms,
    )


# ------------------------------------------------------------------------ report


@dataclasses.dataclass(frozen=True)
class DataIdentity:
    """Which data was read, for the report's header."""

    source: str
    fingerprint: str
    synthetic: bool
    notice: str


def format_ratio(ratio: float) -> str:
    if math.isnan(ratio):
        return "n/a (no labelled rows)"
    if math.isinf(ratio):
        return "infinite (a class has no rows)"
    return f"{ratio:.2f}:1"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _counts_section(result: Exploration) -> list[str]:
    show_unlabelled = any(result.unlabelled.values())
    header = ["split", *CLASS_NAMES, "total"] + (["unlabelled"] if show_unlabelled else [])
    rows = []
    for name, counts in result.counts.items():
        row = [name, *(f"{c:,}" for c in counts), f"{counts.sum() + result.unlabelled[name]:,}"]
        rows.append(row + ([f"{result.unlabelled[name]:,}"] if show_unlabelled else []))
    overall = sum(result.counts.values(), np.zeros(NUM_CLASSES, dtype=np.int64))
    all_unlabelled = sum(result.unlabelled.values())
    rows.append(["**all**", *(f"{c:,}" for c in overall), f"**{overall.sum() + all_unlabelled:,}**"]
                + ([f"{all_unlabelled:,}"] if show_unlabelled else []))
    lines = ["## Rows per class and split", ""] + _table(header, rows) + [""]
    counts = result.counts.get(TRAINING, overall)
    if counts.max() > 0:
        big, small = int(np.argmax(counts)), int(np.argmin(counts))
        lines.append(f"Class imbalance on {result.imbalance_split}: **{format_ratio(result.imbalance)}** "
                     f"(largest class {CLASS_NAMES[big]} {counts[big]:,} / smallest "
                     f"{CLASS_NAMES[small]} {counts[small]:,}).")
        shares = ", ".join(f"{name} {c / counts.sum():.1%}" for name, c in zip(CLASS_NAMES, counts))
        lines += ["", f"Class shares on {result.imbalance_split}: {shares}."]
    else:
        lines.append("No labelled rows: no class imbalance to report.")
    return lines + [""]


def _duplicates_section(result: Exploration) -> list[str]:
    d = result.duplicates
    lines = ["## Exact duplicate images", "",
             "Rows are duplicates when their 48x48 pixels are byte-identical.", ""]
    rows = [
        ["rows", f"{d.rows:,}"],
        ["distinct images", f"{d.unique_images:,}"],
        ["rows whose image occurs more than once", f"{d.duplicate_rows:,}"],
        ["redundant copies (rows - distinct images)", f"{d.redundant_rows:,}"],
        ["duplicate groups (images occurring more than once)", f"{d.groups:,}"],
        ["groups with conflicting labels", f"{d.conflicting_groups:,} ({d.conflicting_rows:,} rows)"],
        ["groups across splits (Training and a test split)", f"{d.cross_split_groups:,}"],
    ]
    for name, count in d.held_out_rows_in_training.items():
        rows.append([f"{name} rows whose image is also in Training", f"{count:,}"])
    for name, count in d.within_split_groups.items():
        rows.append([f"groups with 2+ rows inside {name}", f"{count:,}"])
    lines += _table(["what", "count"], rows) + [""]
    if d.largest:
        lines += ["Largest groups (rows are 0-based positions in the data as read; "
                  "in a CSV source, line = row + 2):", ""]
        group_rows = []
        for group in d.largest:
            labels = ", ".join(f"{CLASS_NAMES[label]} {group.labels.count(label)}"
                               for label in sorted(set(group.labels)) if label != UNLABELLED)
            splits = ", ".join(f"{name} {group.usages.count(name)}" for name in USAGES if name in group.usages)
            what = (f"blank (every pixel {group.constant_value})" if group.constant_value is not None
                    else "face")
            shown = ", ".join(map(str, group.rows[:6])) + (", ..." if len(group.rows) > 6 else "")
            group_rows.append([len(group.rows), what, labels or "unlabelled", splits, shown])
        lines += _table(["rows", "image", "labels", "splits", "first rows"], group_rows) + [""]
    return lines


def _pixels_section(result: Exploration) -> list[str]:
    rows = [[name if name != "all" else "**all**", f"{p.pixels:,}", f"{p.mean:.2f}", f"{p.std:.2f}",
             f"{p.mean_unit:.4f}", f"{p.std_unit:.4f}"] for name, p in result.pixels.items()]
    lines = ["## Pixel statistics", "",
             "Mean and standard deviation over every pixel of the split's images (population std).", ""]
    return lines + _table(["split", "pixels", "mean (0-255)", "std (0-255)", "mean (0-1)", "std (0-1)"],
                          rows) + [""]


def _figures_section(reference: str, seed: int, per_class: int) -> list[str]:
    return [
        "## Figures", "",
        "### Class distribution per split", "", "![class distribution](class_distribution.png)", "",
        f"### Sample faces per class ({reference}, {per_class} per class, seed {seed})", "",
        "![sample faces](sample_faces.png)", "",
        f"### Mean face per class ({reference})", "",
        "Top: the mean image of each class. Bottom: its difference from the mean of all classes "
        "(red brighter, blue darker).", "", "![mean faces](mean_faces.png)", "",
        "### Pixel intensity histogram", "", "![pixel histogram](pixel_histogram.png)", "",
    ]


def render_report(result: Exploration, identity: DataIdentity, command: str, reference: str,
                  seed: int, per_class: int) -> str:
    """The report's markdown; figures are linked by file name (they sit beside it)."""
    lines = ["# FER2013 data exploration", ""]
    if identity.synthetic:
        lines += [f"> **{identity.notice}**", ">",
                  "> No FER2013 file was given or found, so every number below describes the built-in "
                  "synthetic set, not FER2013.", ""]
    total = result.duplicates.rows
    lines += [f"- data: `{identity.source}`" + (" (synthetic)" if identity.synthetic else ""),
              f"- sha256 fingerprint: `{identity.fingerprint}`"
              + (" (of the generator settings)" if identity.synthetic else ""),
              f"- rows: {total:,}",
              f"- made by: `{command}`", ""]
    lines += _counts_section(result)
    lines += _duplicates_section(result)
    lines += _pixels_section(result)
    lines += _figures_section(reference, seed, per_class)
    return "\n".join(lines)


# ------------------------------------------------------------------------ data and figures


def load_data(path: str | None, *, skip_bad_rows: bool = False) -> tuple[FerData, DataIdentity]:
    """The data PATH (or $FER2013_PATH, or the TFDS manual copy) names, else the synthetic set."""
    source = locate_data(path)
    if source is None:
        data = make_synthetic()
        return data, DataIdentity(data.source, data.fingerprint, True, SYNTHETIC_NOTICE)
    data = load_fer_cached(source, skip_bad_rows=skip_bad_rows)
    return data, DataIdentity(os.path.abspath(source), data.fingerprint, False, "")


def prepare_out(out: pathlib.Path) -> None:
    """OUT exists and is writable; UserError otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create the output folder: {err.strerror or err}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"{out}: the output folder is not writable")


def draw_figures(data: FerData, result: Exploration, out: pathlib.Path, *, seed: int, per_class: int,
                 on_step: Callable[[str], None] = lambda what: None) -> None:
    """OUT/FIGURE_FILES; on_step(what) is called before each figure is drawn."""
    rows, reference = reference_rows(data)
    images, labels = data.images[rows], data.labels[rows]
    steps = [
        ("class distribution", lambda path: figures.class_distribution_figure(result.counts, path)),
        ("sample faces", lambda path: figures.sample_faces_figure(
            images, labels, sample_indices(labels, per_class, seed), path,
            title=f"Sample faces per class ({reference}, seed {seed})")),
        ("mean faces", lambda path: figures.mean_faces_figure(
            class_mean_faces(images, labels), np.bincount(labels, minlength=NUM_CLASSES), path,
            title=f"Mean face per class ({reference})")),
        ("pixel histogram", lambda path: figures.pixel_histogram_figure(result.histograms, result.pixels, path)),
    ]
    for (what, draw), name in zip(steps, FIGURE_FILES):
        on_step(what)
        draw(out / name)
