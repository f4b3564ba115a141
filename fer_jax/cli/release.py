"""python -m fer_jax.release --checkpoint RUN --data PATH [--name final] [--tta flip_crops] [--out release]

Makes a released model from a run's best checkpoint: the step folder with only
`variables` (params, batch_stats) and `meta` (config, normalization, data identity,
history; no optimizer state), its PublicTest scores with and without test-time
augmentation, the confusion matrix as a picture, and MODEL_CARD.md. `evaluate`,
`visualize`, `predict` and `ExpressionPredictor()` use release/final when no
checkpoint is given.
"""
from __future__ import annotations

import argparse
import sys

from fer_jax.checkout_packages import DEFAULT_RELEASE
from fer_jax.errors import run_cli
from fer_jax.data.tta import TTA_MODES
from fer_jax.model_release import make_release
from fer_jax.runtime import quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.release", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True, help="a run's workdir (its best checkpoint) or a step folder")
    parser.add_argument("--data", required=True, help="the FER2013 file it was trained on (PublicTest is scored)")
    parser.add_argument("--name", default=DEFAULT_RELEASE, help="release name (default: final)")
    parser.add_argument("--tta", default="flip_crops", choices=TTA_MODES,
                        help="test-time augmentation reported beside the plain score")
    parser.add_argument("--out", default=None, help="parent folder (default: the repository's release/)")
    parser.add_argument("--description", default=None,
                        help="the model card's one-line label, when the run's own one no longer fits "
                             "(a run whose --set overrides changed what it is)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    metrics = make_release(args.checkpoint, args.data, name=args.name, tta=args.tta, out=args.out,
                           description=args.description)
    print(f"released {metrics['path']} ({metrics['bytes'] / 1e6:.1f} MB, {metrics['parameters']:,} parameters)")
    print(f"PublicTest accuracy {metrics['no_tta']['accuracy']:.4f}; with {args.tta} "
          f"{metrics['tta']['accuracy']:.4f} (macro-F1 {metrics['tta']['macro_f1']:.4f})")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
