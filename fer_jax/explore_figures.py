"""The exploration report's figures (matplotlib, no display needed); each writes one PNG."""
from __future__ import annotations

import pathlib
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_jax.data.types import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from fer_jax.plots import save_figure  # noqa: E402

# One colour per split, the same in every figure.
SPLIT_COLOURS = {"Training": "tab:blue", "PublicTest": "tab:orange", "PrivateTest": "tab:green",
                 "Test": "tab:red", "all": "black"}


def class_distribution_figure(counts: Mapping[str, np.ndarray], path: str | pathlib.Path) -> pathlib.Path:
    """Left: rows per class, one bar per split (counts written on the bars).
    Right: each class's share within its split, which shows whether splits are alike."""
    names = list(counts)
    fig, (ax_counts, ax_share) = plt.subplots(1, 2, figsize=(14, 5), dpi=110)
    x = np.arange(NUM_CLASSES)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * width
        split_counts = np.asarray(counts[name])
        bars = ax_counts.bar(x + offset, split_counts, width, label=f"{name} ({split_counts.sum():,})",
                             color=SPLIT_COLOURS.get(name))
        ax_counts.bar_label(bars, labels=[f"{c:,}" for c in split_counts], fontsize=8, padding=2,
                            rotation=90 if len(names) > 2 else 0)
        total = split_counts.sum()
        share = split_counts / total if total else np.zeros(NUM_CLASSES)
        ax_share.bar(x + offset, 100 * share, width, label=name, color=SPLIT_COLOURS.get(name))
    for ax in (ax_counts, ax_share):
        ax.set_xticks(x, CLASS_NAMES)
        ax.set_xlabel("class")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    ax_counts.set_ylabel("rows")
    ax_counts.set_title("Rows per class and split")
    ax_counts.margins(y=0.15)  # room for the count labels above the tallest bar
    ax_counts.legend(title="split (rows)")
    ax_share.set_ylabel("share of the split's rows (%)")
    ax_share.set_title("Class share within each split")
    ax_share.legend(title="split")
    fig.tight_layout()
    return save_figure(fig, path)


def sample_faces_figure(images: np.ndarray, labels: np.ndarray, chosen: np.ndarray,
                        path: str | pathlib.Path, title: str = "Sample faces per class") -> pathlib.Path:
    """A grid: one row per class, CHOSEN[class] row indices into IMAGES (-1 leaves a cell empty)."""
    n_classes, per_class = chosen.shape
    class_sizes = np.bincount(labels, minlength=NUM_CLASSES)
    fig, axes = plt.subplots(n_classes, per_class, figsize=(1.15 * per_class + 1.3, 1.2 * n_classes + 0.6),
                             dpi=110, squeeze=False)
    for label in range(n_classes):
        for col in range(per_class):
            ax = axes[label, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            row = chosen[label, col]
            if row >= 0:
                ax.imshow(images[row], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[label, 0].set_ylabel(f"{CLASS_NAMES[label]}\n({class_sizes[label]:,})", rotation=0,
                                  ha="right", va="center", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def mean_faces_figure(means: np.ndarray, class_sizes: np.ndarray, path: str | pathlib.Path,
                      title: str = "Mean face per class") -> pathlib.Path:
    """Top row: each class's mean image (one grey scale for all). Bottom row: the class mean
    minus the mean over all rows, on one symmetric scale, so what sets classes apart shows."""
    present = ~np.isnan(means).all(axis=(1, 2))
    weights = np.asarray(class_sizes, dtype=np.float64)
    overall = np.einsum("c,chw->hw", weights[present], means[present]) / weights[present].sum() \
        if present.any() else np.zeros(means.shape[1:])
    difference = means - overall
    low, high = (np.nanmin(means), np.nanmax(means)) if present.any() else (0.0, 255.0)
    spread = float(np.nanmax(np.abs(difference))) if present.any() else 1.0
    fig, axes = plt.subplots(2, NUM_CLASSES, figsize=(1.9 * NUM_CLASSES + 1.0, 4.8), dpi=110, squeeze=False)
    for label in range(NUM_CLASSES):
        top, bottom = axes[0, label], axes[1, label]
        top.set_title(f"{CLASS_NAMES[label]}\n(n={class_sizes[label]:,})", fontsize=10)
        if present[label]:
            face = top.imshow(means[label], cmap="gray", vmin=low, vmax=high)
            diff = bottom.imshow(difference[label], cmap="RdBu_r", vmin=-spread, vmax=spread)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("mean", fontsize=10)
    axes[1, 0].set_ylabel("minus overall mean", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    if present.any():
        fig.colorbar(face, cax=fig.add_axes((0.93, 0.53, 0.012, 0.33)), label="pixel (0-255)")
        fig.colorbar(diff, cax=fig.add_axes((0.93, 0.08, 0.012, 0.33)), label="difference")
    return save_figure(fig, path)


def pixel_histogram_figure(histograms: Mapping[str, np.ndarray], stats: Mapping[str, object],
                           path: str | pathlib.Path) -> pathlib.Path:
    """Share of pixels at each value per split (splits of different size compare directly),
    with each split's mean as a dashed line. STATS maps split -> PixelStats."""
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    values = np.arange(256)
    # "all" first, wide and pale, so that the splits drawn over it stay visible.
    for name in sorted(histograms, key=lambda name: name != "all"):
        histogram = histograms[name]
        total = histogram.sum()
        if not total:
            continue
        colour = "0.75" if name == "all" else SPLIT_COLOURS.get(name)
        mean, std = stats[name].mean, stats[name].std
        ax.plot(values, 100 * histogram / total, color=colour, lw=5 if name == "all" else 1.3,
                label=f"{name}: mean {mean:.1f}, std {std:.1f}")
        ax.axvline(mean, color=colour, ls="--", lw=0.8, alpha=0.7)
    ax.set_xlim(0, 255)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("pixel value (0 = black, 255 = white)")
    ax.set_ylabel("share of pixels (%)")
    ax.set_title("Pixel intensity distribution per split (dashed: mean)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
