"""python -m fer_jax.ensemble --checkpoints A B ... --data PATH [--split PublicTest] [--tta none|flip|flip_crops] [--out DIR]

Averages the class probabilities of several checkpoints (each with its own model and
normalization) and reports every member's accuracy and macro-F1 beside the ensemble's.

Test-time augmentation (each member's probabilities are the mean over the views):
  none        the face as it is (1 view);
  flip        the face and its mirror image (2 views);
  flip_crops  the face and its mirror, each whole and shifted 2 pixels towards each
              of the four corners, the uncovered border filled by repeating the edge
              pixels (10 views: a ten-crop that keeps the 48x48 scale the models
              were trained at, like the translation augmentation does).
"""
from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

from fer_jax.cli_common import quiet_tensorflow
from fer_jax.data.types import NUM_CLASSES
from fer_jax.errors import UserError, run_cli

TTA_MODES = ("none", "flip", "flip_crops")
SPLITS = ("PublicTest", "PrivateTest", "Training", "all")
CROP_SHIFT = 2


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 (N, H, W) moved by (dy, dx) pixels, the uncovered border repeating the edge."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return images
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = images.shape[1:]
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def tta_views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """The views of uint8 (N, 48, 48) faces that a TTA mode averages over."""
    if tta not in TTA_MODES:
        raise UserError(f"unknown --tta {tta!r}; valid: {', '.join(TTA_MODES)}")
    if tta == "none":
        return [images]
    mirrored = images[:, :, ::-1]
    if tta == "flip":
        return [images, mirrored]
    offsets = [(0, 0)] + [(dy, dx) for dy in (-CROP_SHIFT, CROP_SHIFT) for dx in (-CROP_SHIFT, CROP_SHIFT)]
    return [shifted(base, dy, dx) for base in (images, mirrored) for dy, dx in offsets]


def probabilities_with_tta(predictor, images: np.ndarray, tta: str) -> np.ndarray:
    """A Predictor's probabilities averaged over the TTA views."""
    views = tta_views(images, tta)
    return np.mean([predictor.predict(np.ascontiguousarray(v)) for v in views], axis=0).astype(np.float32)


def member_probabilities(checkpoint: str | pathlib.Path, images: np.ndarray, tta: str = "none",
                         batch_size: int = 256) -> np.ndarray:
    """(N, 7) probabilities of one checkpoint for uint8 (N, 48, 48) faces, normalized
    as that checkpoint was trained."""
    return _load_member(checkpoint, batch_size)[1](images, tta)


def _load_member(checkpoint, batch_size: int):
    """(description dict, fn(images, tta) -> probs) for one checkpoint."""
    from fer_jax.engine.inference import Predictor
    from fer_jax.evaluate import load_model

    config, model, variables, norm, step_dir, meta = load_model(checkpoint)
    predictor = Predictor(model, variables, norm, batch_size=batch_size)
    info = {"checkpoint": str(checkpoint), "step_dir": str(step_dir), "model": config.model,
            "experiment": (meta.get("config") or {}).get("experiment", ""),
            "synthetic": bool(meta.get("synthetic") or (meta.get("data") or {}).get("name") == "fer_synthetic")}
    return info, lambda images, tta: probabilities_with_tta(predictor, images, tta)


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


def score(labels: np.ndarray, probs: np.ndarray) -> dict:
    """metrics.summarize_confusion of the argmax predictions."""
    from fer_jax.metrics import summarize_confusion
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, probs.argmax(-1)), 1)
    return summarize_confusion(confusion)


def check_weight_values(weights: Sequence[float]) -> None:
    """Averaging weights must be non-negative with a positive sum."""
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError("weights must be non-negative with a positive sum")


def evaluate_ensemble(checkpoints: Sequence[str | pathlib.Path], images: np.ndarray, labels: np.ndarray,
                      tta: str = "none", weights: Sequence[float] | None = None,
                      batch_size: int = 256) -> dict:
    """Every member's and the ensemble's metrics on labelled faces:
    {"members": [{checkpoint, step_dir, model, experiment, synthetic, **metrics}], "ensemble": metrics}."""
    tta_views(images[:0], tta)  # an unknown mode fails before any model is loaded
    if weights is not None and len(weights) != len(checkpoints):
        raise UserError(f"{len(weights)} weights for {len(checkpoints)} checkpoints")
    if weights is not None:
        check_weight_values(weights)
    members, all_probs = [], []
    for checkpoint in checkpoints:
        info, predict = _load_member(checkpoint, batch_size)
        probs = predict(images, tta)
        all_probs.append(probs)
        members.append({**info, **score(labels, probs)})
    ensemble = score(labels, ensemble_probabilities(all_probs, weights))
    return {"members": members, "ensemble": ensemble, "tta": tta,
            "weights": list(weights) if weights is not None else None, "probabilities": all_probs}


MAX_SEARCH_MEMBERS = 12


def subset_search(probabilities: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str]) -> list[dict]:
    """Every subset of two or more members, probabilities averaged with equal weights,
    best accuracy first: [{"members": [...], "accuracy", "macro_f1"}]."""
    if len(names) > MAX_SEARCH_MEMBERS:
        raise UserError(f"--search over {len(names)} checkpoints would score {2 ** len(names)} subsets; "
                        f"give at most {MAX_SEARCH_MEMBERS}")
    rows = []
    for size in range(2, len(names) + 1):
        for combo in itertools.combinations(range(len(names)), size):
            s = score(labels, ensemble_probabilities([probabilities[i] for i in combo]))
            rows.append({"members": [names[i] for i in combo], "accuracy": s["accuracy"],
                         "macro_f1": s["macro_f1"]})
    rows.sort(key=lambda r: (-r["accuracy"], len(r["members"])))
    return rows


def format_table(result: dict) -> str:
    """Members, then the ensemble: accuracy and macro-F1 per row."""
    names = [f"{m['checkpoint']} ({m['model']})" for m in result["members"]]
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.ensemble", description=__doc__.split("\n\n")[1],
                                     epilog=__doc__.split("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="the members: runs' workdirs (their best checkpoints) or checkpoint folders")
    parser.add_argument("--data", required=True, help="a labelled FER2013 file or folder")
    parser.add_argument("--split", default="PublicTest", choices=SPLITS)
    parser.add_argument("--tta", default="none", choices=TTA_MODES, help="test-time augmentation (default none)")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one weight per checkpoint (default: equal weights)")
    parser.add_argument("--out", default=None, help="write metrics.json and confusion_matrix.png here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--search", action="store_true",
                        help="also score every subset of 2+ checkpoints (equal weights) and list the "
                             "best: a choice made on --split, so use the validation split for it")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    quiet_tensorflow()

    from fer_jax import metrics as metrics_lib
    from fer_jax.data.cache import load_fer_cached
    from fer_jax.evaluate import select_split

    data = select_split(load_fer_cached(args.data), args.split)
    result = evaluate_ensemble(args.checkpoints, data.images, data.labels, args.tta, args.weights,
                               args.batch_size)
    ensemble = result["ensemble"]
    print(f"accuracy: {ensemble['accuracy']:.4f}")
    print(f"macro_f1: {ensemble['macro_f1']:.4f}")
    print(f"examples: {ensemble['count']} ({args.split} of {data.source})")
    print()
    print(format_table(result))
    for member in result["members"]:
        if member["synthetic"]:
            print(f"note: {member['checkpoint']} was trained on synthetic data")
    print()
    print("ensemble:")
    print(metrics_lib.format_report(ensemble))
    subsets = None
    if args.search:
        subsets = subset_search(result["probabilities"], data.labels, args.checkpoints)
        print()
        print(f"best subsets of the {len(args.checkpoints)} checkpoints ({len(subsets)} scored on {args.split}, "
              f"tta={args.tta}):")
        for row in subsets[:10]:
            print(f"{row['accuracy']:.4f} {row['macro_f1']:.4f}  {' + '.join(row['members'])}")
    if args.out:
        from fer_jax.plots import confusion_matrix_figure
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {**{k: v for k, v in result.items() if k != "probabilities"}, "split": args.split,
                  "data": data.source, "data_fingerprint": data.fingerprint, "subsets": subsets}
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
        confusion_matrix_figure(
            np.array(ensemble["confusion_matrix"]), out / "confusion_matrix.png",
            title=f"ensemble of {len(args.checkpoints)} on {args.split} (tta={args.tta}, "
                  f"accuracy {ensemble['accuracy']:.1%})")
        print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
