"""fer_jax's train and eval steps of one model, built as the trainer builds them and ready
to time: the bench's targets (models, or the network an experiment trains), their config,
a synthetic batch, XLA's FLOP count.

Importing it imports jax: `python -m fer_jax.bench` imports it after the CPU device split.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fer_jax.config import base_config, load_experiment
from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES
from fer_jax.engine import optim
from fer_jax.engine.parallel import DATA_AXIS, StepRunner
from fer_jax.engine.step import init_state, make_step_fns
from fer_jax.errors import UserError
from fer_jax.models.from_config import build_model
from fer_jax.kernels import resolve_kernels
from fer_jax.models.from_config import transfer_model_kwargs


@dataclasses.dataclass
class JaxSteps:
    """fer_jax's train and eval steps of one model, compiled and ready to time."""

    train_step: Callable[[], Any]
    eval_step: Callable[[], Any]
    params: int
    flops_per_image: float
    first_train_step_s: float
    devices: str
    kernels: str = "xla"  # the convolutions' kernels the steps use: onednn or xla
    runner: Any = None  # the StepRunner behind both steps


@dataclasses.dataclass(frozen=True)
class BenchTarget:
    """One row of the table: the registry's MODEL with MODEL_KWARGS, shown as LABEL."""

    label: str
    model: str
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def bench_targets(models: Sequence[str], experiments: Sequence[str]) -> list[BenchTarget]:
    """MODELS with their registry attributes, then the network each of EXPERIMENTS trains
    (its model and model_kwargs; batch size, dtype and devices stay the bench's own)."""
    targets = [BenchTarget(name, name) for name in models]
    for name in experiments:
        config = load_experiment(name)
        if config.ensemble.members:
            raise UserError(f"experiment {name} is an ensemble of "
                            f"{', '.join(config.ensemble.members)}: time its members instead")
        # As the trainer builds it (fer_jax.inference.loading.build_model).
        kwargs = {**transfer_model_kwargs(config), **config.model_kwargs.to_dict()}
        targets.append(BenchTarget(f"{name} ({config.model})", config.model, kwargs))
    return targets


def bench_config(model: str, batch_size: int, compute_dtype: str,
                 model_kwargs: Mapping[str, Any] | None = None, kernels: str = "auto"):
    """The base config with MODEL (and MODEL_KWARGS), BATCH_SIZE, COMPUTE_DTYPE and KERNELS:
    a plain run's settings."""
    config = base_config()
    config.model = model
    config.model_kwargs = ml_collections.ConfigDict(dict(model_kwargs or {}))
    config.batch_size = batch_size
    config.compute_dtype = compute_dtype
    config.kernels = kernels
    return config


def synthetic_batch(batch_size: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> dict:
    """A host batch as the pipeline yields it: standard-normal images (already normalized),
    IMAGE_SIZE square (a random-crop recipe's crop size)."""
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch_size, image_size, image_size, 1), np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
            "mask": np.ones(batch_size, bool)}


def forward_flops_per_image(model, variables, batch_size: int) -> float:
    """XLA's count of the jitted eval forward's FLOPs, per image (NaN if XLA gives none)."""
    x = jax.ShapeDtypeStruct((batch_size, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
    compiled = jax.jit(lambda v, images: model.apply(v, images, train=False)).lower(
        variables, x).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) / batch_size if flops else math.nan


def prepare_jax_steps(model_name: str, batch_size: int, compute_dtype: str = "float32",
                      model_kwargs: Mapping[str, Any] | None = None,
                      kernels: str = "auto", devices=None) -> JaxSteps:
    """Builds the trainer's train step (AdamW, plateau scale, StepRunner) and eval step with
    the KERNELS setting on DEVICES (None: the devices a run would use), and runs each once:
    the first train call's time includes its compilation."""
    config = bench_config(model_name, batch_size, compute_dtype, model_kwargs,
                          resolve_kernels(kernels))
    model = build_model(config, bn_axis_name=DATA_AXIS)
    # The trainer's AdamW at a constant rate (its schedules change the rate, not the work).
    tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    plateau = optim.make_plateau(config)
    state = init_state(config, model, tx, plateau)
    params = sum(int(leaf.size) for leaf in jax.tree.leaves(state.params))
    # XLA counts no FLOPs in a custom call: the count comes from XLA's own convolutions.
    xla_config = bench_config(model_name, batch_size, compute_dtype, model_kwargs, "xla")
    flops = forward_flops_per_image(build_model(xla_config), state.variables, batch_size)

    train_fn, eval_fn = make_step_fns(model.apply, tx, None, config.label_smoothing)
    runner = StepRunner(train_fn, eval_fn, devices=devices)  # the trainer's default, jit
    rng = jax.random.PRNGKey(config.seed)
    batch = synthetic_batch(batch_size, config.seed)
    train_batch = {k: batch[k] for k in ("image", "label")}
    holder = {"state": runner.to_devices(state)}

    def train() -> Any:
        # The state is donated to the next step, so only the metrics are handed out.
        holder["state"], metrics = runner.train(holder["state"], train_batch, rng)
        return metrics

    def evaluate() -> Any:
        return runner.eval(holder["state"], batch)

    start = time.perf_counter()
    jax.block_until_ready(train())
    first_train_step_s = time.perf_counter() - start
    jax.block_until_ready(evaluate())
    devices = runner.devices
    return JaxSteps(train_step=train, eval_step=evaluate, params=params, flops_per_image=flops,
                    first_train_step_s=first_train_step_s,
                    devices=f"{len(devices)} x {devices[0].device_kind}",
                    kernels=config.kernels, runner=runner)
