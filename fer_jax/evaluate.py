"""python -m fer_jax.evaluate [--checkpoint DIR] --data PATH [--split PublicTest|PrivateTest|all] [--tta MODE] [--out DIR]

Restores a checkpoint (a run's workdir gives its best one) and reports accuracy,
macro-F1, per-class precision/recall/F1 and the confusion matrix.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from fer_jax.cli_common import quiet_tensorflow
from fer_jax.errors import UserError, run_cli

SPLITS = ("PublicTest", "PrivateTest", "Training", "all")


def default_checkpoint() -> pathlib.Path:
    from fer_jax.release import released_checkpoint
    return released_checkpoint()


def load_model(checkpoint: str | pathlib.Path | None):
    """(config, model, variables, normalization, step folder) from a checkpoint alone."""
    from fer_jax.config import base_config
    from fer_jax.engine.checkpoint import read_meta, resolve_checkpoint, restore_variables
    from fer_jax.engine.inference import build_model
    import ml_collections

    step_dir = resolve_checkpoint(checkpoint or default_checkpoint())
    meta = read_meta(step_dir)
    if "config" not in meta or "normalization" not in meta:
        raise UserError(f"{step_dir}: the checkpoint's metadata lacks its config or normalization")
    config = base_config()
    saved = ml_collections.ConfigDict(meta["config"])
    config.model = saved.model
    config.compute_dtype = saved.get("compute_dtype", "float32")
    config.model_kwargs = ml_collections.ConfigDict(dict(saved.get("model_kwargs", {})))
    model = build_model(config)
    variables = restore_variables(step_dir)
    return config, model, variables, meta["normalization"], step_dir, meta


def select_split(data, split: str):
    from fer_jax.data.types import UNLABELLED
    if split == "all":
        chosen = data.subset(data.labels != UNLABELLED)
    else:
        chosen = data.split(split)
        if len(chosen) == 0:
            present = sorted(set(data.usage.tolist()))
            raise UserError(f"{data.source}: no {split} rows (the file holds: {', '.join(present)}); "
                            "use --split all or another --split")
    if len(chosen) == 0 or not chosen.has_labels:
        raise UserError(f"{data.source}: the {split} rows carry no labels, so there is nothing to score")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", default=None,
                        help="a run's workdir (its best checkpoint), a checkpoint folder inside it, "
                             "or a released model (default: release/final)")
    parser.add_argument("--data", required=True, help="a labelled FER2013 file or folder")
    parser.add_argument("--split", default="PublicTest", choices=SPLITS)
    parser.add_argument("--out", default=None, help="write metrics.json and confusion_matrix.png here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tta", default="none", choices=("none", "flip", "flip_crops"),
                        help="test-time augmentation: none, flip (2 views) or flip_crops (10 views)")
    args = parser.parse_args(argv)
    quiet_tensorflow()

    from fer_jax import metrics as metrics_lib
    from fer_jax.data.cache import load_fer_cached
    from fer_jax.engine.inference import Predictor
    from fer_jax.ensemble import probabilities_with_tta

    config, model, variables, norm, step_dir, meta = load_model(args.checkpoint)
    data = select_split(load_fer_cached(args.data), args.split)
    predictor = Predictor(model, variables, norm, batch_size=args.batch_size)
    probs = probabilities_with_tta(predictor, data.images, args.tta)
    predictions = probs.argmax(-1)
    confusion = np.zeros((7, 7), np.int64)
    np.add.at(confusion, (data.labels, predictions), 1)
    summary = metrics_lib.summarize_confusion(confusion)

    print(f"accuracy: {summary['accuracy']:.4f}")
    print(f"macro_f1: {summary['macro_f1']:.4f}")
    print(f"examples: {summary['count']} ({args.split} of {data.source})")
    print(f"checkpoint: {step_dir}")
    if args.tta != "none":
        print(f"test-time augmentation: {args.tta}")
    if meta.get("synthetic"):
        print(f"note: this model was trained on synthetic data. {meta.get('notice', '')}")
    print()
    print(metrics_lib.format_report(summary))
    if args.out:
        from fer_jax.plots import confusion_matrix_figure
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {**summary, "split": args.split, "data": data.source, "data_fingerprint": data.fingerprint,
                  "checkpoint": str(step_dir), "model": config.model, "tta": args.tta}
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
        confusion_matrix_figure(confusion, out / "confusion_matrix.png",
                                title=f"{config.model} on {args.split} (accuracy {summary['accuracy']:.1%})")
        print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
