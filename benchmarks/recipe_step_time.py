"""Seconds per training step of an experiment's own jitted step, and what an epoch costs.

    python benchmarks/recipe_step_time.py vgg_fer [resnet_fer ...] [--steps 20]
        [--cpu-devices 1] [--set compute_dtype=bfloat16 ...] [--variants float32,bfloat16]

Unlike `python -m fer_jax.bench` (each model at 48x48 under AdamW), this builds the step
as the trainer would for the experiment: its model at its input size (40x40 for a
random-crop recipe), its optimizer (SGD with Nesterov momentum, schedules, plateau
scale), mixup/CutMix, EMA and batch size, on a random batch. --variants times each
experiment once per compute dtype, the variants taking turns round after round so that
a change in the machine's load falls on all of them; the median round is printed. An
epoch is the 28,709 Training faces at the experiment's batch size; validation is not
included.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from fer_jax.runtime import split_cpu_into_devices

TRAINING_FACES = 28_709


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python benchmarks/recipe_step_time.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-devices", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, as python -m fer_jax.train --set")
    parser.add_argument("--variants", default="",
                        help="comma-separated compute dtypes to time in turn (default: the "
                             "experiment's own)")
    return parser.parse_args(argv)


def build_step(name: str, overrides: list[str]):
    """(train callable, batch size, input size, parameter count) for experiment NAME."""
    import jax

    from fer_jax import config as config_lib
    from fer_jax.benchmarking.steps import synthetic_batch
    from fer_jax.engine import optim
    from fer_jax.engine.parallel import DATA_AXIS, StepRunner
    from fer_jax.engine.step import init_variables, make_step_fns, new_state
    from fer_jax.models.from_config import build_model

    config = config_lib.validate(config_lib.apply_overrides(config_lib.load_experiment(name),
                                                            overrides))
    size, batch_size = config_lib.input_size(config), config.batch_size
    model = build_model(config, bn_axis_name=DATA_AXIS)
    opt = optim.build_optimizer(config, TRAINING_FACES // batch_size)
    variables = init_variables(config, model)
    state = new_state(variables, opt.tx, opt.plateau, ema=config.ema_decay > 0)
    params = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
    train_fn, eval_fn = make_step_fns(
        model.apply, opt.tx, None, config.label_smoothing, config.eval_tta,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
        ema_decay=config.ema_decay, image_size=size)
    runner = StepRunner(train_fn, eval_fn, "jit")
    batch = synthetic_batch(batch_size, image_size=size)
    batch = {k: batch[k] for k in ("image", "label")}  # the train step takes no mask
    holder = {"state": runner.to_devices(state)}
    key = jax.random.PRNGKey(0)

    def train_steps(steps: int) -> float:
        start = time.perf_counter()
        for i in range(steps):
            holder["state"], metrics = runner.train(holder["state"], batch,
                                                    jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / steps

    train_steps(3)  # compilation and warm-up
    return train_steps, batch_size, size, params


def main(argv=None) -> None:
    args = parse_args(argv)
    split_cpu_into_devices(args.cpu_devices)
    variants = [v for v in args.variants.split(",") if v] or [None]
    targets = []
    for name in args.experiments:
        for dtype in variants:
            overrides = list(args.set) + ([f"compute_dtype={dtype}"] if dtype else [])
            label = f"{name}" + (f" {dtype}" if dtype else "")
            step, batch_size, size, params = build_step(name, overrides)
            targets.append((label, step, batch_size, size, params))
    times: dict[str, list[float]] = {t[0]: [] for t in targets}
    for round_index in range(args.rounds):
        order = targets if round_index % 2 == 0 else targets[::-1]
        for label, step, *_ in order:
            times[label].append(step(args.steps))
    print("| experiment | params | batch | input | s / step | s / epoch | min / epoch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, _, batch_size, size, params in targets:
        per_step = statistics.median(times[label])
        epoch = per_step * (TRAINING_FACES // batch_size)
        print(f"| {label} | {params / 1e6:.2f} M | {batch_size} | {size}x{size} | "
              f"{per_step:.3f} | {epoch:.0f} | {epoch / 60:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
