"""python -m fer_jax.study: a series of experiments under one budget, resumable, with a results table.

    python -m fer_jax.study --experiments simple_cnn_v1,simple_cnn_v2 --budget-minutes 6 \
        --data ../shared/data/fer2013/fer2013_public.csv.gz --root runs/study [--split stratified]

Each experiment trains under ROOT/SPLIT/NAME with the same training wall-clock budget
(`budget_minutes`) and split; finished ones are skipped, an interrupted one resumes
from its checkpoint when the same command runs again. After every run the table
(ROOT/SPLIT/results.md and results.json, and curves.png: validation accuracy against
training time) is rewritten from the runs' best checkpoints,
so it always shows what has been measured so far and nothing else.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from fer_jax import config as config_lib
from fer_jax.engine.run_options import add_run_flags, run_options
from fer_jax.errors import UserError, run_cli
from fer_jax.runtime import quiet_tensorflow, split_cpu_into_devices

# The keys of fer_jax.study_runs.CLOCKS (imported only after the CPU device split).
CLOCK_CHOICES = ("train", "wall")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.study",
        description="Train experiments one after another under the same budget and split; "
                    "resumable (run the same command again); writes results.md/json.")
    parser.add_argument("--experiments", required=True,
                        help="comma-separated experiment names, trained in this order")
    parser.add_argument("--budget-minutes", type=float, required=True,
                        help="training wall-clock minutes per run (the same for every run)")
    parser.add_argument("--split", default="official", choices=("official", "stratified"),
                        help="official: Training -> PublicTest; stratified: the original study's "
                             "80/20 of Training")
    parser.add_argument("--data", default=None, help="FER2013 file or folder")
    parser.add_argument("--root", default="runs/study", help="folder of the runs (default runs/study)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override applied to every experiment (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the table and curves from the runs there are")
    parser.add_argument("--clock", default="train", choices=CLOCK_CHOICES,
                        help="curves.png's time axis: train (the budget's clock, default) or wall "
                             "(since the run started, compilation and evaluation included)")
    add_run_flags(parser)
    return parser



def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.budget_minutes > 0:
        raise UserError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    quiet_tensorflow()
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    configs = {}
    for name in names:  # every name and override is checked before anything trains
        config = config_lib.apply_overrides(config_lib.load_experiment(name), args.overrides + [
            f"budget_minutes={args.budget_minutes}", f"data.split_scheme={args.split}"])
        if config.ensemble.members:
            raise UserError(f"{name} is an ensemble; train it with python -m fer_jax.train")
        configs[name] = config_lib.validate(config)
    split_cpu_into_devices(args.cpu_devices)
    # The study's library imports jax, which must not start before the CPU is split into devices.
    from fer_jax.study_runs import train_series, write_results

    root = pathlib.Path(args.root) / args.split
    root.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        train_series(configs, root, data_path=args.data, options=run_options(args), split=args.split,
                     budget_minutes=args.budget_minutes)
    write_results(root, names, split=args.split, budget_minutes=args.budget_minutes, clock=args.clock)
    print((root / "results.md").read_text())
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
