"""python -m fer_jax.explore [--data PATH] [--out DIR] [--seed N]

Explores a FER2013 source: rows per class and split, class imbalance, exact
duplicate images (conflicting labels, Training images repeated in a test split),
pixel statistics, and figures (class distribution, sample faces, mean faces,
pixel histogram). Writes DIR/report.md (default reports/explore) with the figures
beside it. Without data (no --data, $FER2013_PATH or TFDS manual copy) it explores
the built-in synthetic set, and the report says so.
"""
from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import time
from typing import Sequence

from fer_jax.errors import UserError, run_cli
from fer_jax.exploration import (DEFAULT_OUT, FIGURE_FILES, draw_figures, explore, format_ratio, load_data,
                                 prepare_out, reference_rows, render_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.explore", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", default=None,
                        help="a FER2013 file or folder (default: $FER2013_PATH, the TFDS manual folder, "
                             "else the built-in synthetic set)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="leave out rows (or images) that cannot be read, listed on stderr, "
                             "instead of stopping at the first")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample faces (default 0)")
    parser.add_argument("--per-class", type=int, default=8, help="sample faces per class (default 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.per_class < 1:
        raise UserError(f"--per-class must be at least 1, got {args.per_class}")
    if args.seed < 0:
        raise UserError(f"--seed must be non-negative, got {args.seed}")
    started = time.perf_counter()

    def status(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    out = pathlib.Path(args.out)
    prepare_out(out)
    status(f"reading {args.data or 'the default data'}")
    data, identity = load_data(args.data, skip_bad_rows=args.skip_bad_rows)
    if identity.synthetic:
        print(f"note: {identity.notice}", file=sys.stderr)
    status(f"read {len(data):,} rows; counting classes, duplicates and pixels")
    result = explore(data)
    draw_figures(data, result, out, seed=args.seed, per_class=args.per_class,
                 on_step=lambda what: status(f"drawing {what}"))
    command = "python -m fer_jax.explore" + (" " + shlex.join(argv) if argv else "")
    report = out / "report.md"
    report.write_text(render_report(result, identity, command, reference_rows(data)[1], args.seed,
                                    args.per_class))
    status("done")

    d = result.duplicates
    if identity.synthetic:
        print("SYNTHETIC DATA (no FER2013 file found)")
    print(f"rows {len(data):,}; imbalance on {result.imbalance_split} {format_ratio(result.imbalance)}")
    print(f"duplicates: {d.duplicate_rows:,} rows in {d.groups:,} groups, {d.conflicting_groups:,} with "
          f"conflicting labels, {d.cross_split_groups:,} across Training and a test split")
    overall = result.pixels["all"]
    print(f"pixels: mean {overall.mean:.2f} std {overall.std:.2f} "
          f"(0-1: {overall.mean_unit:.4f} / {overall.std_unit:.4f})")
    print(f"wrote {report} and {len(FIGURE_FILES)} figures in {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
