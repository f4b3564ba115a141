"""Timing the models: fer_jax's steps under each kernels setting and PyTorch's copies taking
turns round after round, the input pipeline, the devices' peak and memory.

PyTorch is optional (the `bench` extra): fer_jax.torch_reference imports torch, so it is
imported only where PyTorch is found.
"""
from __future__ import annotations

import importlib
import statistics
from typing import Any, Callable, Sequence

import jax
import tensorflow as tf

from fer_jax import device_peak
from fer_jax.benchmarking.report import BenchRun, ModelResult
from fer_jax.benchmarking.steps import BenchTarget, prepare_jax_steps
from fer_jax.data import pipeline  # importing it hides the GPUs from TensorFlow
from fer_jax.engine.parallel import run_devices
from fer_jax.errors import UserError
from fer_jax.kernels import resolve_kernels
from fer_jax.runtime import usable_cores
from fer_jax.timing import measure_images_per_s, no_block

# Steps run untimed before each measurement: caches refill after the other framework ran.
_WARMUP_STEPS = 2


def load_torch_bench():
    """fer_jax.torch_reference.steps, or None when PyTorch is not installed."""
    try:
        importlib.import_module("torch")
    except ImportError:
        return None
    return importlib.import_module("fer_jax.torch_reference.steps")


def torch_threads() -> int:
    """The cores this process may use: XLA's CPU client sizes its pool from the same set,
    so `taskset` limits both frameworks alike."""
    return usable_cores()


def resolve_torch(wanted: bool | None):
    """(torch_bench module or None, why PyTorch is not timed or None)."""
    if wanted is False:
        return None, "--no-torch"
    torch_bench = load_torch_bench()
    if torch_bench is None:
        if wanted:
            raise UserError("--torch: PyTorch is not installed (pip install 'fer_jax[bench]')")
        return None, "PyTorch is not installed"
    if jax.default_backend() != "cpu":
        # The PyTorch build of the bench extra is the CPU one: a ratio would compare machines.
        if wanted:
            raise UserError(f"--torch: fer_jax runs on {jax.default_backend()}, the PyTorch "
                            "comparison is CPU-only; run with JAX_PLATFORMS=cpu")
        return None, f"fer_jax runs on {jax.default_backend()}; the comparison is CPU-only"
    return torch_bench, None


def resolved_kernels(settings: Sequence[str]) -> list[str]:
    """The kernels SETTINGS mean here (auto resolved, each once, in order)."""
    return list(dict.fromkeys(resolve_kernels(setting) for setting in settings))


def bench_model(target: BenchTarget, batch_size: int, seconds: float, rounds: int,
                compute_dtype: str, torch_bench, threads: int,
                kernels: Sequence[str] = ("xla",)) -> tuple[list[ModelResult], str]:
    """Times one model, one result per KERNELS (each "onednn" or "xla"); the fer_jax
    settings and PyTorch's alternate within every round (all train steps, then all eval
    steps; the order reverses each round) so that drifts in the machine's speed hit all."""
    def timer(step: Callable[[], Any], block: Callable[[Any], Any] = no_block) -> Callable[[], float]:
        return lambda: measure_images_per_s(step, batch_size, seconds, block=block,
                                            warmup_steps=_WARMUP_STEPS)

    # kind -> [(key, timer)], fer_jax first; every kernels setting and PyTorch's get a key.
    groups: dict[str, list[tuple[str, Callable[[], float]]]] = {"train": [], "eval": []}
    jax_steps = {}
    for name in kernels:
        steps = prepare_jax_steps(target.model, batch_size, compute_dtype, target.model_kwargs,
                                  name)
        jax_steps[name] = steps
        groups["train"].append((f"jax train {name}", timer(steps.train_step, jax.block_until_ready)))
        groups["eval"].append((f"jax eval {name}", timer(steps.eval_step, jax.block_until_ready)))
    torch_keys: dict[str, list[tuple[str, Any]]] = {"train": [], "eval": []}
    if torch_bench is not None:
        torch_bench.set_threads(threads)
        makers = {"train": torch_bench.make_train_step, "eval": torch_bench.make_eval_step}
        for kind, make in makers.items():
            for setting in torch_bench.BEST_SETTINGS:
                key = f"torch {kind} {setting.label}"
                step = make(target.model, batch_size, setting, model_kwargs=target.model_kwargs)
                groups[kind].append((key, timer(step)))
                torch_keys[kind].append((key, setting))

    rates: dict[str, list[float]] = {key: [] for group in groups.values() for key, _ in group}
    for round_index in range(rounds):
        for group in groups.values():
            for key, measure in (group if round_index % 2 == 0 else reversed(group)):
                rates[key].append(measure())
    median = {key: statistics.median(values) for key, values in rates.items()}

    torch_best: dict[str, Any] = {}
    for kind in ("train", "eval"):
        if torch_keys[kind]:
            key, setting = max(torch_keys[kind], key=lambda item: median[item[0]])
            torch_best[f"torch_{kind}"] = median[key]
            torch_best[f"torch_{kind}_setting"] = setting.label
    results = []
    for name, steps in jax_steps.items():
        train, evaluate = median[f"jax train {name}"], median[f"jax eval {name}"]
        results.append(ModelResult(
            model=target.label, kernels=steps.kernels, params=steps.params,
            flops_per_image=steps.flops_per_image,
            compile_s=max(steps.first_train_step_s - batch_size / train, 0.0),
            jax_train=train, jax_eval=evaluate, **torch_best))
    return results, next(iter(jax_steps.values())).devices


def measure_pipeline(batch_size: int, num_images: int, seconds: float) -> float:
    """Steady images/s of the training input pipeline (full augmentation, balanced)."""
    return pipeline.measure_throughput(num_images=num_images, global_batch_size=batch_size,
                                       seconds=seconds)["steady_images_per_s"]


def devices_peak(compute_dtype: str, override_per_device: float | None
                 ) -> tuple[float | None, str | None]:
    """(peak TFLOP/s of the timed steps' devices together, where the figure comes from)."""
    devices = run_devices()
    if override_per_device is not None:
        return override_per_device * len(devices), "--peak-tflops"
    per_device = device_peak.peak_tflops(devices[0].device_kind, compute_dtype)
    if per_device is None:
        return None, None
    return per_device * len(devices), "vendor data sheet, dense"


def tensorflow_gpu_report() -> str:
    """What TensorFlow sees of the GPUs once fer_jax's pipeline has hidden them: it must
    hold none, so that every byte of accelerator memory is JAX's."""
    physical = len(tf.config.list_physical_devices("GPU"))
    visible = len(tf.config.get_visible_devices("GPU"))
    return f"{physical} GPU(s) present, {visible} visible to TensorFlow"


def device_memory_report() -> str | None:
    """Peak memory JAX used on its first device, where the runtime reports it (not on CPUs)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return None
    limit = stats.get("bytes_limit")
    of = f" of {limit / 2**30:,.1f} GiB" if limit else ""
    return f"peak {stats['peak_bytes_in_use'] / 2**30:,.2f} GiB{of} in use by JAX on device 0"


def run_bench(targets: Sequence[BenchTarget], *, batch_size: int, seconds: float, rounds: int,
              compute_dtype: str, torch_bench, pipeline_images: int,
              torch_skipped_because: str | None = None, peak_tflops: float | None = None,
              kernels: Sequence[str] = ("auto",), progress=print) -> BenchRun:
    devices = len(run_devices())  # the devices StepRunner spans
    if batch_size % devices:
        raise UserError(f"--batch-size {batch_size} must be divisible by the {devices} devices")
    threads = torch_threads()
    kernels = resolved_kernels(kernels)
    pipeline_rate = None
    if pipeline_images:
        if pipeline_images < batch_size:
            raise UserError(f"--pipeline-images {pipeline_images} is less than one batch "
                            f"of {batch_size}")
        progress("timing the input pipeline ...")
        pipeline_rate = measure_pipeline(batch_size, pipeline_images, seconds)
    results, devices = [], ""
    for target in targets:
        progress(f"timing {target.label} ...")
        model_results, devices = bench_model(target, batch_size, seconds, rounds, compute_dtype,
                                             torch_bench, threads, kernels)
        results.extend(model_results)
    torch_version = None
    if torch_bench is not None:
        torch_version = importlib.import_module("torch").__version__
    peak, peak_source = devices_peak(compute_dtype, peak_tflops)
    on_accelerator = jax.default_backend() != "cpu"
    return BenchRun(results=results, pipeline_images_per_s=pipeline_rate, batch_size=batch_size,
                    seconds=seconds, rounds=rounds, compute_dtype=compute_dtype, devices=devices,
                    threads=threads, torch_version=torch_version,
                    torch_skipped_because=torch_skipped_because, peak_tflops=peak,
                    peak_source=peak_source,
                    tensorflow_gpus=tensorflow_gpu_report() if on_accelerator else None,
                    device_memory=device_memory_report())
