"""A config's network: the model its name, dtype, widths and transfer settings describe."""
from __future__ import annotations

import jax.numpy as jnp

from fer_jax.data.types import IMAGE_SIZE
from fer_jax.kernels import resolve_kernels
from fer_jax.models.registry import IMAGENET_ARCHITECTURES, get_model


def transfer_model_kwargs(config) -> dict:
    """Model attributes the transfer settings imply for an ImageNet architecture (pretrained
    or not, so a from-scratch baseline is the same network); config.model_kwargs should
    be merged over them. Other models get none."""
    if config.model not in IMAGENET_ARCHITECTURES:
        return {}
    t = config.transfer
    kwargs = {"num_input_channels": 1 if t.gray_to_rgb == "sum" else 3}
    if t.input_size and t.input_size != IMAGE_SIZE:
        kwargs["input_size"] = int(t.input_size)
    return kwargs


def build_model(config, *, bn_axis_name: str | None = None):
    """The config's model; the compute dtype and widths come from the config."""
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    kwargs = {**transfer_model_kwargs(config), **dict(config.model_kwargs)}
    kwargs.setdefault("kernels", resolve_kernels(config.get("kernels", "auto")))
    return get_model(config.model, dtype=dtype, bn_axis_name=bn_axis_name, **kwargs)
