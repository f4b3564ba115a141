"""Fine-tuning controls: pretrained weights into a fresh model, frozen parts, per-part learning rates.

The learning rates themselves come from the one optimizer of every run
(fer_jax.engine.optim.make_optimizer), to which `param_labels` gives the groups.

Parts are named by the model's top-level parameter keys: a freeze name matches a key
equal to it or starting with it and "_" ("stage1" freezes stage1_block1, stage1_block2,
...; "block2" a VGG stage; "stem"), and "backbone" means every key but the head. The
head (`logits`) is the only part that pretrained weights never provide.
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fer_jax.engine.optim import BACKBONE, FROZEN, HEAD
from fer_jax.errors import UserError
from fer_jax.transfer import convert

HEAD_KEYS = convert.HEAD_KEYS
ALL_BUT_HEAD = "backbone"


# --------------------------------------------------------------------- which part is what

def freeze_choices(params: Mapping[str, Any]) -> list[str]:
    """The names `freeze` accepts for a model with these params."""
    keys = [k for k in params if k not in HEAD_KEYS]
    prefixes = {k.split("_")[0] for k in keys if "_" in k}
    return [ALL_BUT_HEAD] + sorted(prefixes | set(keys))


def frozen_keys(keys: Iterable[str], freeze: Sequence[str], *, strict: bool = True) -> set[str]:
    """The top-level keys that FREEZE names; strict: an unknown name raises UserError."""
    keys = list(keys)
    if isinstance(freeze, str):  # a bare string would be read letter by letter
        freeze = (freeze,)
    frozen: set[str] = set()
    for name in freeze:
        if name in HEAD_KEYS:
            raise UserError(f"transfer.freeze: {name!r} is the new head, which must train")
        if name == ALL_BUT_HEAD:
            matched = [k for k in keys if k not in HEAD_KEYS]
        else:
            matched = [k for k in keys if k == name or k.startswith(name + "_")]
        if not matched and strict:
            raise UserError(f"transfer.freeze: no part named {name!r}; valid: "
                            f"{', '.join(freeze_choices(dict.fromkeys(keys)))}")
        frozen.update(matched)
    return frozen


def param_labels(params: Mapping[str, Any], freeze: Sequence[str]) -> dict:
    """Each leaf labelled HEAD, BACKBONE or FROZEN by its top-level key."""
    frozen = frozen_keys(params, freeze)

    def label(key: str) -> str:
        if key in frozen:
            return FROZEN
        return HEAD if key in HEAD_KEYS else BACKBONE

    return {key: jax.tree.map(lambda _, k=key: label(k), subtree) for key, subtree in params.items()}


# ----------------------------------------------------------------------------- settings

def is_imagenet_weights(init_from: str | os.PathLike) -> bool:
    """Whether INIT_FROM names ImageNet weights (a torch.save file, or a folder that
    `python -m fer_jax.convert` wrote) rather than a fer_jax run, which is a folder."""
    if not init_from:
        return False
    path = pathlib.Path(init_from)
    if path.is_dir():
        return (path / convert.CONVERSION_FILE).is_file()
    return path.is_file() or path.suffix in (".pth", ".pt")


def check_transfer_config(config) -> None:
    """UserError for transfer settings that cannot work (the rest of the config is
    checked by fer_jax.config.validate)."""
    t = config.transfer
    if t.gray_to_rgb not in convert.GRAY_TO_RGB:
        raise UserError(f"transfer.gray_to_rgb must be one of {', '.join(convert.GRAY_TO_RGB)}, "
                        f"got {t.gray_to_rgb!r}")
    if is_imagenet_weights(config.init_from) and pretrained_arch(config) not in convert.ARCHITECTURES:
        raise UserError(f"init_from={config.init_from} (ImageNet weights) needs a model with "
                        f"ImageNet weights ({', '.join(convert.ARCHITECTURES)}), not "
                        f"{pretrained_arch(config)!r}; set model to one of them")
    if t.freeze and not is_imagenet_weights(config.init_from):
        raise UserError(f"transfer.freeze is set but init_from={config.init_from} is a fer_jax run, "
                        "not ImageNet weights (a .pth file or a convert folder): nothing to keep frozen")


def pretrained_arch(config) -> str:
    """The torchvision architecture of ImageNet weights: the model's name (the ImageNet
    models are registered under torchvision's names)."""
    return config.model


# ---------------------------------------------------------------------- frozen BatchNorm

def frozen_batch_stats_mask(batch_stats: Mapping[str, Any], freeze: Sequence[str]) -> dict:
    """True on the BatchNorm statistics of frozen parts (same tree as BATCH_STATS)."""
    frozen = frozen_keys(batch_stats, freeze, strict=False)
    return {key: jax.tree.map(lambda _, f=key in frozen: f, subtree)
            for key, subtree in batch_stats.items()}


def keep_frozen_batch_stats(old: Mapping[str, Any], new: Mapping[str, Any],
                            freeze: Sequence[str]) -> dict:
    """NEW batch_stats with the frozen parts' statistics taken from OLD."""
    mask = frozen_batch_stats_mask(old, freeze)
    return jax.tree.map(lambda frozen, o, n: o if frozen else n, mask, dict(old), dict(new))


def frozen_bn_apply(apply_fn: Callable[..., Any], freeze: Sequence[str]) -> Callable[..., Any]:
    """APPLY_FN in which the frozen parts' BatchNorm layers run as in evaluation even when
    train=True: they normalize with their running statistics and do not update them
    (PyTorch's `module.eval()` on a frozen stage). The variables' top-level keys say
    which layers are frozen."""
    freeze = tuple(freeze)
    if not freeze:
        return apply_fn

    def apply(variables, *args, **kwargs):
        frozen = frozen_keys(variables["params"], freeze)

        def interceptor(next_fun, call_args, call_kwargs, context):
            module = context.module
            if (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
                    and not module.is_initializing() and module.path
                    and module.path[0] in frozen):
                return _batch_norm_inference(module, call_args[0])
            return next_fun(*call_args, **call_kwargs)

        with nn.intercept_methods(interceptor):
            return apply_fn(variables, *args, **kwargs)

    return apply


def _batch_norm_inference(module: nn.BatchNorm, x: jax.Array) -> jax.Array:
    """Flax BatchNorm's use_running_average=True computation, on (..., C) features."""
    dtype = module.dtype or x.dtype
    y = x - module.get_variable("batch_stats", "mean")
    multiplier = jax.lax.rsqrt(module.get_variable("batch_stats", "var") + module.epsilon)
    if module.use_scale:
        multiplier = multiplier * module.get_variable("params", "scale")
    y = y * multiplier
    if module.use_bias:
        y = y + module.get_variable("params", "bias")
    return jnp.asarray(y, dtype)


# ------------------------------------------------------------------ pretrained weights

def load_pretrained(variables: Mapping[str, Any], source: str, arch: str, gray_to_rgb: str, *,
                    pixel_norm: Mapping[str, float] | None = None,
                    log: Callable[[str], None] | None = None) -> dict:
    """VARIABLES (a fresh model's) with every backbone tensor taken from SOURCE.

    SOURCE: a torchvision state dict file or a `python -m fer_jax.convert` folder. The
    head (`logits`) keeps its fresh initialization; pretrained layers the model does not
    have (VGG's fc1/fc2 under the "gap" head) are reported and skipped. A model tensor
    the weights lack, or of another shape, raises UserError listing them all.
    pixel_norm: see convert.adapt_first_layer (ImageNet normalization folded in).
    """
    pretrained = convert.adapt_first_layer(convert.read_pretrained(source, arch), arch,
                                           gray_to_rgb=gray_to_rgb, pixel_norm=pixel_norm)
    merged, report = merge_pretrained(variables, pretrained, arch=arch, gray_to_rgb=gray_to_rgb)
    (log or _stderr)(f"pretrained {arch} weights from {source}: {report['loaded']} tensors loaded; "
                     f"fresh: {', '.join(report['fresh']) or 'none'}; "
                     f"not used: {', '.join(report['unused']) or 'none'}")
    return merged


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], *, arch: str,
                     gray_to_rgb: str) -> tuple[dict, dict]:
    """(VARIABLES with PRETRAINED's tensors, {"loaded": n, "fresh": [...], "unused": [...]})."""
    merged: dict[str, dict] = {}
    missing, mismatched = [], []
    loaded, fresh, unused = 0, set(), set()
    for collection in ("params", "batch_stats"):
        target = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        source = traverse_util.flatten_dict(dict(pretrained.get(collection, {})))
        out, used = {}, set()
        for path, leaf in target.items():
            name = "/".join((collection,) + path)
            if path[0] in HEAD_KEYS:
                out[path] = leaf
                fresh.add(path[0])
            elif path not in source:
                missing.append(name)
            elif tuple(np.shape(source[path])) != tuple(np.shape(leaf)):
                mismatched.append(f"{name} {tuple(np.shape(source[path]))} vs model "
                                  f"{tuple(np.shape(leaf))}")
            else:
                out[path] = jnp.asarray(source[path], dtype=jnp.result_type(leaf))
                used.add(path)
                loaded += 1
        merged[collection] = traverse_util.unflatten_dict(out)
        unused.update(path[0] for path in source if path not in used and path[0] not in HEAD_KEYS)
    if missing or mismatched:
        channels = 1 if gray_to_rgb == "sum" else 3
        problems = ([f"the weights lack {convert.abbreviate(missing)}"] if missing else []) + \
                   ([f"shapes differ: {convert.abbreviate(mismatched)}"] if mismatched else [])
        raise UserError(f"the model is not {arch} as pretrained ({'; '.join(problems)}); build it "
                        f"with the ImageNet layout (ResNet: model_kwargs.stem='imagenet', width 64; "
                        f"VGG: ImageNet widths) and num_input_channels={channels} for "
                        f"transfer.gray_to_rgb={gray_to_rgb!r}")
    for collection in variables:
        if collection not in merged:
            merged[collection] = variables[collection]
    return merged, {"loaded": loaded, "fresh": sorted(fresh), "unused": sorted(unused)}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
