"""Dispatches many train and eval steps of the project's StepRunner without waiting, then waits.

Used by test_parallel.py in a subprocess with the CPU split into devices (XLA_FLAGS must be
set before JAX starts):  python tests/in_flight_worker.py TRAIN_STEPS EVAL_STEPS
Prints the most steps the runner ever left unfinished.
"""
import sys

import jax

from fer_jax.benchmarking.steps import prepare_jax_steps


def main(train_steps: int, eval_steps: int) -> None:
    # A narrow network: the stall comes from the number of steps queued, not their size.
    steps = prepare_jax_steps("simple_cnn_v1", 64, model_kwargs={"widths": (8, 16), "dense_width": 16})
    runner = steps.runner
    most = 0
    outputs = []
    for _ in range(train_steps):
        outputs.append(steps.train_step())
        most = max(most, runner.steps_in_flight)
    for _ in range(eval_steps):
        outputs.append(steps.eval_step())
        most = max(most, runner.steps_in_flight)
    jax.block_until_ready(outputs)
    print(f"devices={jax.device_count()} most_in_flight={most} limit={runner.max_in_flight}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
