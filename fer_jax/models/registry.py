"""Models by registry name: get_model("resnet18", dtype="bfloat16") and the list of names."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.errors import UserError
from fer_jax.kernels import KERNELS
from fer_jax.models.cbam import CBAMCNN
from fer_jax.models.deep_cnn import DeepCNN
from fer_jax.models.resnet import RESNET18_STAGES, RESNET34_STAGES, STEMS, ResNet
from fer_jax.models.simple_cnn import SimpleCNN
from fer_jax.models.vgg import VGGFer
from fer_jax.models.vgg_imagenet import HEADS, VGG16_STAGES, VGG19_STAGES, VGGImageNet

# name -> (module class, the attributes that make it this study's architecture)
_SPECS: Mapping[str, tuple[type[nn.Module], Mapping[str, Any]]] = {
    "simple_cnn_v1": (SimpleCNN, {"batch_norm": False}),
    "simple_cnn_v2": (SimpleCNN, {"batch_norm": True}),
    "deep_cnn_v1": (DeepCNN, {"widths": (32, 64, 128, 256), "dense_width": 512,
                              "dropout": 0.5, "spatial_dropout": 0.0}),
    "deep_cnn_v2": (DeepCNN, {"widths": (32, 64, 128, 192), "dense_width": 256,
                              "dropout": 0.7, "spatial_dropout": 0.1,
                              "spatial_dropout_blocks": 2}),
    "cbam_cnn": (CBAMCNN, {}),
    "resnet18": (ResNet, {"stage_sizes": RESNET18_STAGES}),
    "resnet34": (ResNet, {"stage_sizes": RESNET34_STAGES}),
    "vgg_fer": (VGGFer, {}),
    # torchvision's layouts, for converted ImageNet weights (fer_jax.transfer).
    "vgg16_bn": (VGGImageNet, {"stage_sizes": VGG16_STAGES}),
    "vgg19_bn": (VGGImageNet, {"stage_sizes": VGG19_STAGES}),
}

MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)
# The original study's architectures (what the benchmark compares with PyTorch); the rest
# exist to take converted ImageNet weights.
# The torchvision architectures whose ImageNet weights fer_jax.transfer converts.
IMAGENET_ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet34", "vgg16_bn", "vgg19_bn")
STUDY_MODEL_NAMES: tuple[str, ...] = tuple(n for n in MODEL_NAMES if n not in ("vgg16_bn", "vgg19_bn"))

_FLAX_INTERNAL_FIELDS = ("parent", "name")


def get_model(name: str, /, **overrides: Any) -> nn.Module:
    """The named model, with attributes (num_classes, dtype, bn_axis_name, dropout, ...)
    overridden; unknown names and attributes, and ill-typed values, raise UserError."""
    if name not in _SPECS:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    cls, defaults = _SPECS[name]
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in _FLAX_INTERNAL_FIELDS]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UserError(f"model {name!r} has no attribute(s) {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(allowed)}")
    attributes = dict(defaults)
    for key, value in overrides.items():
        attributes[key] = _checked(name, key, value)
    return cls(**attributes)


def _checked(model: str, key: str, value: Any) -> Any:
    """The override in the form the module wants (tuples, dtypes), or UserError."""
    check = _CHECKS.get(key)
    if check is None and "dropout" in key and key != "spatial_dropout_blocks":
        check = _rate
    if check is None:
        return value
    try:
        return check(value)
    except (TypeError, ValueError) as err:
        raise UserError(f"model {model!r}: bad value {value!r} for {key!r}: {err}") from None


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError("expected a positive integer")
    return int(value)


def _positive_ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError("expected a sequence of positive integers")
    values = tuple(_positive_int(v) for v in value)
    if not values:
        raise ValueError("expected at least one value")
    return values


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError("expected a rate in [0, 1)")
    return float(value)


def _dtype(value: Any) -> Any:
    dtype = jnp.dtype(value)  # accepts "bfloat16" from a config as well as jnp.bfloat16
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError("expected a floating-point dtype")
    return dtype


def _stem(value: Any) -> str:
    if value not in STEMS:
        raise ValueError(f"expected one of {', '.join(STEMS)}")
    return value


def _head(value: Any) -> str:
    if value not in HEADS:
        raise ValueError(f"expected one of {', '.join(HEADS)}")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError("expected an integer >= 0")
    return int(value)


def _input_channels(value: Any) -> int:
    if _positive_int(value) not in (1, 3):
        raise ValueError("expected 1 (grey) or 3 (grey repeated to RGB)")
    return int(value)


def _axis_name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("expected an axis name (str) or None")
    return value


def _kernels(value: Any) -> str:
    if value not in KERNELS:
        raise ValueError(f"expected one of {', '.join(KERNELS)} (resolve 'auto' with "
                         "fer_jax.kernels.resolve_kernels first)")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


_CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "num_classes": _positive_int,
    "dtype": _dtype,
    "bn_axis_name": _axis_name,
    "widths": _positive_ints,
    "stage_sizes": _positive_ints,
    "dense_width": _positive_int,
    "width": _positive_int,
    "reduction": _positive_int,
    "spatial_dropout_blocks": _positive_int,
    "batch_norm": _flag,
    "stem": _stem,
    "num_input_channels": _input_channels,
    "head": _head,
    "classifier_width": _positive_int,
    "input_size": _non_negative_int,
    "kernels": _kernels,
}
