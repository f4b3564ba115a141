"""The CPU split into devices for data parallelism inside one process (cpu_devices)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fer_jax.runtime import CPU_DEVICE_FLAG, auto_cpu_devices, split_cpu_into_devices


@pytest.mark.parametrize("cores, devices", [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (64, 8)])
def test_auto_count_is_a_power_of_two_up_to_the_cores(cores, devices):
    assert auto_cpu_devices(cores) == devices


def test_nothing_changes_once_jax_runs_or_when_xla_flags_set_the_count(monkeypatch):
    import jax  # noqa: F401  (imported: too late to change the device count)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert split_cpu_into_devices(4) is None and os.environ["XLA_FLAGS"] == ""
    monkeypatch.setitem(sys.modules, "jax", None)
    monkeypatch.delitem(sys.modules, "jax")
    monkeypatch.setenv("XLA_FLAGS", f"{CPU_DEVICE_FLAG}=3")
    assert split_cpu_into_devices(4) is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=false")
    assert split_cpu_into_devices(4) == 4
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_use_onednn=false {CPU_DEVICE_FLAG}=4"


@pytest.mark.parametrize("setting", [None, "1"])
def test_the_train_command_uses_the_configured_cpu_devices(fer_sample_path, tmp_path, setting):
    # A fresh interpreter: JAX fixes the device count when it starts, and this process's
    # JAX has started (with the suite's devices), so only a new process shows the command's split.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", WANDB_MODE="disabled", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "fer_jax.train", "--experiment=simple_cnn_v1",
               f"--data={fer_sample_path}", f"--workdir={tmp_path}", "--no-progress",
               "--set", "max_train_steps=2", "--set", "batch_size=32",
               "--set", "model_kwargs.widths=(8,16)", "--set", "model_kwargs.dense_width=16"]
    if setting:
        command += ["--cpu-devices", setting]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    devices = json.loads((tmp_path / "summary.json").read_text())["devices"]
    assert devices == (int(setting) if setting else auto_cpu_devices(len(os.sched_getaffinity(0))))
