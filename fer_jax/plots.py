"""Figures people would rather look at than read (matplotlib, no display needed)."""
from __future__ import annotations

import dataclasses
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_jax.data.types import CLASS_NAMES  # noqa: E402


def save_figure(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Writes FIG to PATH (creating its folder) and closes it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix_figure(confusion, path: str | pathlib.Path, title: str = "confusion matrix") -> pathlib.Path:
    """Row-normalized colours (recall per class) with the raw counts written in each cell."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    im = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            ax.text(j, i, f"{int(confusion[i, j])}\n{normalized[i, j]:.0%}", ha="center", va="center",
                    fontsize=7, color="white" if normalized[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


@dataclasses.dataclass(frozen=True, eq=False)
class FaceCell:
    """One tile of a face grid: a uint8 48x48 face, optionally a [0, 1] heat map over it."""

    face: np.ndarray
    overlay: np.ndarray | None = None
    caption: str = ""
    caption_color: str = "black"


def face_grid_figure(cells, path: str | pathlib.Path, *, title: str = "",
                     row_labels=None, col_labels=None, overlay_label: str | None = None,
                     overlay_alpha: float = 0.5, empty_text: str = "none") -> pathlib.Path:
    """A grid of faces (rows of FaceCell or None for an empty slot), each captioned,
    heat maps drawn in 'jet' over the grey face on a fixed 0-1 scale (one colour bar)."""
    rows, cols = len(cells), max(len(row) for row in cells)
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols + 1.2, 1.55 * rows + 0.9), dpi=110,
                             squeeze=False)
    heat = None
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = cells[r][c] if c < len(cells[r]) else None
            if cell is None:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=7, color="0.6",
                        transform=ax.transAxes)
            else:
                ax.imshow(cell.face, cmap="gray", vmin=0, vmax=255)
                if cell.overlay is not None:
                    heat = ax.imshow(cell.overlay, cmap="jet", vmin=0, vmax=1, alpha=overlay_alpha)
                ax.set_title(cell.caption, fontsize=7, color=cell.caption_color, pad=2)
            if row_labels is not None and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
            if col_labels is not None and r == 0 and col_labels[c]:
                ax.annotate(col_labels[c], xy=(0.5, 1.22), xycoords="axes fraction", ha="center",
                            va="bottom", fontsize=8, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93 if heat is not None else 1, 1))
    if heat is not None:
        bar = fig.add_axes((0.94, 0.15, 0.015, 0.7))
        fig.colorbar(heat, cax=bar, label=overlay_label or "")
    return save_figure(fig, path)


def accuracy_curves_figure(curves: dict, path: str | pathlib.Path, *, title: str = "",
                           targets: tuple = (), x_label: str = "wall-clock minutes") -> pathlib.Path:
    """Validation accuracy against time, one line per run. CURVES maps a label to
    (minutes, accuracies); TARGETS is a sequence of (minutes, accuracy, label) marks."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for label, (minutes, accuracies) in curves.items():
        ax.plot(minutes, np.asarray(accuracies) * 100, marker="o", markersize=3, label=label)
    for minutes, accuracy, label in targets:
        ax.plot([minutes], [accuracy * 100], marker="*", markersize=12, color="black", linestyle="none")
        ax.annotate(label, (minutes, accuracy * 100), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
