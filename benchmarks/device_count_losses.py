"""The first three train losses of tests/test_kernels.py's small cbam_cnn with oneDNN's and
XLA's convolutions, on meshes of the first one and two of a process's N CPU devices.

    python benchmarks/device_count_losses.py N      # N: the CPU devices the process holds
"""
import os
import sys

DEVICES = int(sys.argv[1]) if len(sys.argv) > 1 else 2
# Before JAX starts: the process's device count is what is varied.
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"

import jax  # noqa: E402

from fer_jax.benchmarking.steps import prepare_jax_steps  # noqa: E402

MODEL_KWARGS = {"widths": (16, 32), "dense_width": 32, "reduction": 4}  # test_kernels' TRAIN_NETWORKS

for mesh in (1, 2):
    for kernels in ("onednn", "xla"):
        steps = prepare_jax_steps("cbam_cnn", 8, "float32", MODEL_KWARGS, kernels=kernels,
                                  devices=jax.devices("cpu")[:mesh])
        losses = [round(float(steps.train_step()["loss"]), 7) for _ in range(3)]
        print(f"process devices {DEVICES}, mesh {mesh}, {kernels}: {losses}", flush=True)
