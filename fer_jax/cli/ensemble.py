"""python -m fer_jax.ensemble --checkpoints A B ... --data PATH [--split PublicTest] [--tta none|flip|flip_crops] [--out DIR]

Averages the class probabilities of several checkpoints (each with its own model and
normalization) and reports every member's accuracy and macro-F1 beside the ensemble's.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fer_jax.data.cache import load_fer_cached
from fer_jax.errors import UserError, run_cli
from fer_jax.inference import tta as tta_lib
from fer_jax.inference.ensemble import evaluate_ensemble, format_table, subset_search
from fer_jax.inference.scoring import SPLIT_CHOICES, select_split
from fer_jax.metrics import format_report
from fer_jax.plots import confusion_matrix_figure
from fer_jax.runtime import quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.ensemble", description=__doc__.split("\n\n")[1],
                                     epilog="Test-time augmentation (each member's probabilities are the "
                                            "mean over the views):\n" + tta_lib.__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="the members: runs' workdirs (their best checkpoints) or checkpoint folders")
    parser.add_argument("--data", required=True, help="a labelled FER2013 file or folder")
    parser.add_argument("--split", default="PublicTest", choices=SPLIT_CHOICES)
    parser.add_argument("--tta", default="none", choices=tta_lib.TTA_MODES,
                        help="test-time augmentation (default none)")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one weight per checkpoint (default: equal weights)")
    parser.add_argument("--out", default=None, help="write metrics.json and confusion_matrix.png here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--search", action="store_true",
                        help="also score every subset of 2+ checkpoints (equal weights) and list the "
                             "best: a choice made on --split, so use the validation split for it")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    quiet_tensorflow()
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
    print(format_report(ensemble))
    subsets = None
    if args.search:
        subsets = subset_search(result["probabilities"], data.labels, args.checkpoints)
        print()
        print(f"best subsets of the {len(args.checkpoints)} checkpoints ({len(subsets)} scored on {args.split}, "
              f"tta={args.tta}):")
        for row in subsets[:10]:
            print(f"{row['accuracy']:.4f} {row['macro_f1']:.4f}  {' + '.join(row['members'])}")
    if args.out:
        _write_report(pathlib.Path(args.out), result, subsets, data, args)
    return 0


def _write_report(out: pathlib.Path, result: dict, subsets, data, args) -> None:
    ensemble = result["ensemble"]
    out.mkdir(parents=True, exist_ok=True)
    report = {**{k: v for k, v in result.items() if k != "probabilities"}, "split": args.split,
              "data": data.source, "data_fingerprint": data.fingerprint, "subsets": subsets}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    confusion_matrix_figure(
        ensemble["confusion_matrix"], out / "confusion_matrix.png",
        title=f"ensemble of {len(args.checkpoints)} on {args.split} (tta={args.tta}, "
              f"accuracy {ensemble['accuracy']:.1%})")
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
