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
rounds; --json writes one record per model and setting for scripts.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from fer_jax import device_peak
from fer_jax.errors import UserError, run_cli
from fer_jax.runtime import quiet_tensorflow, split_cpu_into_devices, usable_cores
from fer_jax.timing import measure_images_per_s, no_block

# Steps run untimed before each measurement: caches refill after the other framework ran.
_WARMUP_STEPS = 2


# ---------------------------------------------------------------------------- fer_jax

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
    from fer_jax.config import load_experiment
    from fer_jax.transfer.finetune import transfer_model_kwargs

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
    import ml_collections

    from fer_jax.config import base_config

    config = base_config()
    config.model = model
    config.model_kwargs = ml_collections.ConfigDict(dict(model_kwargs or {}))
    config.batch_size = batch_size
    config.eval_batch_size = batch_size
    config.compute_dtype = compute_dtype
    config.kernels = kernels
    return config


def synthetic_batch(batch_size: int, seed: int = 0) -> dict:
    """A host batch as the pipeline yields it: standard-normal images (already normalized)."""
    import numpy as np

    from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES

    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch_size, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
            "mask": np.ones(batch_size, bool)}


def forward_flops_per_image(model, variables, batch_size: int) -> float:
    """XLA's count of the jitted eval forward's FLOPs, per image (NaN if XLA gives none)."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((batch_size, 48, 48, 1), jnp.float32)
    compiled = jax.jit(lambda v, images: model.apply(v, images, train=False)).lower(
        variables, x).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) / batch_size if flops else math.nan


def prepare_jax_steps(model_name: str, batch_size: int, compute_dtype: str = "float32",
                      model_kwargs: Mapping[str, Any] | None = None,
                      kernels: str = "auto") -> JaxSteps:
    """Builds the trainer's train step (AdamW, plateau scale, StepRunner) and eval step with
    the KERNELS setting, and runs each once: the first train call's time includes its
    compilation."""
    import jax
    import optax

    from fer_jax.engine import optim
    from fer_jax.engine.parallel import DATA_AXIS, StepRunner
    from fer_jax.engine.step import init_state, make_step_fns
    from fer_jax.inference.loading import build_model
    from fer_jax.kernels import resolve_kernels

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
    runner = StepRunner(train_fn, eval_fn, config.parallel)
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
    devices = jax.devices()
    return JaxSteps(train_step=train, eval_step=evaluate, params=params, flops_per_image=flops,
                    first_train_step_s=first_train_step_s,
                    devices=f"{len(devices)} x {devices[0].device_kind}",
                    kernels=config.kernels, runner=runner)


# ----------------------------------------------------------------------------- PyTorch

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


# ---------------------------------------------------------------------------- results

@dataclasses.dataclass
class ModelResult:
    model: str
    kernels: str  # the convolutions' kernels fer_jax ran with: onednn or xla
    params: int
    flops_per_image: float
    compile_s: float
    jax_train: float
    jax_eval: float
    torch_train: float | None = None
    torch_eval: float | None = None
    torch_train_setting: str | None = None
    torch_eval_setting: str | None = None


@dataclasses.dataclass
class BenchRun:
    results: list[ModelResult]
    pipeline_images_per_s: float | None
    batch_size: int
    seconds: float
    rounds: int
    compute_dtype: str
    devices: str
    threads: int
    torch_version: str | None
    torch_skipped_because: str | None = None
    # Peak TFLOP/s of all the devices together at compute_dtype; None: unknown (CPUs).
    peak_tflops: float | None = None
    peak_source: str | None = None
    tensorflow_gpus: str | None = None
    device_memory: str | None = None


def bench_model(target: BenchTarget, batch_size: int, seconds: float, rounds: int,
                compute_dtype: str, torch_bench, threads: int,
                kernels: Sequence[str] = ("xla",)) -> tuple[list[ModelResult], str]:
    """Times one model, one result per KERNELS (each "onednn" or "xla"); the fer_jax
    settings and PyTorch's alternate within every round (all train steps, then all eval
    steps; the order reverses each round) so that drifts in the machine's speed hit all."""
    import jax

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


def devices_peak(compute_dtype: str, override_per_device: float | None
                 ) -> tuple[float | None, str | None]:
    """(peak TFLOP/s of all of jax's devices together, where the figure comes from)."""
    import jax

    devices = jax.devices()
    if override_per_device is not None:
        return override_per_device * len(devices), "--peak-tflops"
    per_device = device_peak.peak_tflops(devices[0].device_kind, compute_dtype)
    if per_device is None:
        return None, None
    return per_device * len(devices), "vendor data sheet, dense"


def tensorflow_gpu_report() -> str:
    """What TensorFlow sees of the GPUs once fer_jax's pipeline has hidden them: it must
    hold none, so that every byte of accelerator memory is JAX's."""
    try:
        import tensorflow as tf
    except ImportError:
        return "not installed (the input pipeline could not be measured here)"
    from fer_jax.data import pipeline  # noqa: F401  (importing it hides the GPUs)

    physical = len(tf.config.list_physical_devices("GPU"))
    visible = len(tf.config.get_visible_devices("GPU"))
    return f"{physical} GPU(s) present, {visible} visible to TensorFlow"


def device_memory_report() -> str | None:
    """Peak memory JAX used on its first device, where the runtime reports it (not on CPUs)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return None
    limit = stats.get("bytes_limit")
    of = f" of {limit / 2**30:,.1f} GiB" if limit else ""
    return f"peak {stats['peak_bytes_in_use'] / 2**30:,.2f} GiB{of} in use by JAX on device 0"


def measure_pipeline(batch_size: int, num_images: int, seconds: float) -> float:
    """Steady images/s of the training input pipeline (full augmentation, balanced)."""
    from fer_jax.data import pipeline

    return pipeline.measure_throughput(num_images=num_images, global_batch_size=batch_size,
                                       seconds=seconds)["steady_images_per_s"]


# ------------------------------------------------------------------------------ table

def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _ratio(a: float, b: float | None) -> str:
    return "—" if b is None or b <= 0 else f"{a / b:.2f}"


def _mflops(value: float) -> str:
    return "—" if math.isnan(value) else f"{value / 1e6:,.1f}"


def table_columns(with_torch: bool, with_peak: bool = False) -> list[str]:
    columns = ["model", "kernels", "params", "fwd MFLOP/img", "compile s", "fer_jax train img/s"]
    if with_torch:
        columns += ["PyTorch train img/s", "train ratio"]
    if with_peak:
        columns += ["train TFLOP/s", "train % of peak"]
    columns += ["fer_jax eval img/s"]
    if with_torch:
        columns += ["PyTorch eval img/s", "eval ratio", "PyTorch mode (train/eval)"]
    if with_peak:
        columns += ["eval % of peak"]
    return columns


def _percent_of_peak(images_per_s: float, flops_per_image: float, *, train: bool,
                     peak_tflops: float) -> str:
    if math.isnan(flops_per_image):
        return "—"
    share = device_peak.share_of_peak(images_per_s, flops_per_image, train=train,
                                      peak_per_device=peak_tflops, devices=1)
    return f"{100 * share:.1f}"


def format_table(results: Sequence[ModelResult], with_torch: bool,
                 peak_tflops: float | None = None) -> str:
    """A markdown table, one row per model and kernels; ratios are fer_jax / PyTorch (above 1: fer_jax
    faster); with PEAK_TFLOPS (all devices together) the steps' TFLOP/s and share of it."""
    with_peak = peak_tflops is not None
    columns = table_columns(with_torch, with_peak)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in ("model", "kernels") or c.startswith("PyTorch mode") else "---:"
                            for c in columns) + "|"]
    for r in results:
        cells = [r.model, r.kernels, f"{r.params:,}", _mflops(r.flops_per_image), f"{r.compile_s:.1f}",
                 _rate(r.jax_train)]
        if with_torch:
            cells += [_rate(r.torch_train), _ratio(r.jax_train, r.torch_train)]
        if with_peak:
            tflops = device_peak.achieved_tflops(r.jax_train, r.flops_per_image, train=True)
            cells += ["—" if math.isnan(tflops) else f"{tflops:.2f}",
                      _percent_of_peak(r.jax_train, r.flops_per_image, train=True,
                                       peak_tflops=peak_tflops)]
        cells += [_rate(r.jax_eval)]
        if with_torch:
            cells += [_rate(r.torch_eval), _ratio(r.jax_eval, r.torch_eval),
                      f"{r.torch_train_setting or '—'} / {r.torch_eval_setting or '—'}"]
        if with_peak:
            cells += [_percent_of_peak(r.jax_eval, r.flops_per_image, train=False,
                                       peak_tflops=peak_tflops)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(run: BenchRun) -> list[str]:
    lines = [f"fer_jax ({run.compute_dtype}) on {run.devices}; batch {run.batch_size}; "
             f"median of {run.rounds} round(s) of {run.seconds:g} s per measurement."]
    if run.torch_version:
        lines.append(f"PyTorch {run.torch_version} on the CPU with {run.threads} threads, "
                     "channels_last, fused AdamW; fp32 and bf16 autocast both timed, the "
                     "faster shown. Ratios are fer_jax / PyTorch.")
    elif run.torch_skipped_because:
        lines.append(f"PyTorch not timed: {run.torch_skipped_because}.")
    if run.pipeline_images_per_s is not None:
        fastest = max((r.jax_train for r in run.results), default=0.0)
        against = (f": {run.pipeline_images_per_s / fastest:,.1f}x the fastest train step's "
                   "images/s" if fastest > 0 else "")
        lines.append(f"Input pipeline (tf.data, full augmentation, balanced sampling): "
                     f"{run.pipeline_images_per_s:,.0f} images/s{against}.")
    if run.tensorflow_gpus:
        lines.append(f"TensorFlow: {run.tensorflow_gpus}.")
    if run.device_memory:
        lines.append(f"Device memory: {run.device_memory}.")
    if run.peak_tflops is not None:
        lines.append(f"Peak: {run.peak_tflops:,.1f} TFLOP/s for {run.devices} at "
                     f"{run.compute_dtype} ({run.peak_source}); a train step counted as "
                     f"{device_peak.TRAIN_FLOPS_PER_FORWARD:g}x the forward FLOPs.")
    lines.append("compile s: the first train step's time less a steady step's.")
    return lines


def format_report(run: BenchRun) -> str:
    body = "\n".join(summary_lines(run))
    table = format_table(run.results, run.torch_version is not None, run.peak_tflops)
    return f"{body}\n\n{table}\n"


# ------------------------------------------------------------------------------- json

def json_records(run: BenchRun) -> list[dict]:
    """One record per model and kernels: what a script reads from --json."""
    return [{"model": r.model, "kernels": r.kernels, "compute_dtype": run.compute_dtype,
             "batch_size": run.batch_size, "devices": run.devices,
             "train_img_s": r.jax_train, "eval_img_s": r.jax_eval,
             "torch_train_img_s": r.torch_train, "torch_eval_img_s": r.torch_eval,
             "torch_train_setting": r.torch_train_setting,
             "torch_eval_setting": r.torch_eval_setting, "params": r.params,
             "flops_per_image": None if math.isnan(r.flops_per_image) else r.flops_per_image,
             "compile_s": r.compile_s, "rounds": run.rounds, "seconds": run.seconds}
            for r in run.results]


def write_json(path: pathlib.Path, run: BenchRun) -> None:
    try:
        path.write_text(json.dumps(json_records(run), indent=1) + "\n")
    except OSError as err:
        raise UserError(f"--json: cannot write {path}: {err.strerror}") from None


# ------------------------------------------------------------------------- command line

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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from fer_jax.kernels import KERNEL_SETTINGS
    from fer_jax.models import STUDY_MODEL_NAMES as MODEL_NAMES

    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.bench",
        description="Training and evaluation speed of the models, with fer_jax's own steps, "
                    "against their PyTorch copies when PyTorch is installed.")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help=f"models to time (default: all, unless --experiments is given): "
                             f"{', '.join(MODEL_NAMES)}")
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
        args.models = [] if args.experiments else list(MODEL_NAMES)
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; valid names: {', '.join(MODEL_NAMES)}")
    if args.pipeline_images < 0:
        raise UserError(f"--pipeline-images must be >= 0, got {args.pipeline_images}")
    return args


def resolve_torch(wanted: bool | None):
    """(torch_bench module or None, why PyTorch is not timed or None)."""
    import jax

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
    from fer_jax.kernels import resolve_kernels

    return list(dict.fromkeys(resolve_kernels(setting) for setting in settings))


def run_bench(targets: Sequence[BenchTarget], *, batch_size: int, seconds: float, rounds: int,
              compute_dtype: str, torch_bench, pipeline_images: int,
              torch_skipped_because: str | None = None, peak_tflops: float | None = None,
              kernels: Sequence[str] = ("auto",), progress=print) -> BenchRun:
    import jax

    if batch_size % jax.device_count():
        raise UserError(f"--batch-size {batch_size} must be divisible by the "
                        f"{jax.device_count()} devices")
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before parse_args, whose model list imports jax: the device count is fixed then.
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--cpu-devices", type=int, default=0)
    split_cpu_into_devices(early.parse_known_args(argv)[0].cpu_devices)
    args = parse_args(argv)
    quiet_tensorflow()
    torch_bench, skipped = resolve_torch(args.torch)
    targets = bench_targets(args.models, args.experiments)
    run = run_bench(targets, batch_size=args.batch_size, seconds=args.seconds,
                    rounds=args.rounds, compute_dtype=args.compute_dtype, torch_bench=torch_bench,
                    pipeline_images=args.pipeline_images, torch_skipped_because=skipped,
                    peak_tflops=args.peak_tflops, kernels=args.kernels,
                    progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_report(run), end="")
    if args.json is not None:
        write_json(args.json, run)
        print(f"wrote the results to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
