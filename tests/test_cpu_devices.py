"""The CPU split into devices for data parallelism inside one process (cpu_devices)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fer_jax.cli import train as train_cli
from fer_jax.runtime import (CPU_DEVICE_FLAG, auto_cpu_devices, cpu_device_count, split_cpu_into_devices,
                             usable_cores)


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


def test_the_count_a_run_asks_for(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_use_onednn=false {CPU_DEVICE_FLAG}=3")
    assert cpu_device_count(5) == 5 and cpu_device_count(0) == 3
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=false")
    assert cpu_device_count(0) == auto_cpu_devices(usable_cores())


def test_the_train_command_uses_the_auto_count_of_cpu_devices(fer_sample_path, tmp_path, monkeypatch):
    # In this process (8 CPU devices, conftest) the run's mesh takes the count the command
    # asks for; test_parallel's runs ask for 1 and 4 (--cpu-devices) and check those.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    argv = ["--experiment=simple_cnn_v1", f"--data={fer_sample_path}", f"--workdir={tmp_path}",
            "--no-progress", "--set", "max_train_steps=2", "--set", "batch_size=32",
            "--set", "model_kwargs.widths=(8,16)", "--set", "model_kwargs.dense_width=16"]
    assert train_cli.main(argv) == 0
    devices = json.loads((tmp_path / "summary.json").read_text())["devices"]
    assert devices == auto_cpu_devices(usable_cores())


def test_the_train_command_splits_the_cpu_before_jax_starts(tmp_path):
    # A fresh interpreter: JAX fixes its device count when it starts. The command stops at
    # the missing data file, after it has split the CPU and started JAX.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    code = ("import sys\nfrom fer_jax.cli import train\nfrom fer_jax.errors import UserError\n"
            "try:\n    train.main(sys.argv[1:])\nexcept UserError:\n    print('UserError')\n"
            "import jax\nprint('devices', jax.device_count())")
    done = subprocess.run([sys.executable, "-c", code, "--experiment=simple_cnn_v1", "--no-progress",
                           f"--data={tmp_path / 'missing.csv'}", f"--workdir={tmp_path / 'run'}",
                           "--cpu-devices", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["UserError", "devices", "3"], done.stdout
