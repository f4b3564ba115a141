"""How a run uses this machine: command flags of train and study, not experiment config.

Nothing here changes what a run computes, so a run may resume under other values; the
experiment config (fer_jax.config) holds everything that does. (--skip-bad-rows decides
whether a file with unreadable rows trains at all; the rows a run trains on are its
data's fingerprint, which a resumption checks.)
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

WANDB_MODES = ("online", "offline", "disabled")
PARALLEL_MODES = ("jit", "pmap")  # fer_jax.engine.parallel.StepRunner's layouts


@dataclasses.dataclass(frozen=True)
class RunOptions:
    checkpoint_every_steps: int = 500  # mid-epoch checkpoints; 0: at epoch ends only
    keep_checkpoints: int = 2  # resumable checkpoints kept (the best one is kept apart)
    wandb_mode: str = "offline"  # online, offline or disabled; WANDB_MODE wins
    wandb_project: str = "facial-expression-recognition"
    progress: bool = True
    wandb_tags: tuple[str, ...] = ()  # added to the run's own tags (model, data, experiment)
    # jit: one jitted step over a mesh of all devices (shard_map); pmap: jax.pmap, kept for
    # comparison. Both compute the same steps.
    parallel: str = "jit"
    eval_batch_size: int = 256  # the validation's global batch: memory, not results
    log_every_steps: int = 20  # the loss is logged and checked finite, and the budget checked
    skip_bad_rows: bool = False  # leave out the data file's unreadable rows (listed) instead of stopping
    # On a CPU in one process, how many of the process's devices the run uses (0: the count
    # XLA_FLAGS sets, else the auto count; fer_jax.runtime.cpu_device_count). The command
    # splits the CPU into that many before JAX starts.
    cpu_devices: int = 0
    clock: Callable[[], float] = time.monotonic  # the budget's clock (tests inject one)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags `run_options` reads, and --cpu-devices (read before JAX starts)."""
    defaults = RunOptions()
    parser.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                        help="on a CPU, expose the cores as N XLA devices for data parallelism "
                             "(0, the default: the largest power of two up to the cores, at most 8; "
                             "1: one device on all cores); where XLA_FLAGS sets the count, the run "
                             "uses N of those devices (0: all)")
    parser.add_argument("--checkpoint-every", type=_whole(0), default=defaults.checkpoint_every_steps,
                        metavar="STEPS", help="a resumable checkpoint every STEPS steps within an "
                        f"epoch, besides each epoch's end (0: epoch ends only; default "
                        f"{defaults.checkpoint_every_steps})")
    parser.add_argument("--keep-checkpoints", type=_whole(1), default=defaults.keep_checkpoints,
                        metavar="N", help=f"resumable checkpoints kept (default {defaults.keep_checkpoints}; "
                        "the best one is kept apart)")
    parser.add_argument("--wandb", dest="wandb_mode", choices=WANDB_MODES, default=defaults.wandb_mode,
                        help="Weights & Biases logging (default offline; online needs a login, else "
                             "offline; the WANDB_MODE environment variable wins)")
    parser.add_argument("--wandb-project", default=defaults.wandb_project)
    parser.add_argument("--parallel", choices=PARALLEL_MODES, default=defaults.parallel,
                        help="data parallelism: jit (one jitted step over a mesh of all devices, "
                             "default) or pmap")
    parser.add_argument("--eval-batch-size", type=_whole(1), default=defaults.eval_batch_size,
                        metavar="N", help=f"validation batch over all devices (default "
                        f"{defaults.eval_batch_size}; memory only, the scores are the same)")
    parser.add_argument("--log-every", dest="log_every_steps", type=_whole(1),
                        default=defaults.log_every_steps, metavar="STEPS",
                        help="log the loss, check it is finite and check the budget every STEPS "
                             f"steps (default {defaults.log_every_steps})")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="leave out rows (or images) of the data that cannot be read, listed on "
                             "stderr, instead of stopping at the first")
    parser.add_argument("--kernels", default=None, metavar="auto|onednn|xla",
                        help="CPU convolution kernels: auto (oneDNN on x86-64 Linux when it builds, "
                             "else XLA), onednn (fail if unavailable) or xla; the same as "
                             "--set kernels=... (default: the experiment's, auto)")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides (--set KEY=VALUE form) that run flags stand for."""
    return [f"kernels={args.kernels}"] if getattr(args, "kernels", None) else []


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(checkpoint_every_steps=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                      wandb_mode=args.wandb_mode, wandb_project=args.wandb_project,
                      progress=not getattr(args, "no_progress", False), parallel=args.parallel,
                      eval_batch_size=args.eval_batch_size, log_every_steps=args.log_every_steps,
                      skip_bad_rows=args.skip_bad_rows, cpu_devices=args.cpu_devices)


def _whole(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value
    return parse
