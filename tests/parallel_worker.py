"""Runs k train steps of a BatchNorm CNN on a fixed global batch and returns (saves) the variables.

test_parallel.py and test_kernels.py call `train_steps` in the test process on meshes of
1, 2 or 8 of its CPU devices; the two-process test runs this file in two processes, since
jax.distributed must start before JAX does:
    python tests/parallel_worker.py MODE STEPS OUT COORDINATOR NUM_PROCESSES PROCESS_ID
"""
import sys

import jax

if __name__ == "__main__" and len(sys.argv) > 4:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[4], num_processes=int(sys.argv[5]),
                               process_id=int(sys.argv[6]))

import numpy as np  # noqa: E402
import optax  # noqa: E402

from fer_jax.config import base_config  # noqa: E402
from fer_jax.engine import optim  # noqa: E402
from fer_jax.models.from_config import build_model  # noqa: E402
from fer_jax.engine.parallel import DATA_AXIS, StepRunner  # noqa: E402
from fer_jax.engine.step import make_step_fns  # noqa: E402
from fer_jax.engine.step import init_state  # noqa: E402
from fer_jax.kernels import resolve_kernels  # noqa: E402

GLOBAL_BATCH = 16


def train_steps(mode: str, steps: int, devices=None) -> dict[str, np.ndarray]:
    """The variables, losses, device count and kernels after STEPS steps on DEVICES
    (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    config = base_config()
    config.model = "simple_cnn_v2"
    config.model_kwargs.dropout = 0.0  # dropout masks depend on the device layout
    config.kernels = resolve_kernels(config.get("kernels", "auto"))
    config.learning_rate = 1e-3
    config.weight_decay = 1e-3
    model = build_model(config, bn_axis_name=DATA_AXIS)
    # Adam with its default eps turns float noise in a near-zero gradient into a full
    # +-lr step; a larger eps keeps the comparison about the collectives, not that.
    tx, plateau = optax.adamw(1e-3, eps=1e-3, weight_decay=1e-3), optim.make_plateau(config)
    state = init_state(config, model, tx, plateau)
    train_fn, eval_fn = make_step_fns(model.apply, tx, None, 0.1)
    runner = StepRunner(train_fn, eval_fn, mode, devices=devices)
    state = runner.to_devices(state)
    rng = jax.random.PRNGKey(0)
    data = np.random.default_rng(1)
    per_process = GLOBAL_BATCH // jax.process_count()
    lo = jax.process_index() * per_process
    losses = []
    for _ in range(steps):
        images = data.normal(size=(GLOBAL_BATCH, 48, 48, 1)).astype(np.float32)
        labels = data.integers(0, 7, size=GLOBAL_BATCH).astype(np.int32)
        batch = {"image": images[lo:lo + per_process], "label": labels[lo:lo + per_process]}
        state, metrics = runner.train(state, batch, rng)
        losses.append(float(np.asarray(runner.to_host(metrics)["loss"]) if mode == "jit"
                            else np.asarray(metrics["loss"])[0]))
    host = runner.to_host(state)
    flat = {f"params/{jax.tree_util.keystr(k)}": np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(host.params)}
    flat.update({f"batch_stats/{jax.tree_util.keystr(k)}": np.asarray(v)
                 for k, v in jax.tree_util.tree_leaves_with_path(host.batch_stats)})
    flat["losses"] = np.array(losses)
    flat["device_count"] = np.array(len(runner.devices))
    flat["kernels"] = np.array(config.kernels)
    return flat


def main(mode: str, steps: int, out: str) -> None:
    flat = train_steps(mode, steps)
    if jax.process_index() == 0:
        np.savez(out, **flat)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
