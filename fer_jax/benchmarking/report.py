"""A bench run's results as a markdown table with its summary lines, and as JSON records.

No jax here: the results are plain numbers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Sequence

from fer_jax import device_peak
from fer_jax.errors import UserError


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
