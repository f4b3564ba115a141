"""Building blocks shared by the models: initializers, BatchNorm settings, pooling."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.kernels import conv_general_dilated_for

# He/Kaiming normal with fan_out, as the original study's PyTorch models initialised convs
# (jax's "normal" is untruncated, like torch.nn.init.kaiming_normal_).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's BatchNorm momentum 0.1 weights the new batch; flax's weights the old average.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str | None = None
               ) -> nn.BatchNorm:
    """BatchNorm with the study's settings; axis_name makes statistics global under pmap/shard_map."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                        epsilon=BN_EPSILON, axis_name=axis_name, dtype=dtype, name=name)


def conv(features: int, kernel: int, dtype: Any, use_bias: bool, strides: int = 1,
         name: str | None = None, kernels: str = "xla") -> nn.Conv:
    """Square convolution with the study's kernel initializer, 'same' padded, computed by
    KERNELS ("xla", or "onednn": fer_jax.kernels' oneDNN convolutions on the CPU).

    Strided convs pad kernel // 2 on every side, as PyTorch does: XLA's "SAME" would pad
    only the bottom/right, shifting the sampled grid a pixel off the one a strided 1x1
    shortcut (and a PyTorch-trained kernel) sees.
    """
    padding = "SAME" if strides == 1 else [(kernel // 2, kernel // 2)] * 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                   use_bias=use_bias, kernel_init=conv_kernel_init, dtype=dtype, name=name,
                   conv_general_dilated=conv_general_dilated_for(kernels))


class ConvBNReLU(nn.Module):
    """Conv (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU."""

    features: int
    kernel: int = 3
    strides: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.features, self.kernel, self.dtype, use_bias=False, strides=self.strides,
                 kernels=self.kernels)(x)
        x = batch_norm(train, self.bn_axis_name, self.dtype)(x)
        return nn.relu(x)


def _windows(x: jax.Array) -> jax.Array:
    """X's 2x2 windows as (B, H // 2, 2, W // 2, 2, C) (an odd last row/column dropped)."""
    b, h, w, c = x.shape
    return x[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)


def _corners(windows: jax.Array) -> tuple[jax.Array, ...]:
    """Top-left, top-right, bottom-left, bottom-right of every window, (B, H/2, W/2, C)."""
    return (windows[:, :, 0, :, 0], windows[:, :, 0, :, 1], windows[:, :, 1, :, 0],
            windows[:, :, 1, :, 1])


def _max4(corners: tuple[jax.Array, ...]) -> jax.Array:
    a, b, c, d = corners
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


@jax.custom_vjp
def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2 (halves height and width; an odd last row/column is dropped).

    A reshape and a max with a gradient of its own, rather than nn.max_pool: XLA's CPU
    backend lowers the latter's gradient to select-and-scatter (7x slower than a
    reshape-and-max's), and the automatic gradient of a reshape-and-max counts ties with
    a reduction and a division. Here each window's gradient goes to the first of its
    maxima in row-major order, as PyTorch's max_pool2d gives it, in one elementwise pass
    XLA fuses with its neighbours (2-3x faster than the automatic gradient;
    docs/results/kernels.md). The forward pass is the plain reshape-and-max, so exported
    ONNX graphs (fer_jax.onnx_model) do not change.
    """
    return _windows(x).max(axis=(2, 4))


def _max_pool2_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The input is kept, not an index map: the backward pass recomputes the maxima in its
    # own fused loop, and the input is alive anyway for the layer before the pool.
    return max_pool2(x), x


def _max_pool2_backward(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    a, b, c, d = corners = _corners(_windows(x))
    top = _max4(corners)
    # Which corner (0-3, row-major) takes the window's gradient: the first maximum; a
    # window with a NaN takes none of a, b, c and so gives it to d.
    first = jnp.where(a == top, 0, jnp.where(b == top, 1, jnp.where(c == top, 2, 3)))
    position = (2 * jnp.arange(2)[:, None] + jnp.arange(2)[None, :]).reshape(1, 1, 2, 1, 2, 1)
    dx = jnp.where(position == first.astype(jnp.int8)[:, :, None, :, None, :],
                   dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
    n, h, w, channels = x.shape
    dx = dx.reshape(n, h - h % 2, w - w % 2, channels)
    if h % 2 or w % 2:
        dx = jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return (dx.astype(x.dtype),)


max_pool2.defvjp(_max_pool2_forward, _max_pool2_backward)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C)."""
    return jnp.mean(x, axis=(1, 2))


def spatial_dropout(rate: float, name: str | None = None) -> nn.Dropout:
    """Dropout2d: drops whole channels of an NHWC map (one mask value per sample and channel)."""
    return nn.Dropout(rate, broadcast_dims=(1, 2), name=name)


def logits_head(num_classes: int, dtype: Any, x: jax.Array, name: str = "logits") -> jax.Array:
    """Final Dense; logits are float32 whatever the compute dtype (stable softmax/loss)."""
    return nn.Dense(num_classes, dtype=dtype, name=name)(x).astype(jnp.float32)


def resize_input(x: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of (B, H, W, C) to size x size (half-pixel centres, as PyTorch's
    align_corners=False); size 0 leaves the input as it is."""
    if not size or x.shape[1:3] == (size, size):
        return x
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")


def match_channels(x: jax.Array, num_input_channels: int) -> jax.Array:
    """A grey (B, H, W, 1) input repeated to the channels a model expects (3 for RGB weights)."""
    channels = x.shape[-1]
    if channels == num_input_channels:
        return x
    if channels == 1:
        return jnp.repeat(x, num_input_channels, axis=-1)
    raise ValueError(f"input has {channels} channels; the model expects "
                     f"{num_input_channels} (or 1, repeated)")
