"""torchvision state dicts (resnet18, resnet34, vgg16_bn, vgg19_bn) -> this project's Flax variables.

Every tensor is mapped by name through an explicit table (`layer_maps`); a file with
missing or unexpected keys, a shape other than the architecture's, or a non-finite
value is refused with a list of what is wrong, never loaded in part. The converted
variables keep the ImageNet layout (3 input channels, 1000-class head);
`adapt_first_layer` then fits the first conv to grey input and, optionally, folds
ImageNet's per-channel normalization into it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fer_jax.data.normalization import check_norm
from fer_jax.data.readers import file_digest
from fer_jax.engine.restore_checks import check_readable
from fer_jax.errors import DataError, UserError
from fer_jax.models.registry import IMAGENET_ARCHITECTURES
from fer_jax.models.resnet import RESNET18_STAGES, RESNET34_STAGES, ResNet
from fer_jax.models.vgg_imagenet import (CLASSIFIER_POOL, VGG16_STAGES, VGG19_STAGES,
                                         VGGImageNet)
from fer_jax.transfer.torch_file import read_state_dict

GRAY_TO_RGB = ("sum", "repeat")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
# The ImageNet classifier's last layer: converted, but never loaded into a FER model.
HEAD_KEYS = ("logits",)
CONVERTED_FORMAT = "fer_jax converted torchvision weights v1"
CONVERSION_FILE = "conversion.json"
VARIABLES_DIR = "variables"
_REFERENCE_INPUT = 64  # any size the reference model accepts; shapes do not depend on it
_OPTIONAL_SUFFIX = ".num_batches_tracked"  # BatchNorm's counter: not a weight; absent in old files


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """One torchvision layer and the Flax module that takes its tensors.

    kind: "conv" (weight), "conv_bias" (weight, bias), "bn" (weight, bias, running_mean,
    running_var), "dense" (weight, bias) or "dense_chw" (a Dense after a (C, 7, 7)
    flatten, whose columns are reordered to this project's (7, 7, C) flatten).
    """

    torch: str
    flax: tuple[str, ...]
    kind: str


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    family: str  # "resnet" or "vgg"
    stage_sizes: tuple[int, ...]
    first_conv: tuple[str, ...]
    first_bn: tuple[str, ...]


ARCH_SPECS: Mapping[str, ArchSpec] = {
    "resnet18": ArchSpec("resnet", RESNET18_STAGES, ("stem", "Conv_0"), ("stem", "BatchNorm_0")),
    "resnet34": ArchSpec("resnet", RESNET34_STAGES, ("stem", "Conv_0"), ("stem", "BatchNorm_0")),
    "vgg16_bn": ArchSpec("vgg", VGG16_STAGES, ("block1_conv1", "conv"), ("block1_conv1", "bn")),
    "vgg19_bn": ArchSpec("vgg", VGG19_STAGES, ("block1_conv1", "conv"), ("block1_conv1", "bn")),
}
ARCHITECTURES: tuple[str, ...] = IMAGENET_ARCHITECTURES  # the keys of ARCH_SPECS, in order

# (torch tensor suffix, variable collection, Flax leaf name), per kind.
_TENSORS = {
    "conv": (("weight", "params", "kernel"),),
    "conv_bias": (("weight", "params", "kernel"), ("bias", "params", "bias")),
    "bn": (("weight", "params", "scale"), ("bias", "params", "bias"),
           ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")),
    "dense": (("weight", "params", "kernel"), ("bias", "params", "bias")),
    "dense_chw": (("weight", "params", "kernel"), ("bias", "params", "bias")),
}


def arch_spec(arch: str) -> ArchSpec:
    if arch not in ARCH_SPECS:
        raise UserError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    return ARCH_SPECS[arch]


def layer_maps(arch: str) -> list[LayerMap]:
    """The complete torchvision -> Flax table of ARCH (its ImageNet classifier included)."""
    spec = arch_spec(arch)
    if spec.family == "resnet":
        maps = [LayerMap("conv1", ("stem", "Conv_0"), "conv"),
                LayerMap("bn1", ("stem", "BatchNorm_0"), "bn")]
        for stage, num_blocks in enumerate(spec.stage_sizes, start=1):
            for block in range(num_blocks):
                src, dst = f"layer{stage}.{block}", f"stage{stage}_block{block + 1}"
                maps += [LayerMap(f"{src}.conv1", (dst, "conv_bn_relu", "Conv_0"), "conv"),
                         LayerMap(f"{src}.bn1", (dst, "conv_bn_relu", "BatchNorm_0"), "bn"),
                         LayerMap(f"{src}.conv2", (dst, "conv2"), "conv"),
                         LayerMap(f"{src}.bn2", (dst, "bn2"), "bn")]
                if stage > 1 and block == 0:
                    maps += [LayerMap(f"{src}.downsample.0", (dst, "proj_conv"), "conv"),
                             LayerMap(f"{src}.downsample.1", (dst, "proj_bn"), "bn")]
        return maps + [LayerMap("fc", ("logits",), "dense")]
    # torchvision's vgg features: per conv [Conv2d, BatchNorm2d, ReLU], per stage a MaxPool2d.
    maps, index = [], 0
    for stage, num_convs in enumerate(spec.stage_sizes, start=1):
        for i in range(1, num_convs + 1):
            name = f"block{stage}_conv{i}"
            maps += [LayerMap(f"features.{index}", (name, "conv"), "conv_bias"),
                     LayerMap(f"features.{index + 1}", (name, "bn"), "bn")]
            index += 3
        index += 1
    return maps + [LayerMap("classifier.0", ("fc1",), "dense_chw"),
                   LayerMap("classifier.3", ("fc2",), "dense"),
                   LayerMap("classifier.6", ("logits",), "dense")]


def expected_keys(arch: str) -> set[str]:
    """The state-dict keys a torchvision ARCH file must hold (BatchNorm counters aside)."""
    return {f"{m.torch}.{suffix}" for m in layer_maps(arch) for suffix, _, _ in _TENSORS[m.kind]}


def guess_architecture(keys: Iterable[str]) -> str | None:
    """The supported architecture whose key set the file has exactly, if any."""
    weights = {k for k in keys if not k.endswith(_OPTIONAL_SUFFIX)}
    return next((arch for arch in ARCHITECTURES if expected_keys(arch) == weights), None)


def reference_model(arch: str, **overrides: Any) -> nn.Module:
    """ARCH as torchvision builds it for ImageNet: 3 channels, 1000 classes, ImageNet widths."""
    spec = arch_spec(arch)
    if spec.family == "resnet":
        attributes = dict(stage_sizes=spec.stage_sizes, stem="imagenet", num_input_channels=3,
                          num_classes=IMAGENET_CLASSES)
        return ResNet(**{**attributes, **overrides})
    attributes = dict(stage_sizes=spec.stage_sizes, head="classifier", num_input_channels=3,
                      num_classes=IMAGENET_CLASSES)
    return VGGImageNet(**{**attributes, **overrides})


def variable_shapes(model: nn.Module, input_size: int = _REFERENCE_INPUT) -> dict:
    """{collection: {path tuple: shape}} of MODEL's variables, without computing any."""
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, input_size, input_size, 3)),
                           train=False))
    return {collection: {path: leaf.shape for path, leaf in _flatten(tree).items()}
            for collection, tree in abstract.items()}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str, *,
                       reference: nn.Module | None = None, source: str = "state dict") -> dict:
    """{"params", "batch_stats"} in the ImageNet layout, every tensor checked against REFERENCE
    (default: reference_model(arch)); any problem raises DataError listing all of them."""
    maps = layer_maps(arch)
    shapes = variable_shapes(reference or reference_model(arch))
    required = expected_keys(arch)
    present = {k for k in state_dict if not k.endswith(_OPTIONAL_SUFFIX)}
    problems = []
    missing, unexpected = sorted(required - present), sorted(present - required)
    if missing:
        problems.append(f"missing keys: {abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {abbreviate(unexpected)}")
    if problems:
        guess = guess_architecture(state_dict)
        hint = (f"the file holds {guess} weights, not {arch}: use --arch {guess} (model {guess})"
                if guess else f"not a torchvision {arch} state dict")
        raise DataError(source, f"{hint}; " + "; ".join(problems))

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    bad_shapes, bad_values = [], []
    for layer in maps:
        for suffix, collection, leaf in _TENSORS[layer.kind]:
            key = f"{layer.torch}.{suffix}"
            path = layer.flax + (leaf,)
            if path not in shapes.get(collection, {}):
                raise UserError(f"the reference model has no {'/'.join(path)} for {key}: "
                                "it is not this architecture")
            tensor = np.asarray(state_dict[key])
            want = _torch_shape(layer.kind, suffix, shapes[collection][path])
            if tensor.shape != want:
                bad_shapes.append(f"{key} is {tuple(tensor.shape)}, {arch} has {want}")
                continue
            values = _as_float32(tensor)
            if values is None or not np.all(np.isfinite(values)):
                bad_values.append(key)
                continue
            variables[collection][path] = _to_flax(layer.kind, suffix, values,
                                                   shapes[collection][path])
    if bad_shapes:
        problems.append(f"shapes differ: {abbreviate(bad_shapes)}")
    if bad_values:
        problems.append(f"not finite floating-point values: {abbreviate(bad_values)}")
    if problems:
        raise DataError(source, f"not usable as {arch} weights; " + "; ".join(problems))
    return {collection: _unflatten(tree) for collection, tree in variables.items()}


def _as_float32(tensor: np.ndarray) -> np.ndarray | None:
    """float32 copy of a floating-point tensor (float16/bfloat16/float64 too); None otherwise."""
    if tensor.dtype.kind != "f" and tensor.dtype.name != "bfloat16":
        return None
    return tensor.astype(np.float32)


def _torch_shape(kind: str, suffix: str, flax_shape: tuple) -> tuple:
    if suffix != "weight" or kind == "bn":
        return tuple(flax_shape)
    if kind in ("conv", "conv_bias"):
        kh, kw, cin, cout = flax_shape
        return (cout, cin, kh, kw)
    return (flax_shape[1], flax_shape[0])  # dense, dense_chw: (out, in)


def _to_flax(kind: str, suffix: str, tensor: np.ndarray, flax_shape: tuple) -> np.ndarray:
    if suffix != "weight" or kind == "bn":
        return tensor
    if kind in ("conv", "conv_bias"):
        return np.ascontiguousarray(tensor.transpose(2, 3, 1, 0))
    if kind == "dense_chw":
        cells = CLASSIFIER_POOL * CLASSIFIER_POOL
        out, channels = tensor.shape[0], tensor.shape[1] // cells
        chw = tensor.reshape(out, channels, CLASSIFIER_POOL, CLASSIFIER_POOL)
        return np.ascontiguousarray(chw.transpose(2, 3, 1, 0).reshape(flax_shape))
    return np.ascontiguousarray(tensor.T)


def adapt_first_layer(variables: dict, arch: str, *, gray_to_rgb: str,
                      pixel_norm: Mapping[str, float] | None = None) -> dict:
    """The converted variables fitted to this project's grey input (a new tree; input unchanged).

    pixel_norm={"mean", "std"} (the run's normalization, on the [0, 1] pixel scale) folds
    ImageNet's per-channel normalization into the first conv: on x = (p - mean) / std the
    model then computes what torchvision's computes on (p - IMAGENET_MEAN) / IMAGENET_STD,
    exactly away from the first conv's zero-padded border. The constant part goes into
    the first BatchNorm's running mean (training-mode BatchNorm removes it anyway).
    gray_to_rgb="sum" sums the first conv's kernel over RGB (for a 1-channel model);
    "repeat" keeps 3 channels (the model repeats the grey channel).
    """
    if gray_to_rgb not in GRAY_TO_RGB:
        raise UserError(f"unknown gray_to_rgb {gray_to_rgb!r}; expected one of {', '.join(GRAY_TO_RGB)}")
    spec = arch_spec(arch)
    params, stats = _flatten(variables["params"]), _flatten(variables["batch_stats"])
    kernel_path, mean_path = spec.first_conv + ("kernel",), spec.first_bn + ("mean",)
    kernel = np.asarray(params[kernel_path], np.float64)
    if kernel.shape[2] != 3:
        raise UserError(f"the first conv of these {arch} weights has {kernel.shape[2]} input "
                        "channels, not ImageNet's 3: already adapted?")
    mean = np.asarray(stats[mean_path], np.float64)
    if pixel_norm is not None:
        pixel_mean, pixel_std = check_norm(pixel_norm, "pixel_norm")
        imagenet_mean, imagenet_std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        scale = pixel_std / imagenet_std
        shift = (pixel_mean - imagenet_mean) / imagenet_std
        mean = mean - np.einsum("hwco,c->o", kernel, shift)
        kernel = kernel * scale[None, None, :, None]
    if gray_to_rgb == "sum":
        kernel = kernel.sum(axis=2, keepdims=True)
    params[kernel_path] = kernel.astype(np.float32)
    stats[mean_path] = mean.astype(np.float32)
    return {"params": _unflatten(params), "batch_stats": _unflatten(stats)}


# ----------------------------------------------------------------- files and checkpoints

def read_pretrained(source: str | os.PathLike, arch: str) -> dict:
    """Converted ImageNet-layout variables from a torch.save file or a `fer_jax.convert` folder."""
    source = pathlib.Path(source)
    if source.is_dir():
        return load_converted(source, arch)
    return convert_state_dict(read_state_dict(source), arch, source=str(source))


def save_converted(variables: dict, out_dir: str | os.PathLike, arch: str, source: str) -> pathlib.Path:
    """Writes OUT_DIR/variables (Orbax) and OUT_DIR/conversion.json (what it is, from what)."""
    import orbax.checkpoint as ocp

    out_dir = pathlib.Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not an empty folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out_dir / VARIABLES_DIR, variables)
        checkpointer.wait_until_finished()
    info = {"format": CONVERTED_FORMAT, "arch": arch, "source": str(source),
            "source_sha256": file_digest(source).hex() if os.path.isfile(source) else None,
            "layout": "ImageNet: 3 input channels, 1000-class head; grey adaptation and "
                      "normalization folding happen when it is loaded"}
    (out_dir / CONVERSION_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def load_converted(directory: str | os.PathLike, arch: str) -> dict:
    """The variables `save_converted` wrote, checked to be ARCH's (names and shapes)."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    info_path = directory / CONVERSION_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        raise DataError(directory, f"not a folder written by `python -m fer_jax.convert` "
                                   f"(no readable {CONVERSION_FILE})") from None
    if info.get("format") != CONVERTED_FORMAT:
        raise DataError(info_path, f"unknown format {info.get('format')!r}")
    if info.get("arch") != arch:
        raise DataError(directory, f"holds {info.get('arch')} weights, not {arch}")
    check_readable(directory)  # a damaged folder is refused before Orbax's asynchronous restore
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory / VARIABLES_DIR)
    except Exception as err:  # Orbax raises many types for a damaged folder
        raise DataError(directory, f"cannot restore the converted weights ({type(err).__name__}: "
                                   f"{' '.join(str(err).split())[:300]})") from None
    restored = jax.tree.map(lambda a: np.asarray(a, np.float32), dict(restored))
    shapes = variable_shapes(reference_model(arch))
    got = {c: {p: leaf.shape for p, leaf in _flatten(restored.get(c, {})).items()} for c in shapes}
    if got != shapes:
        raise DataError(directory, f"the converted weights do not have {arch}'s variables or shapes")
    return {c: restored[c] for c in ("params", "batch_stats")}




# ------------------------------------------------------------------------------ trees

def _flatten(tree: Mapping) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat))


def num_values(variables: Mapping[str, Any]) -> int:
    """How many numbers the variables hold."""
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(dict(variables)))


def abbreviate(items: list[str], limit: int = 8) -> str:
    """The first LIMIT items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
