"""Ensembles: the (weighted) mean of several checkpoints' class probabilities, each
member with its own model and normalization, and the scores of members and ensemble."""
from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Callable, Sequence

import numpy as np

from fer_jax.errors import UserError
from fer_jax.inference.loading import load_model
from fer_jax.inference.scoring import score
from fer_jax.data.tta import check_tta, probabilities_with_tta

MAX_SEARCH_MEMBERS = 12


@dataclasses.dataclass(frozen=True)
class Member:
    """One restored checkpoint: `info` describes it, `probabilities(images, tta)` runs it."""

    info: dict
    probabilities: Callable[[np.ndarray, str], np.ndarray]


def load_member(checkpoint: str | pathlib.Path, batch_size: int = 256, name: str | None = None) -> Member:
    """A checkpoint as an ensemble member (its model is loaded once); NAME (default: the
    checkpoint as given) is how tables and reports call it."""
    loaded = load_model(checkpoint)
    classifier = loaded.classifier(batch_size)
    meta = loaded.meta
    config = meta.get("config") or {}
    split = config.get("data") or {}
    info = {"name": name or str(checkpoint), "checkpoint": str(checkpoint), "step_dir": str(loaded.step_dir),
            "model": loaded.config.model, "experiment": config.get("experiment", ""),
            "synthetic": bool(meta.get("synthetic") or (meta.get("data") or {}).get("name") == "fer_synthetic"),
            # What held-out selection needs to know: which rows the member never trained on.
            "split_scheme": split.get("split_scheme", "official"), "split_seed": split.get("split_seed"),
            "val_fraction": split.get("val_fraction"),
            "data_fingerprint": (meta.get("data") or {}).get("fingerprint")}
    return Member(info, lambda images, tta: probabilities_with_tta(classifier, images, tta))


def member_probabilities(checkpoint: str | pathlib.Path, images: np.ndarray, tta: str = "none",
                         batch_size: int = 256) -> np.ndarray:
    """(N, 7) probabilities of one checkpoint for uint8 (N, 48, 48) faces, normalized
    as that checkpoint was trained."""
    return load_member(checkpoint, batch_size).probabilities(images, tta)


def ensemble_probabilities(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None
                           ) -> np.ndarray:
    """The (weighted) mean of the members' (N, C) probabilities; weights need not sum to 1."""
    if len(probabilities) == 0:
        raise ValueError("an ensemble needs at least one member")
    stacked = np.stack([np.asarray(p, np.float64) for p in probabilities])  # raises on ragged shapes
    if stacked.ndim != 3:
        raise ValueError(f"expected (N, C) probabilities per member, got {stacked.shape[1:]}")
    if weights is None:
        weights = np.ones(len(probabilities))
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(probabilities),) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"expected {len(probabilities)} non-negative weights with a positive sum, "
                         f"got {weights.tolist()}")
    return (np.tensordot(weights / weights.sum(), stacked, axes=1)).astype(np.float32)


def check_weight_values(weights: Sequence[float]) -> None:
    """Averaging weights must be non-negative with a positive sum."""
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError("weights must be non-negative with a positive sum")


def check_weights(weights: Sequence[float] | None, count: int) -> None:
    """One non-negative weight per member with a positive sum (None: equal weights)."""
    if weights is None:
        return
    if len(weights) != count:
        raise UserError(f"{len(weights)} weights for {count} checkpoints")
    check_weight_values(weights)


def evaluate_members(members: Sequence[Member], images: np.ndarray, labels: np.ndarray, tta: str = "none",
                     weights: Sequence[float] | None = None) -> dict:
    """Every loaded member's and the ensemble's metrics on labelled faces (see evaluate_ensemble)."""
    check_tta(tta)
    check_weights(weights, len(members))
    rows, all_probs = [], []
    for member in members:
        probs = member.probabilities(images, tta)
        all_probs.append(probs)
        rows.append({**member.info, **score(labels, probs)})
    ensemble = score(labels, ensemble_probabilities(all_probs, weights))
    return {"members": rows, "ensemble": ensemble, "tta": tta,
            "weights": list(weights) if weights is not None else None, "probabilities": all_probs}


def evaluate_ensemble(checkpoints: Sequence[str | pathlib.Path], images: np.ndarray, labels: np.ndarray,
                      tta: str = "none", weights: Sequence[float] | None = None,
                      batch_size: int = 256, names: Sequence[str] | None = None) -> dict:
    """Every member's and the ensemble's metrics on labelled faces:
    {"members": [{name, checkpoint, step_dir, model, experiment, synthetic, ..., **metrics}],
     "ensemble": metrics, "tta", "weights", "probabilities": [(N, 7) per member]}."""
    check_tta(tta)  # an unknown mode or wrong weights fail before any model is loaded
    check_weights(weights, len(checkpoints))
    names = list(names) if names is not None else [None] * len(checkpoints)
    members = [load_member(c, batch_size, n) for c, n in zip(checkpoints, names)]
    return evaluate_members(members, images, labels, tta, weights)


def subset_search(probabilities: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str],
                  min_size: int = 2) -> list[dict]:
    """Every subset of MIN_SIZE or more members, probabilities averaged with equal weights,
    best accuracy first, then fewer members, then the members' order:
    [{"members": [...], "accuracy", "macro_f1"}]."""
    if len(names) > MAX_SEARCH_MEMBERS:
        raise UserError(f"--search over {len(names)} checkpoints would score {2 ** len(names)} subsets; "
                        f"give at most {MAX_SEARCH_MEMBERS}")
    rows = []
    for size in range(min_size, len(names) + 1):
        for combo in itertools.combinations(range(len(names)), size):
            s = score(labels, ensemble_probabilities([probabilities[i] for i in combo]))
            rows.append({"members": [names[i] for i in combo], "accuracy": s["accuracy"],
                         "macro_f1": s["macro_f1"]})
    rows.sort(key=lambda r: (-r["accuracy"], len(r["members"])))
    return rows


def format_table(result: dict) -> str:
    """Members, then the ensemble: accuracy and macro-F1 per row."""
    names = [f"{m.get('name') or m['checkpoint']} ({m['model']})" for m in result["members"]]
    weights = result.get("weights")
    ensemble_name = f"ensemble of {len(names)} (tta={result['tta']}" + (
        f", weights {' '.join(f'{w:g}' for w in weights)})" if weights else ")")
    width = max(len(n) for n in names + [ensemble_name, "member"]) + 2
    lines = [f"{'member':<{width}}{'accuracy':>10}{'macro_f1':>10}"]
    for name, member in zip(names, result["members"]):
        lines.append(f"{name:<{width}}{member['accuracy']:>10.4f}{member['macro_f1']:>10.4f}")
    e = result["ensemble"]
    lines.append(f"{ensemble_name:<{width}}{e['accuracy']:>10.4f}{e['macro_f1']:>10.4f}")
    return "\n".join(lines)
