"""python -m fer_jax.evaluate [--checkpoint DIR] --data PATH [--split PublicTest|PrivateTest|all] [--tta MODE] [--out DIR]

Restores a checkpoint (a run's workdir gives its best one) and reports accuracy,
macro-F1, per-class precision/recall/F1 and the confusion matrix.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fer_jax.data.cache import load_fer_cached
from fer_jax.errors import run_cli
from fer_jax.inference.scoring import SPLIT_CHOICES, evaluate_checkpoint, select_split
from fer_jax.data.tta import TTA_MODES
from fer_jax.metrics import format_report
from fer_jax.plots import confusion_matrix_figure
from fer_jax.runtime import quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", default=None,
                        help="a run's workdir (its best checkpoint), a checkpoint folder inside it, "
                             "or a released model (default: release/final)")
    parser.add_argument("--data", required=True, help="a labelled FER2013 file or folder")
    parser.add_argument("--split", default="PublicTest", choices=SPLIT_CHOICES)
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="leave out rows (or images) that cannot be read, listed on stderr, "
                             "instead of stopping at the first")
    parser.add_argument("--out", default=None, help="write metrics.json and confusion_matrix.png here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation: none, flip (2 views) or flip_crops (10 views)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    data = select_split(load_fer_cached(args.data, skip_bad_rows=args.skip_bad_rows), args.split)
    result = evaluate_checkpoint(args.checkpoint, data, args.tta, args.batch_size)
    summary, loaded = result.summary, result.loaded
    print(f"accuracy: {summary['accuracy']:.4f}")
    print(f"macro_f1: {summary['macro_f1']:.4f}")
    print(f"examples: {summary['count']} ({args.split} of {data.source})")
    print(f"checkpoint: {loaded.step_dir}")
    if args.tta != "none":
        print(f"test-time augmentation: {args.tta}")
    if loaded.meta.get("synthetic"):
        print(f"note: this model was trained on synthetic data. {loaded.meta.get('notice', '')}")
    print()
    print(format_report(summary))
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {**summary, "split": args.split, "data": data.source, "data_fingerprint": data.fingerprint,
                  "checkpoint": str(loaded.step_dir), "model": loaded.config.model, "tta": args.tta}
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
        confusion_matrix_figure(summary["confusion_matrix"], out / "confusion_matrix.png",
                                title=f"{loaded.config.model} on {args.split} (accuracy {summary['accuracy']:.1%})")
        print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
