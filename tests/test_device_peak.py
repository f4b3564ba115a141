"""The accelerator peaks and the share of them a step reaches (bench's GPU/TPU columns)."""
from __future__ import annotations

import math

import pytest

from fer_jax import device_peak
from fer_jax.benchmarking import measure, report as bench_report


@pytest.mark.parametrize("kind, dtype, expected", [
    ("NVIDIA H200", "float32", 494.7),          # TF32: what jax computes float32 convs as
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA A100-SXM4-40GB", "float32", 156.0),
    ("NVIDIA L4", "bfloat16", 121.0),
    ("TPU v5 lite", "float32", 197.0),
    ("TPU v5", "bfloat16", 459.0),
    ("TPU v4", "bfloat16", 275.0),
])
def test_known_accelerators_have_their_data_sheet_peak(kind, dtype, expected):
    assert device_peak.peak_tflops(kind, dtype) == expected


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA L40S", "NVIDIA GeForce RTX 4090", "TPU v3"])
def test_unknown_devices_have_no_peak(kind):
    assert device_peak.peak_tflops(kind, "float32") is None


def test_share_of_peak_counts_a_train_step_as_three_forwards():
    # 1,000 img/s x 1 GFLOP forward = 1 TFLOP/s of inference, 3 of training.
    assert device_peak.achieved_tflops(1000.0, 1e9, train=False) == pytest.approx(1.0)
    assert device_peak.achieved_tflops(1000.0, 1e9, train=True) == pytest.approx(3.0)
    assert device_peak.share_of_peak(1000.0, 1e9, train=True, peak_per_device=10.0,
                                     devices=2) == pytest.approx(0.15)


def _result(**overrides):
    values = dict(model="cbam_cnn", kernels="xla", params=325_312, flops_per_image=1e9, compile_s=3.0,
                  jax_train=1000.0, jax_eval=5000.0)
    values.update(overrides)
    return bench_report.ModelResult(**values)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_with_a_peak_shows_tflops_and_shares():
    lines = bench_report.format_table([_result()], with_torch=False, peak_tflops=30.0).splitlines()
    row = dict(zip(_cells(lines[0]), _cells(lines[2])))
    assert row["train TFLOP/s"] == "3.00" and row["train % of peak"] == "10.0"
    assert row["eval % of peak"] == "16.7"
    no_flops = bench_report.format_table([_result(flops_per_image=math.nan)], with_torch=False,
                                         peak_tflops=30.0).splitlines()
    row = dict(zip(_cells(no_flops[0]), _cells(no_flops[2])))
    assert row["train TFLOP/s"] == row["train % of peak"] == row["eval % of peak"] == "—"


def test_report_says_where_the_peak_comes_from_and_what_tensorflow_holds():
    run = bench_report.BenchRun(results=[_result()], pipeline_images_per_s=40_000.0, batch_size=512,
                                seconds=2.0, rounds=3, compute_dtype="bfloat16", devices="1 x NVIDIA H200",
                                threads=16, torch_version=None, peak_tflops=989.4,
                                peak_source="vendor data sheet, dense",
                                tensorflow_gpus="1 GPU(s) present, 0 visible to TensorFlow",
                                device_memory="peak 1.25 GiB of 130.0 GiB in use by JAX on device 0")
    report = bench_report.format_report(run)
    assert "40,000 images/s: 40.0x the fastest train step's images/s" in report
    assert "Peak: 989.4 TFLOP/s for 1 x NVIDIA H200 at bfloat16 (vendor data sheet, dense)" in report
    assert "TensorFlow: 1 GPU(s) present, 0 visible to TensorFlow." in report
    assert "Device memory: peak 1.25 GiB" in report
    assert "train % of peak" in report.splitlines()[-3]


def test_on_a_cpu_there_is_no_peak_unless_given():
    from fer_jax.engine.parallel import run_devices
    assert measure.devices_peak("float32", None) == (None, None)
    total, source = measure.devices_peak("float32", 2.0)
    # The devices the timed steps span (the auto count of this process's 8 CPU devices).
    assert source == "--peak-tflops" and total == pytest.approx(2.0 * len(run_devices()))
    memory = measure.device_memory_report()
    assert memory is None or memory.startswith("peak ")


def test_tensorflow_gpu_report_counts_the_machines_gpus_and_sees_none():
    # On a CPU-only machine both counts are 0; on a GPU machine this checks the hiding too.
    import tensorflow as tf
    report = measure.tensorflow_gpu_report()
    present, visible = (int(word) for word in report.replace("GPU(s)", "").split()
                        if word.isdigit())
    assert present == len(tf.config.list_physical_devices("GPU"))
    assert visible == 0 == len(tf.config.get_visible_devices("GPU"))
