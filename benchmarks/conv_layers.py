"""Per-layer convolution times: XLA's, oneDNN's (fer_jax.kernels) and PyTorch's.

    python benchmarks/conv_layers.py [--models cbam_cnn ...] [--batch-size 64]
        [--dtypes float32 bfloat16] [--seconds 0.3] [--rounds 3] [--no-torch]

Every distinct convolution of each model (as its nn.Conv layers call it) is timed in
its three passes, forward, backward-data (the input gradient) and backward-weights,
with each implementation in turn within every round (the order reverses each round);
the median is printed in ms per call. One CPU device; JAX and PyTorch get the same
threads (the process's cores).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fer_jax.kernels import resolve_kernels
from fer_jax.kernels.conv import OnednnConvGeneralDilated
from fer_jax.models import get_model
from fer_jax.runtime import usable_cores
from fer_jax.timing import measure_images_per_s

DN = ("NHWC", "HWIO", "NHWC")
PASSES = ("forward", "backward-data", "backward-weights")


def conv_shapes(name: str, model_kwargs: dict | None = None) -> dict[tuple, int]:
    """(input shape without batch, kernel, features, strides, padding) of every nn.Conv
    call of model NAME -> how many layers have it."""
    found: dict[tuple, int] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Conv) and context.method_name == "__call__":
            padding = module.padding if isinstance(module.padding, str) else tuple(
                tuple(p) for p in module.padding)
            key = (args[0].shape[1:], tuple(module.kernel_size), module.features,
                   tuple(module.strides), padding)
            found[key] = found.get(key, 0) + 1
        return next_fun(*args, **kwargs)

    model = get_model(name, **(model_kwargs or {}))
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)),
                                          train=False))
    return found


def jax_passes(conv_fn, x, w, strides, padding) -> dict[str, Callable[[], Any]]:
    """The three passes as jitted calls; each gradient alone (XLA drops the other)."""
    def f(x, w):
        return conv_fn(x, w, strides, padding, dimension_numbers=DN)

    y = jax.eval_shape(f, x, w)
    dy = jnp.ones(y.shape, y.dtype)
    forward = jax.jit(f)
    data = jax.jit(lambda x, w, dy: jax.vjp(lambda x: f(x, w), x)[1](dy)[0])
    weights = jax.jit(lambda x, w, dy: jax.vjp(lambda w: f(x, w), w)[1](dy)[0])
    return {"forward": lambda: forward(x, w), "backward-data": lambda: data(x, w, dy),
            "backward-weights": lambda: weights(x, w, dy)}


def torch_passes(torch, x_shape, w_shape, strides, padding, dtype) -> dict[str, Callable[[], Any]]:
    """The same passes in PyTorch, channels_last (its fastest CPU layout)."""
    import torch.nn.functional as F

    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    n, h, wd, c = x_shape
    kh, kw, _, o = w_shape
    x = torch.randn(n, c, h, wd, dtype=tdtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(o, c, kh, kw, dtype=tdtype).contiguous(memory_format=torch.channels_last)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads((h, wd), (kh, kw), strides, padding)
    else:
        pads = padding
    if any(lo != hi for lo, hi in pads):
        raise ValueError(f"PyTorch pads symmetrically; {pads} is not")
    pad = tuple(lo for lo, _ in pads)
    y = F.conv2d(x, w, stride=strides, padding=pad)
    dy = torch.ones_like(y)

    def forward():
        with torch.no_grad():
            return F.conv2d(x, w, stride=strides, padding=pad)

    def data():
        xg = x.detach().requires_grad_(True)
        F.conv2d(xg, w, stride=strides, padding=pad).backward(dy)
        return xg.grad

    def weights():
        wg = w.detach().requires_grad_(True)
        F.conv2d(x, wg, stride=strides, padding=pad).backward(dy)
        return wg.grad

    return {"forward": forward, "backward-data": data, "backward-weights": weights}


def time_shape(shape, batch_size, dtype, seconds, rounds, torch) -> dict[str, dict[str, float]]:
    """pass -> implementation -> median ms per call."""
    in_shape, kernel, features, strides, padding = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch_size, *in_shape)), dtype)
    w = jnp.asarray(rng.standard_normal((*kernel, in_shape[-1], features)) * 0.1, dtype)
    impls = {"xla": jax_passes(lax.conv_general_dilated, x, w, strides, padding),
             "onednn": jax_passes(OnednnConvGeneralDilated(usable_cores()), x, w, strides, padding)}
    blocks = {"xla": jax.block_until_ready, "onednn": jax.block_until_ready}
    if torch is not None:
        impls["torch"] = torch_passes(torch, x.shape, w.shape, strides, padding, dtype)
        blocks["torch"] = lambda _: None
    times: dict[str, dict[str, list[float]]] = {p: {i: [] for i in impls} for p in PASSES}
    for round_index in range(rounds):
        order = list(impls) if round_index % 2 == 0 else list(reversed(impls))
        for pass_name in PASSES:
            for impl in order:
                rate = measure_images_per_s(impls[impl][pass_name], 1, seconds,
                                            block=blocks[impl], warmup_steps=2)
                times[pass_name][impl].append(1000.0 / rate)
    return {p: {i: statistics.median(v) for i, v in d.items()} for p, d in times.items()}


def _shape_label(shape, count) -> str:
    in_shape, kernel, features, strides, _ = shape
    h, w, c = in_shape
    label = f"{h}x{w}x{c} {kernel[0]}x{kernel[1]}/{strides[0]} -> {features}"
    return label + (f" (x{count})" if count > 1 else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/conv_layers.py")
    parser.add_argument("--models", nargs="+", default=["cbam_cnn"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=("float32", "bfloat16"))
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    resolve_kernels("onednn")
    torch = None
    if args.torch:
        import torch
        torch.set_num_threads(usable_cores())
    for dtype in args.dtypes:
        print(f"\n{dtype}, batch {args.batch_size}, ms per call (median of {args.rounds})\n")
        header = "| model | conv | pass | XLA | oneDNN | PyTorch | XLA / oneDNN | PyTorch / oneDNN |"
        print(header + "\n|---|---|---|---:|---:|---:|---:|---:|")
        totals: dict[str, dict[str, float]] = {}
        for model in args.models:
            totals[model] = {"xla": 0.0, "onednn": 0.0, "torch": 0.0}
            for shape, count in conv_shapes(model).items():
                print(f"timing {model} {_shape_label(shape, count)} ...", file=sys.stderr,
                      flush=True)
                result = time_shape(shape, args.batch_size, dtype, args.seconds, args.rounds,
                                    torch)
                for pass_name, ms in result.items():
                    # Training never computes the first layer's input gradient.
                    if not (pass_name == "backward-data" and shape[0][-1] == 1):
                        for impl, value in ms.items():
                            totals[model][impl] += count * value
                    t = ms.get("torch")
                    torch_ms = "—" if t is None else f"{t:.2f}"
                    torch_ratio = "—" if t is None else f"{t / ms['onednn']:.2f}"
                    print(f"| {model} | {_shape_label(shape, count)} | {pass_name} | "
                          f"{ms['xla']:.2f} | {ms['onednn']:.2f} | {torch_ms} | "
                          f"{ms['xla'] / ms['onednn']:.2f} | {torch_ratio} |", flush=True)
        print("\nAll convolutions of a train step (every layer, the three passes but the "
              "first layer's input gradient), ms:\n")
        print("| model | XLA | oneDNN | PyTorch |\n|---|---:|---:|---:|")
        for model, total in totals.items():
            print(f"| {model} | {total['xla']:.1f} | {total['onednn']:.1f} | "
                  f"{total['torch'] or float('nan'):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
