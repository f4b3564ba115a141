"""python -m fer_jax.visualize [--checkpoint DIR] [--data PATH] [--split PublicTest] [--out DIR]

Writes PNGs that show what a model does: its confusion matrix, correct and wrong
predictions per class, Grad-CAM heat maps (any model) and, for CBAM models, the
spatial attention maps, each for sample faces and averaged over a class's faces.

Without --data the data the checkpoint was trained on is used, when it is still where
the checkpoint says. Without --out the figures go to reports/visualize/<experiment>
(the model's name when the checkpoint names no experiment).
"""
from __future__ import annotations

import argparse
import sys

from fer_jax.errors import UserError, run_cli
from fer_jax.inference.scoring import SPLIT_CHOICES
from fer_jax.model_figures import write_model_figures
from fer_jax.runtime import quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.visualize", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", default=None,
                        help="a run's workdir (its best checkpoint), a checkpoint folder inside it, "
                             "or a released model (default: release/final)")
    parser.add_argument("--data", default=None,
                        help="a labelled FER2013 file or folder (default: the data the checkpoint was "
                             "trained on)")
    parser.add_argument("--split", default="PublicTest", choices=SPLIT_CHOICES)
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: reports/visualize/NAME)")
    parser.add_argument("--per-class", type=int, default=4,
                        help="correct and wrong faces per class in predictions.png (default 4)")
    parser.add_argument("--mean-count", type=int, default=64,
                        help="correctly classified faces per class behind each mean map (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing the sample faces")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--layer", default=None,
                        help="the layer Grad-CAM reads, e.g. stage3_block2 (default: the last one whose "
                             "map is at least 6x6; a wrong name lists the blocks)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.per_class < 1 or args.mean_count < 1 or args.batch_size < 1:
        raise UserError("--per-class, --mean-count and --batch-size must be at least 1")
    quiet_tensorflow()
    written, notes = write_model_figures(args.checkpoint, args.data, args.split, args.out, args.per_class,
                                         args.mean_count, args.seed, args.batch_size, args.layer)
    for line in notes:
        print(line)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
