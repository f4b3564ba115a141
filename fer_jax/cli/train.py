"""python -m fer_jax.train --experiment=NAME [--data PATH] [--workdir DIR] [--set key=value ...]"""
from __future__ import annotations

import argparse
import sys

from fer_jax import config as config_lib
from fer_jax.engine.run_options import add_run_flags, flag_overrides, run_options
from fer_jax.errors import run_cli
from fer_jax.runtime import quiet_tensorflow, split_cpu_into_devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.train",
        description="Train one experiment (experiments/NAME.py). Without --data it looks for "
                    "FER2013 ($FER2013_PATH, the TFDS manual folder) and else trains on the "
                    "built-in synthetic faces, and says so.")
    parser.add_argument("--experiment", default="cbam", help="experiment name (default: cbam)")
    parser.add_argument("--data", default=None, help="FER2013 file or folder (any supported form)")
    parser.add_argument("--workdir", default=None, help="run folder (default: runs/EXPERIMENT)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set epochs=5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_flags(parser)
    parser.add_argument("--coordinator", default=None,
                        help="multi-host: coordinator address host:port for jax.distributed")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    args.overrides += flag_overrides(args)
    config = config_lib.apply_overrides(config_lib.load_experiment(args.experiment), args.overrides)
    split_cpu_into_devices(args.cpu_devices)
    # The engine imports jax, which must not start before the CPU is split into devices.
    from fer_jax.distillation import teacher_for
    from fer_jax.engine import parallel
    from fer_jax.ensemble_runs import train_ensemble
    from fer_jax.engine.trainer import train_and_evaluate

    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    workdir = args.workdir or config_lib.default_workdir(config.experiment)

    if config.ensemble.members:
        summary = train_ensemble(config, workdir, overrides=args.overrides, data_path=args.data,
                                 options=run_options(args))
        print(f"ensemble validation accuracy: {summary['best_val_accuracy']:.4f} "
              f"({len(summary['members'])} members, tta={summary['tta']})")
        print(f"member checkpoints: {summary['best_checkpoint']}")
        return 0
    options = run_options(args)
    summary = train_and_evaluate(config, workdir, data_path=args.data, options=options,
                                 teacher=teacher_for(config, progress=options.progress))
    if summary["best_val_accuracy"] is not None:
        print(f"best validation accuracy: {summary['best_val_accuracy']:.4f} "
              f"(epoch {summary['best_epoch']})")
    print(f"best checkpoint: {summary['best_checkpoint']}")
    if summary.get("notice"):
        print(summary["notice"])
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
