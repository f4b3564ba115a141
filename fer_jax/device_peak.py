"""What share of an accelerator's peak arithmetic a measured step reaches.

The peaks are the vendors' dense (no sparsity) tensor-unit figures per chip, for the
arithmetic XLA uses by default: JAX computes float32 convolutions and matrix products
as TF32 on NVIDIA GPUs from Ampere on and as bfloat16 passes on TPUs (its default
matmul precision), so a float32 step is held against the TF32 peak there.
"""
from __future__ import annotations

import re

# (pattern over jax's device_kind, lowercased; TFLOP/s at float32 as computed by default; at bfloat16)
_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    (r"\bh100 pcie\b", 378.0, 756.0),
    (r"\bh100\b|\bh200\b|\bgh200\b", 494.7, 989.4),  # SXM boards (data sheets list 2x with sparsity)
    (r"\ba100\b", 156.0, 312.0),
    (r"\bl4\b", 60.0, 121.0),
    (r"\btpu v6", 918.0, 918.0),
    (r"\btpu v5 lite\b|\btpu v5e\b", 197.0, 197.0),
    (r"\btpu v5p?\b", 459.0, 459.0),
    (r"\btpu v4\b", 275.0, 275.0),
)

# Forward, input gradient and weight gradient: the usual estimate of a train step's work.
TRAIN_FLOPS_PER_FORWARD = 3.0


def peak_tflops(device_kind: str, compute_dtype: str) -> float | None:
    """The chip's peak TFLOP/s for COMPUTE_DTYPE ("float32" or "bfloat16"), or None
    when the device is not in the table (CPUs among them: their peak depends on clocks
    and vector units the runtime does not report)."""
    kind = device_kind.lower()
    for pattern, float32_peak, bfloat16_peak in _PEAK_TFLOPS:
        if re.search(pattern, kind):
            return bfloat16_peak if compute_dtype == "bfloat16" else float32_peak
    return None


def achieved_tflops(images_per_s: float, forward_flops_per_image: float, *, train: bool) -> float:
    """TFLOP/s a step does at IMAGES_PER_S, from the forward pass's FLOPs per image."""
    factor = TRAIN_FLOPS_PER_FORWARD if train else 1.0
    return images_per_s * forward_flops_per_image * factor / 1e12


def share_of_peak(images_per_s: float, forward_flops_per_image: float, *, train: bool,
                  peak_per_device: float, devices: int) -> float:
    """The fraction of DEVICES chips' peak that the step's arithmetic fills."""
    return achieved_tflops(images_per_s, forward_flops_per_image, train=train) / (
        peak_per_device * devices)
