"""Grad-CAM (Selvaraju et al. 2017) for any fer_jax model, as pure JAX functions.

The feature map is the output of a layer chosen by path; by default the last
parameterised layer whose output is still a spatial (B, H, W, C) map of at least 6x6,
which in the study's models is the last conv block before global pooling or
flattening (for ResNet-18 with the pooled stem, and VGG-16/19 at 48x48, whose last
stage is 3x3, the stage before it). Its
activations and gradient are taken with a flax method interceptor that adds a zero
`delta` to that layer's output: the gradient with respect to `delta` is the gradient
with respect to the map, and no model has to be changed to expose it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.data.types import IMAGE_SIZE
from fer_jax.errors import UserError

LayerPath = tuple[str, ...]


def _is_spatial_map(value: Any) -> bool:
    return hasattr(value, "ndim") and value.ndim == 4 and value.shape[1] > 1 and value.shape[2] > 1


# A 3x3 map (ResNet-18's last stage at 48x48) says little about where a face is read:
# each cell covers a third of it. The default layer is the last one at least this fine.
MIN_DEFAULT_MAP_SIZE = 6


def spatial_layers(model: nn.Module, variables: Any,
                   input_shape: tuple[int, ...] = (1, IMAGE_SIZE, IMAGE_SIZE, 1)
                   ) -> dict[LayerPath, tuple[int, int]]:
    """The layers that have variables and output a spatial map, with the map's (H, W),
    in call-completion order (a block that wraps its conv, BN and ReLU completes after
    them)."""
    candidates: dict[LayerPath, tuple[int, int]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        # Parameter-free layers (dropout) would pick a map past the last conv's.
        if (context.method_name == "__call__" and context.module.path and _is_spatial_map(out)
                and jax.tree.leaves(context.module.variables)):
            candidates.setdefault(tuple(context.module.path), tuple(out.shape[1:3]))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct(input_shape, jnp.float32))
    return candidates


def find_feature_layer(model: nn.Module, variables: Any, name: str | None = None,
                       input_shape: tuple[int, ...] = (1, IMAGE_SIZE, IMAGE_SIZE, 1)) -> LayerPath:
    """The layer named `name` ('stage3_block2' or a slash path such as
    'stage3_block2/conv2'), which must output a spatial map; without a name, the last
    such layer whose map is at least MIN_DEFAULT_MAP_SIZE on a side (the last of all if
    none is): a block's rectified output rather than its inner conv's."""
    candidates = spatial_layers(model, variables, input_shape)
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no layer with a spatial (B, H, W, C) output")
    if name is None:
        fine = [path for path, size in candidates.items() if min(size) >= MIN_DEFAULT_MAP_SIZE]
        return (fine or list(candidates))[-1]
    wanted = tuple(part for part in name.split("/") if part)
    if wanted not in candidates:
        blocks = [c[0] for c in candidates if len(c) == 1] or ["/".join(c) for c in candidates]
        raise UserError(f"--layer {name}: {type(model).__name__} has no layer of that name with a "
                        f"spatial output; its blocks are {', '.join(blocks)} (or a slash path to a "
                        "layer inside one)")
    return wanted


def _class_score_with_features(model: nn.Module, layer: LayerPath, variables: Any, x: jax.Array,
                               classes: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over the batch of each example's class logit, with `delta` added to the layer's
    output; the layer's (unperturbed) output comes back as aux. Examples are independent
    at inference (BatchNorm uses its running averages), so the gradient of the sum is
    each example's own gradient."""
    captured: list[jax.Array] = []

    def add_delta(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == layer:
            captured.append(out)
            return out + delta.astype(out.dtype)
        return out

    with nn.intercept_methods(add_delta):
        logits = model.apply(variables, x, train=False)
    if len(captured) != 1:
        raise ValueError(f"layer {'/'.join(layer)} was called {len(captured)} times; expected once")
    score = jnp.take_along_axis(logits.astype(jnp.float32), classes[:, None], axis=1).sum()
    return score, captured[0]


def feature_shape(model: nn.Module, variables: Any, layer: LayerPath,
                  input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (B, H, W, C) shape of the layer's output for inputs of input_shape."""
    shapes: list[tuple[int, ...]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == layer:
            shapes.append(tuple(out.shape))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct(input_shape, jnp.float32))
    if not shapes:
        raise ValueError(f"{type(model).__name__} has no layer {'/'.join(layer)}")
    return shapes[0]


def gradcam_maps(model: nn.Module, variables: Any, x: jax.Array, classes: jax.Array,
                 layer: LayerPath) -> jax.Array:
    """Unnormalized Grad-CAM at the layer's resolution: ReLU(sum_k w_k A_k), with
    w_k the spatial mean of d(class logit)/dA_k. x: normalized (N, S, S, 1) at the model's
    input size (48, or the crop of a model trained on random crops); classes: int (N,).
    Returns float32 (N, H, W), >= 0."""
    delta = jnp.zeros(feature_shape(model, variables, layer, x.shape), jnp.float32)
    grad_fn = jax.grad(functools.partial(_class_score_with_features, model, layer),
                       argnums=3, has_aux=True)
    gradients, features = grad_fn(variables, x, classes.astype(jnp.int32), delta)
    weights = gradients.mean(axis=(1, 2))  # (N, C)
    cam = jnp.einsum("nhwc,nc->nhw", features.astype(jnp.float32), weights)
    return jax.nn.relu(cam)


def upsample_and_scale(maps: jax.Array, size: int = IMAGE_SIZE) -> jax.Array:
    """(N, h, w) >= 0 to (N, size, size) in [0, 1]: bilinear upsampling, then each map
    divided by its maximum (a map that is zero everywhere stays zero)."""
    resized = jax.image.resize(maps, (maps.shape[0], size, size), method="bilinear")
    resized = jnp.maximum(resized, 0.0)
    peak = resized.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, resized / jnp.where(peak > 0, peak, 1.0), 0.0)


def gradcam(model: nn.Module, variables: Any, x: jax.Array, classes: jax.Array, *,
            layer: LayerPath, size: int = IMAGE_SIZE) -> jax.Array:
    """Grad-CAM heat maps, float32 (N, size, size) in [0, 1], for the given classes."""
    return upsample_and_scale(gradcam_maps(model, variables, x, classes, layer), size)


def jitted_gradcam(model: nn.Module, layer: LayerPath, size: int = IMAGE_SIZE
                   ) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """gradcam compiled for one model and layer: fn(variables, x, classes)."""
    return jax.jit(functools.partial(gradcam, model, layer=layer, size=size))
