"""python -m fer_jax.bench [--models ...] [--experiments ...] [--kernels auto onednn xla] [--batch-size 64] [--seconds S] [--torch/--no-torch] [--json PATH]

Training speed per model: parameters, forward FLOPs per image (XLA's cost analysis),
fer_jax's train and eval images/s with the project's own train and eval steps (the
StepRunner the trainer uses, on a synthetic normalized batch), the train step's compile
time, and the input pipeline's images/s. On an accelerator whose peak is known
(fer_jax.device_peak, or --peak-tflops) it adds the TFLOP/s the steps reach and their
share of that peak. With PyTorch installed (the `bench` extra),
the PyTorch copies of the models (fer_jax.torch_reference) are timed in the same run, the
two frameworks taking turns round after round, and the ratios fer_jax / PyTorch printed.
--kernels times fer_jax with each convolution setting (fer_jax.kernels) in the same
rounds; --json writes one record per model and setting for scripts. The library:
fer_jax.benchmarking.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, Callable, Sequence

from fer_jax.config import KERNEL_SETTINGS
from fer_jax.errors import UserError, run_cli
from fer_jax.runtime import quiet_tensorflow, split_cpu_into_devices


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None, model_names: Sequence[str]) -> argparse.Namespace:
    """The flags; model_names are the models --models may name (fer_jax.models imports jax,
    so main hands them in after the CPU device split)."""
    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.bench",
        description="Training and evaluation speed of the models, with fer_jax's own steps, "
                    "against their PyTorch copies when PyTorch is installed.")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help=f"models to time (default: all, unless --experiments is given): "
                             f"{', '.join(model_names)}")
    parser.add_argument("--experiments", nargs="+", default=[], metavar="NAME",
                        help="also time the network each of these experiments trains (its model "
                             "and model_kwargs, e.g. fast_5min's 3x3 stack); batch size, dtype "
                             "and devices come from these options, not from the experiment")
    parser.add_argument("--batch-size", type=_positive(int), default=64)
    parser.add_argument("--seconds", type=_positive(float), default=2.0,
                        help="timed seconds per measurement and round (default 2)")
    parser.add_argument("--rounds", type=_positive(int), default=3,
                        help="rounds of alternating measurements; the median is reported (default 3)")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="fer_jax's compute dtype (the config's compute_dtype)")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                        help="time the PyTorch copies too (default: when PyTorch is installed)")
    parser.add_argument("--pipeline-images", type=int, default=28_709,
                        help="images per epoch for the input-pipeline measurement; 0 skips it")
    parser.add_argument("--peak-tflops", type=_positive(float), default=None,
                        help="peak TFLOP/s of one device at the compute dtype, for the share-of-peak "
                             "columns (default: the vendor's figure for known accelerators)")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="on a CPU, the cores as this many devices (0: the trainer's default, "
                             "a power of two up to the cores; 1: one device)")
    parser.add_argument("--kernels", nargs="+", choices=KERNEL_SETTINGS, default=["auto"],
                        help="fer_jax's convolution kernels, each timed in the same rounds "
                             "(default: auto; e.g. --kernels onednn xla)")
    parser.add_argument("--json", type=pathlib.Path, default=None, metavar="PATH",
                        help="also write the results as a JSON list, one record per model "
                             "and kernels")
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = [] if args.experiments else list(model_names)
    unknown = [m for m in args.models if m not in model_names]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; valid names: {', '.join(model_names)}")
    if args.pipeline_images < 0:
        raise UserError(f"--pipeline-images must be >= 0, got {args.pipeline_images}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--cpu-devices", type=int, default=0)
    split_cpu_into_devices(early.parse_known_args(argv)[0].cpu_devices)
    quiet_tensorflow()
    # The library and the model registry import jax, which must start after the CPU split.
    from fer_jax.benchmarking import measure, report, steps
    from fer_jax.models import STUDY_MODEL_NAMES

    args = parse_args(argv, STUDY_MODEL_NAMES)
    torch_bench, skipped = measure.resolve_torch(args.torch)
    targets = steps.bench_targets(args.models, args.experiments)
    run = measure.run_bench(
        targets, batch_size=args.batch_size, seconds=args.seconds, rounds=args.rounds,
        compute_dtype=args.compute_dtype, torch_bench=torch_bench,
        pipeline_images=args.pipeline_images, torch_skipped_because=skipped,
        peak_tflops=args.peak_tflops, kernels=args.kernels,
        progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(report.format_report(run), end="")
    if args.json is not None:
        report.write_json(args.json, run)
        print(f"wrote the results to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
