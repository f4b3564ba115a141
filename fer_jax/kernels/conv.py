"""oneDNN convolutions as a drop-in `conv_general_dilated` for flax.linen.Conv.

The forward pass and the two gradients are XLA FFI calls (fer_jax/kernels/onednn_conv.cc),
tied together with jax.custom_vjp. The gradients are separate calls, so XLA drops the
one nothing uses (the first layer's gradient with respect to the images). Anything the
kernels do not cover (dilation, groups, other layouts or dtypes) goes to
lax.conv_general_dilated unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fer_jax.kernels import build

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# Convolutions with this few input or output channels stay on XLA: oneDNN has no fast
# kernel for them (CBAM's 7x7 2 -> 1 conv: backward-weights 49 ms against XLA's 0.6 ms
# at 24x24, batch 64), and XLA's is as fast for the first layer's 1 -> 32 forward.
MIN_CHANNELS = 3

Pads = tuple[tuple[int, int], tuple[int, int]]


def _attrs(strides: tuple[int, int], pads: Pads, threads: int) -> dict[str, np.int64]:
    (top, bottom), (left, right) = pads
    return {name: np.int64(value) for name, value in (
        ("stride_h", strides[0]), ("stride_w", strides[1]), ("pad_top", top),
        ("pad_bottom", bottom), ("pad_left", left), ("pad_right", right), ("threads", threads))}


def _ffi(target: str, out: jax.ShapeDtypeStruct, a: jax.Array, b: jax.Array, attrs: dict):
    build.load()  # registers the targets before anything is lowered
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(a, b, **attrs)


def output_hw(in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int],
              pads: Pads) -> tuple[int, int]:
    return tuple((size + lo + hi - k) // s + 1
                 for size, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def onednn_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads,
                threads: int) -> jax.Array:
    """NHWC x HWIO -> NHWC convolution with explicit PADS ((top, bottom), (left, right))."""
    oh, ow = output_hw(x.shape[1:3], w.shape[:2], strides, pads)
    out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, w.shape[3]), x.dtype)
    return _ffi("fer_onednn_conv_forward", out, x, w, _attrs(strides, pads, threads))


def _forward(x, w, strides, pads, threads):
    return onednn_conv(x, w, strides, pads, threads), (x, w)


def _backward(strides, pads, threads, residuals, dy):
    x, w = residuals
    attrs = _attrs(strides, pads, threads)
    dy = dy.astype(x.dtype)
    dx = _ffi("fer_onednn_conv_backward_data", jax.ShapeDtypeStruct(x.shape, x.dtype), dy, w,
              attrs)
    dw = _ffi("fer_onednn_conv_backward_weights", jax.ShapeDtypeStruct(w.shape, w.dtype), x, dy,
              attrs)
    return dx, dw


onednn_conv.defvjp(_forward, _backward)


def _explicit_pads(padding: Any, x_shape, w_shape, strides) -> Pads | None:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            return None
        padding = lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding.upper())
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
        return None
    return pads


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    if dimension_numbers is None or ndim != 4:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers(
            (1, 1, 1, 1), (1, 1, 1, 1), NHWC_HWIO)
    return tuple(dimension_numbers) == NHWC_HWIO


@dataclasses.dataclass(frozen=True)
class OnednnConvGeneralDilated:
    """lax.conv_general_dilated's signature; NHWC/HWIO float32 and bfloat16 convolutions
    with at least MIN_CHANNELS input and output channels run on oneDNN with THREADS
    threads (0: oneDNN's default), the rest on XLA.

    A frozen dataclass rather than a closure: equal settings compare (and hash) equal, so
    that Flax modules holding it do too.
    """

    threads: int = 0

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                 precision=None, preferred_element_type=None):
        strides = tuple(int(s) for s in window_strides)
        pads = _explicit_pads(padding, lhs.shape, rhs.shape, strides) if lhs.ndim == 4 else None
        covered = (pads is not None and len(strides) == 2
                   and _is_nhwc_hwio(dimension_numbers, lhs.ndim)
                   and all(d == 1 for d in (lhs_dilation or (1, 1)))
                   and all(d == 1 for d in (rhs_dilation or (1, 1)))
                   and feature_group_count == 1 and batch_group_count == 1
                   and preferred_element_type is None
                   and lhs.dtype == rhs.dtype and jnp.dtype(lhs.dtype) in SUPPORTED_DTYPES
                   and min(rhs.shape[2], rhs.shape[3]) >= MIN_CHANNELS)
        if not covered:
            return lax.conv_general_dilated(
                lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                precision=precision, preferred_element_type=preferred_element_type)
        return onednn_conv(lhs, rhs, strides, pads, self.threads)
