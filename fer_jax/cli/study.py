"""python -m fer_jax.study: a series of experiments, resumable, with a results table.

Under one budget (every run gets the same training wall-clock minutes):

    python -m fer_jax.study --budget-minutes 6 --experiments simple_cnn_v1,simple_cnn_v2 \
        --data ../shared/data/fer2013/fer2013_public.csv.gz --root runs/study [--split stratified]

At each experiment's own schedule (its epochs, early stopping, plateau patience, batch size
and augmentation), by default the original study's nine experiments on both splits:

    python -m fer_jax.study --schedule own --splits stratified official \
        --data ../shared/data/fer2013/fer2013_public.csv.gz [--root runs/study_full]

Each experiment trains under ROOT/SPLIT/NAME; finished ones are skipped, an interrupted
one resumes from its checkpoint when the same command runs again. After every run the
table (ROOT/SPLIT/results.md and results.json, and curves.png: validation accuracy against
training time) is rewritten from the runs' best checkpoints, so it always shows what has
been measured so far and nothing else. Each finished run also keeps its row and curve in
ROOT/SPLIT/NAME/record.json, which stands for the run once its checkpoints are deleted: such
a run is neither retrained nor dropped from the table, and a folder holding only records
rebuilds its tables and curves with --report-only. W&B runs carry the tags `study`, the
mode (`own-schedule` or `budget-Mmin`) and the split besides the model, data and experiment.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from fer_jax import config as config_lib
from fer_jax.engine.run_options import add_run_flags, flag_overrides, run_options
from fer_jax.errors import UserError, run_cli
from fer_jax.runtime import quiet_tensorflow, split_cpu_into_devices

# The keys of fer_jax.study_runs.CLOCKS (imported only after the CPU device split).
CLOCK_CHOICES = ("train", "wall")
# The original study's experiments, in its order.
STUDY_EXPERIMENTS = ("simple_cnn_v1", "simple_cnn_v2", "simple_cnn_v3", "simple_cnn_v3_weighted_loss",
                     "deep_cnn_v1", "deep_cnn_v2", "deep_cnn_v3", "cbam", "resnet")
SPLITS = ("official", "stratified")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.study",
        description="Train experiments one after another, under the same budget or each at its "
                    "own schedule, on one split or both; resumable (run the same command again); "
                    "writes results.md/json and curves.png per split.")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--budget-minutes", type=float,
                        help="training wall-clock minutes per run (the same for every run)")
    length.add_argument("--schedule", choices=("own",),
                        help="own: each experiment's own epochs, early stopping, plateau, batch "
                             "size and augmentation, no budget")
    parser.add_argument("--experiments", default=",".join(STUDY_EXPERIMENTS),
                        help="comma-separated experiment names, trained in this order (default: "
                             "the original study's nine)")
    parser.add_argument("--split", "--splits", dest="splits", nargs="+", choices=SPLITS, default=None,
                        help="official: Training -> PublicTest; stratified: the original study's "
                             "80/20 of Training; several run one after another (default: official "
                             "under a budget, both at --schedule own)")
    parser.add_argument("--data", default=None, help="FER2013 file or folder")
    parser.add_argument("--root", default=None,
                        help="folder of the runs (default runs/study, or runs/study_full at --schedule own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override applied to every experiment (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the tables and curves from the runs there are")
    parser.add_argument("--clock", default="train", choices=CLOCK_CHOICES,
                        help="curves.png's time axis: train (the budget's clock, default) or wall "
                             "(since the run started, compilation and evaluation included)")
    add_run_flags(parser)
    return parser


def _configs(names: list[str], overrides: list[str], split: str, budget_minutes: float | None) -> dict:
    """Every name and override checked before anything trains."""
    configs = {}
    for name in names:
        # Own schedule: no budget, whatever an experiment file says (--set may still add one);
        # under a budget the flag wins over --set, and the split always does.
        first = ["budget_minutes=0"] if budget_minutes is None else []
        last = ([] if budget_minutes is None else [f"budget_minutes={budget_minutes}"]) + [
            f"data.split_scheme={split}"]
        config = config_lib.apply_overrides(config_lib.load_experiment(name), first + overrides + last)
        if config.ensemble.members:
            raise UserError(f"{name} is an ensemble; train it with python -m fer_jax.train")
        configs[name] = config_lib.validate(config)
    return configs


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.overrides += flag_overrides(args)
    budget = args.budget_minutes
    if budget is not None and not budget > 0:
        raise UserError(f"--budget-minutes must be > 0, got {budget}")
    quiet_tensorflow()
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    if not names:
        raise UserError("--experiments names no experiment")
    splits = list(dict.fromkeys(args.splits or (["official"] if budget is not None else
                                                ["stratified", "official"])))
    configs = {split: _configs(names, args.overrides, split, budget) for split in splits}
    split_cpu_into_devices(args.cpu_devices)
    from fer_jax.study_runs import train_series, write_results

    mode = "own-schedule" if budget is None else f"budget-{budget:g}min"
    root_base = pathlib.Path(args.root or ("runs/study_full" if budget is None else "runs/study"))
    for split in splits:
        root = root_base / split
        root.mkdir(parents=True, exist_ok=True)
        if not args.report_only:
            options = dataclasses.replace(run_options(args), wandb_tags=("study", mode, split))
            train_series(configs[split], root, data_path=args.data, options=options, split=split,
                         budget_minutes=budget)
        write_results(root, names, split=split, budget_minutes=budget, clock=args.clock)
        print((root / "results.md").read_text())
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
