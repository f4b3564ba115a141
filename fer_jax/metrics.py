"""Classification metrics from a confusion matrix (rows: true class, columns: predicted)."""
from __future__ import annotations

import numpy as np

from fer_jax.data.types import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """int64 (7, 7) counts: rows the true class, columns the predicted one."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (np.asarray(labels), np.asarray(predictions)), 1)
    return confusion


def summarize_confusion(confusion: np.ndarray) -> dict:
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "count": int(total),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(CLASS_NAMES)},
        "confusion_matrix": confusion.astype(np.int64).tolist(),
    }


def format_report(summary: dict) -> str:
    """The per-class table and confusion matrix as plain text."""
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in summary["per_class"].items():
        lines.append(f"{name:<10}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                     f"{row['support']:>10d}")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * 10 + "".join(f"{name[:8]:>9}" for name in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, summary["confusion_matrix"]):
        lines.append(f"{name:<10}" + "".join(f"{v:>9d}" for v in row))
    return "\n".join(lines)
