"""8 devices compute what 1 does: pmap, jit+shard_map and 2 hosts x 2 devices (jax.distributed, gloo).

The single-process comparisons run here, on meshes of this process's CPU devices (conftest
gives it 8); processes start only where several of them are the point (jax.distributed) or
where XLA may abort one (the steps-in-flight test).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fer_jax.cli import evaluate as evaluate_cli
from fer_jax.cli import train as train_cli
from fer_jax.engine.parallel import run_devices
from fer_jax.runtime import CPU_DEVICE_FLAG, cpu_device_count
from parallel_worker import train_steps

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")
STEPS = 3


def _run(args, devices: int):
    env = dict(os.environ, XLA_FLAGS=f"{CPU_DEVICE_FLAG}={devices}", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # a hung process must not outlive its test
        out, _ = proc.communicate()
        pytest.fail(f"no exit within {timeout} s: {out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def single_device():
    return train_steps("jit", STEPS, jax.devices("cpu")[:1])


def _assert_same(result: dict, reference: dict, expected_devices: int):
    assert int(result["device_count"]) == expected_devices
    assert reference.keys() == result.keys()
    for key in reference:
        if key in ("device_count", "kernels"):
            continue
        np.testing.assert_allclose(result[key], reference[key], rtol=1e-5, atol=1e-5, err_msg=key)
    # The steps changed the weights: equality is not that of two untouched inits.
    assert reference["losses"][0] != reference["losses"][-1]


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_eight_devices_match_one(mode, single_device):
    _assert_same(train_steps(mode, STEPS, jax.devices("cpu")[:8]), single_device, 8)


def test_a_run_uses_the_cpu_devices_it_asks_for(monkeypatch):
    cpu = jax.devices("cpu")
    assert len(cpu) == 8  # conftest's
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert run_devices(1) == cpu[:1] and run_devices(4) == cpu[:4]
    assert run_devices(0) == cpu[:cpu_device_count(0)]  # the auto count of this machine's cores
    assert run_devices(16) == cpu  # never more than the process has
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_use_onednn=false {CPU_DEVICE_FLAG}=4")
    assert run_devices(0) == cpu[:4]  # the count XLA_FLAGS sets: the command's split


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(single_device, tmp_path):
    out = tmp_path / "multihost.npz"
    address = f"127.0.0.1:{_free_port()}"
    procs = [_run(["jit", STEPS, out, address, 2, pid], devices=2) for pid in range(2)]
    for proc in procs:
        _finish(proc)
    _assert_same(dict(np.load(out)), single_device, 4)


def _train_args(workdir, data, extra=()):
    return ["--experiment=simple_cnn_v1", f"--data={data}", f"--workdir={workdir}", "--no-progress",
            "--set", "max_train_steps=8", "--checkpoint-every", "5", *extra]


@pytest.mark.slow  # two processes and a one-host reference: about 20 s
def test_train_command_on_two_hosts_matches_one_host(fer_sample_path, tmp_path):
    """The whole command (data shards, checkpoints from every process) across 2 processes,
    with W&B logging offline (the default) on process 0: the final report restores the best
    checkpoint, which every process must join. The one host: 4 of this process's devices."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", XLA_FLAGS=f"{CPU_DEVICE_FLAG}=2",
               WANDB_MODE="offline")
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "fer_jax.train",
                               *_train_args(tmp_path / "multi", fer_sample_path,
                                            ["--coordinator", address, "--num-processes", "2",
                                             "--process-id", str(pid)])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    for proc in procs:
        _finish(proc, timeout=400)
    assert len(list((tmp_path / "multi" / "wandb").glob("offline-run-*"))) == 1
    assert train_cli.main(_train_args(tmp_path / "single", fer_sample_path, ["--cpu-devices", "4"])) == 0
    multi_summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert multi_summary["processes"] == 2 and multi_summary["devices"] == 4
    assert single_summary["processes"] == 1 and single_summary["devices"] == 4
    np.testing.assert_allclose(multi_summary["history"][-1]["val_loss"],
                               single_summary["history"][-1]["val_loss"], rtol=1e-4)
    assert multi_summary["history"][-1]["val_accuracy"] == single_summary["history"][-1]["val_accuracy"]
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints" / "latest").iterdir()) == ["5", "8"]


def test_a_checkpoint_resumes_and_evaluates_on_another_device_count(fer_sample_path, tmp_path, capsys):
    assert train_cli.main(_train_args(tmp_path, fer_sample_path,
                                      ["--set", "max_train_steps=4", "--cpu-devices", "1"])) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["devices"] == 1
    capsys.readouterr()
    assert train_cli.main(_train_args(tmp_path, fer_sample_path, ["--cpu-devices", "4"])) == 0
    assert "resuming from step 4" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["devices"] == 4 and summary["steps"] == 8
    assert evaluate_cli.main(["--checkpoint", str(tmp_path), "--data", str(fer_sample_path)]) == 0
    assert capsys.readouterr().out.startswith("accuracy: ")


IN_FLIGHT_WORKER = os.path.join(os.path.dirname(__file__), "in_flight_worker.py")


@pytest.mark.slow  # a child process XLA aborts without the bound: about 10 s
def test_many_steps_dispatched_ahead_do_not_stall_split_cpu_devices():
    # Without a bound on the steps in flight, 150 train + 600 eval steps queued on two CPU
    # devices stalled their all-reduce rendezvous and XLA aborted the process (exit 134).
    # With its timeout shortened here from 40 s to 5 s, 60 + 240 steps of a narrow
    # simple_cnn_v1 abort it too. The runner keeps at most 8 unfinished.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{CPU_DEVICE_FLAG}=2 --xla_cpu_collective_call_terminate_timeout_seconds=5")
    done = subprocess.run([sys.executable, IN_FLIGHT_WORKER, "60", "240"], env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "devices=2 most_in_flight=8 limit=8" in done.stdout


def test_step_runner_waits_for_the_oldest_step_beyond_its_limit():
    import jax.numpy as jnp

    from fer_jax.engine.parallel import DATA_AXIS, StepRunner

    def train_fn(state, batch, rng):
        return state + 1.0, {"loss": jax.lax.pmean(jnp.mean(batch["x"]), DATA_AXIS)}

    def eval_fn(state, batch):
        return {"sum": jax.lax.psum(jnp.sum(batch["x"]) * state, DATA_AXIS)}

    with pytest.raises(ValueError, match="max_in_flight"):
        StepRunner(train_fn, eval_fn, max_in_flight=0)
    runner = StepRunner(train_fn, eval_fn, max_in_flight=3)
    state = runner.to_devices(jnp.zeros(()))
    batch = {"x": np.ones((len(runner.devices) * 2,), np.float32)}
    seen = []
    for _ in range(5):
        state, _ = runner.train(state, batch, jax.random.PRNGKey(0))
        seen.append(runner.steps_in_flight)
    for _ in range(4):
        out = runner.eval(state, batch)
        seen.append(runner.steps_in_flight)
    assert seen == [1, 2, 3, 3, 3, 3, 3, 3, 3]
    assert float(runner.to_host(state)) == 5.0
    assert float(runner.to_host(out)["sum"]) == 5.0 * 2 * len(runner.devices)
