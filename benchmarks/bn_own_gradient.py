"""BatchNorm whose training-mode normalization has its own two-reduction gradient: an
experiment measured against flax's nn.BatchNorm (`python benchmarks/xla_cpu_probe.py bn`;
docs/results/kernels.md). It did not pay enough to replace nn.BatchNorm in the models.

The backward pass is dx = scale * rstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)),
dscale = sum(dy * x_hat), dbias = sum(dy), instead of autodiff through flax's statistics.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as flax_dtypes
from jax import lax

from fer_jax.models.layers import BN_EPSILON, BN_MOMENTUM


def _reduction_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _batch_norm_forward(x, scale, bias, epsilon, axis_name, stats_dtype, out_dtype):
    """Flax's training-mode BatchNorm on (..., C) features, op for op (its _compute_stats
    with the fast variance, then its _normalize), so the values are the same bits; also
    returns what the backward pass keeps."""
    axes = _reduction_axes(x)
    xs = x.astype(stats_dtype)
    mean, mean2 = xs.mean(axes), lax.square(xs).mean(axes)
    if axis_name is not None:
        both = lax.pmean(jnp.stack((mean, mean2)), axis_name)
        mean, mean2 = both[0], both[1]
    var = jnp.maximum(0.0, mean2 - lax.square(mean))
    rstd = lax.rsqrt(var + epsilon)
    y = x - jnp.expand_dims(mean, axes)
    y *= rstd * scale
    y += bias
    return (jnp.asarray(y, out_dtype), mean, var), (x, scale, mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _batch_norm_train(x, scale, bias, epsilon, axis_name, stats_dtype, out_dtype):
    """(y, batch mean, batch variance) of training-mode BatchNorm, with the gradient below."""
    return _batch_norm_forward(x, scale, bias, epsilon, axis_name, stats_dtype, out_dtype)[0]


def _batch_norm_train_backward(epsilon, axis_name, stats_dtype, out_dtype, residuals,
                               cotangents):
    """dx = scale * rstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means over every
    axis but the last (and over AXIS_NAME's devices: equal shares, as pmean assumes), as
    per-channel coefficients of one elementwise pass after two reductions. The cotangents
    of the returned statistics (zero in a train step: the running averages are not
    differentiated) enter as the mean's and variance's own gradients, the variance taken
    as unclipped."""
    x, scale, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    axes = _reduction_axes(x)
    count = x.size // x.shape[-1]
    dy = dy.astype(stats_dtype)
    x_hat = (x - mean) * rstd
    sum_dy, sum_dy_x_hat = dy.sum(axes), (dy * x_hat).sum(axes)
    means = jnp.stack((sum_dy / count, sum_dy_x_hat / count, dmean, dvar))
    if axis_name is not None:
        means = lax.pmean(means, axis_name)
    mean_dy, mean_dy_x_hat, dmean, dvar = means[0], means[1], means[2], means[3]
    gain = scale * rstd
    slope = 2.0 * dvar / (count * rstd) - gain * mean_dy_x_hat
    offset = dmean / count - gain * mean_dy
    dx = gain * dy + slope * x_hat + offset
    return (dx.astype(x.dtype), sum_dy_x_hat.astype(scale.dtype),
            sum_dy.astype(scale.dtype))


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, stats_dtype, out_dtype):
    return _batch_norm_forward(x, scale, bias, epsilon, axis_name, stats_dtype, out_dtype)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_backward)


class BatchNorm(nn.BatchNorm):
    """flax's BatchNorm, whose training-mode normalization has a gradient of its own.

    The same variables (params scale, bias; batch_stats mean, var), names (BatchNorm_0,
    ...), forward values (the same bits) and running-average update as nn.BatchNorm, so
    it is a drop-in replacement for stored models. Evaluation, initialization and the
    settings the fast path does not cover (a mask, axis_index_groups, the centred
    variance, no scale or bias, another feature axis, lower-precision reductions,
    complex inputs) run flax's own code.
    """

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None):
        running = nn.merge_param("use_running_average", self.use_running_average,
                                 use_running_average)
        if (running or mask is not None or self.is_initializing()
                or not self._has_fast_path(x)):
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        stats_dtype = jnp.promote_types(self.dtype or jnp.result_type(x), jnp.float32)
        out_dtype = flax_dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon, self.axis_name,
                                         stats_dtype, out_dtype)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y

    def _has_fast_path(self, x: jax.Array) -> bool:
        return (self.axis in (-1, x.ndim - 1) and self.use_scale and self.use_bias
                and self.use_fast_variance and self.force_float32_reductions
                and self.axis_index_groups is None and not jnp.iscomplexobj(x))


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str | None = None
               ) -> BatchNorm:
    """fer_jax.models.layers.batch_norm with this BatchNorm (the probe patches it in)."""
    return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON, axis_name=axis_name, dtype=dtype, name=name)
