"""PyTorch copies of the fer_jax models (fer_jax/models), for timing against them.

Each module's submodules carry the names Flax gives the matching layers (Conv_0,
BatchNorm_0, ConvBNReLU_3, cbam_1.channel.hidden, stage2_block1.proj_conv, logits...),
so `load_flax_variables` can copy a Flax model's variables in by path, and the tests
can check that both frameworks compute the same function, not only the same shapes.

Layouts follow PyTorch (NCHW tensors, OIHW kernels); flattening before a Dense layer
goes through NHWC order, as Flax's reshape of an NHWC map does, so the Dense weights
are the same matrix. Initialisation follows Flax too: He-normal (fan_out) convs,
LeCun truncated-normal Dense kernels, zero biases.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES
from fer_jax.errors import UserError

# PyTorch's momentum weights the new batch: 0.1 here is Flax's 0.9 (fer_jax.models.layers).
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5
RESNET18_STAGES = (2, 2, 2, 2)
RESNET34_STAGES = (3, 4, 6, 3)
# jax.nn.initializers.truncated_normal's correction: the std of a unit normal cut at +-2.
_TRUNCATED_STD = 0.87962566103423978


# ------------------------------------------------------------------------------ layers

def conv2d(in_channels: int, out_channels: int, kernel: int, *, bias: bool, stride: int = 1
           ) -> nn.Conv2d:
    """Square conv padded by kernel // 2 on every side ('same' at stride 1, as in Flax)."""
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                      bias=bias)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def dense(in_features: int, out_features: int, *, bias: bool = True) -> nn.Linear:
    """Linear with Flax's default initialisation (LeCun normal, truncated at 2 std)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    std = math.sqrt(1.0 / in_features) / _TRUNCATED_STD
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def batch_norm2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


def batch_norm1d(features: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, 2)


def flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W*C) in Flax's order (a view when x is channels_last)."""
    return x.permute(0, 2, 3, 1).flatten(1)


def pooled_size(num_pools: int) -> int:
    """Height (= width) of a 48x48 input after NUM_POOLS 2x2 max-pools (floor, as 'VALID')."""
    size = IMAGE_SIZE
    for _ in range(num_pools):
        size //= 2
    return size


class ConvBNReLU(nn.Module):
    """Conv (no bias), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.Conv_0 = conv2d(in_channels, out_channels, kernel, bias=False, stride=stride)
        self.BatchNorm_0 = batch_norm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.BatchNorm_0(self.Conv_0(x)))


def _add_conv_stages(owner: nn.Module, widths: Sequence[int], convs_per_stage: int
                     ) -> list[list[str]]:
    """Registers ConvBNReLU_0, ConvBNReLU_1, ... on OWNER; returns their names per stage."""
    stages, in_channels, index = [], 1, 0
    for width in widths:
        names = []
        for _ in range(convs_per_stage):
            name = f"ConvBNReLU_{index}"
            owner.add_module(name, ConvBNReLU(in_channels, width))
            names.append(name)
            in_channels, index = width, index + 1
        stages.append(names)
    return stages


# ------------------------------------------------------------------------------ models

class SimpleCNN(nn.Module):
    """fer_jax.models.simple_cnn.SimpleCNN: Conv(kernel_size)-[BN]-ReLU-pool stages, Dense, Dense."""

    def __init__(self, num_classes: int = NUM_CLASSES, batch_norm: bool = False,
                 widths: Sequence[int] = (32, 64), kernel_size: int = 5, dense_width: int = 128,
                 dropout: float = 0.3):
        super().__init__()
        self.batch_norm = batch_norm
        self.num_stages = len(widths)
        in_channels = 1
        for i, width in enumerate(widths):
            self.add_module(f"Conv_{i}", conv2d(in_channels, width, kernel_size,
                                                bias=not batch_norm))
            if batch_norm:
                self.add_module(f"BatchNorm_{i}", batch_norm2d(width))
            in_channels = width
        self.dropout = nn.Dropout(dropout)
        self.Dense_0 = dense(pooled_size(len(widths)) ** 2 * widths[-1], dense_width)
        self.logits = dense(dense_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_stages):
            x = getattr(self, f"Conv_{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"BatchNorm_{i}")(x)
            x = max_pool2(F.relu(x))
        x = self.dropout(flatten_nhwc(x))
        x = self.dropout(F.relu(self.Dense_0(x)))
        return self.logits(x).float()


class DeepCNN(nn.Module):
    """fer_jax.models.deep_cnn.DeepCNN: stages of two ConvBNReLU and a pool, global average
    pool, Dense (no bias)+BN+ReLU+Dropout, Dense; Dropout2d after the first stages (v2)."""

    def __init__(self, num_classes: int = NUM_CLASSES, widths: Sequence[int] = (32, 64, 128, 256),
                 dense_width: int = 512, dropout: float = 0.5, spatial_dropout: float = 0.0,
                 spatial_dropout_blocks: int = 2):
        super().__init__()
        self.stages = _add_conv_stages(self, widths, 2)
        self.spatial_dropout_blocks = spatial_dropout_blocks if spatial_dropout > 0 else 0
        self.spatial_dropout = nn.Dropout2d(spatial_dropout)
        self.Dense_0 = dense(widths[-1], dense_width, bias=False)
        self.BatchNorm_0 = batch_norm1d(dense_width)
        self.dropout = nn.Dropout(dropout)
        self.logits = dense(dense_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, names in enumerate(self.stages):
            for name in names:
                x = getattr(self, name)(x)
            x = max_pool2(x)
            if block < self.spatial_dropout_blocks:
                x = self.spatial_dropout(x)
        x = x.mean(dim=(2, 3))
        x = self.dropout(F.relu(self.BatchNorm_0(self.Dense_0(x))))
        return self.logits(x).float()


class ChannelAttention(nn.Module):
    """sigmoid(MLP(avg-pool) + MLP(max-pool)) per channel, one MLP shared by both."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.hidden = dense(channels, hidden)
        self.out = dense(hidden, channels)

    def mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return x * weights[:, :, None, None]


class SpatialAttention(nn.Module):
    """sigmoid(conv7x7([channel mean, channel max])) per position."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = conv2d(2, 1, kernel, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class CBAMCNN(nn.Module):
    """fer_jax.models.cbam.CBAMCNN: stages of two ConvBNReLU, CBAM, pool; global average
    pool; Dense (no bias)+BN+ReLU+Dropout; Dense."""

    def __init__(self, num_classes: int = NUM_CLASSES, widths: Sequence[int] = (32, 64, 128),
                 dense_width: int = 256, dropout: float = 0.5, reduction: int = 16):
        super().__init__()
        self.stages = _add_conv_stages(self, widths, 2)
        for stage, width in enumerate(widths):
            self.add_module(f"cbam_{stage}", CBAM(width, reduction))
        self.Dense_0 = dense(widths[-1], dense_width, bias=False)
        self.BatchNorm_0 = batch_norm1d(dense_width)
        self.dropout = nn.Dropout(dropout)
        self.logits = dense(dense_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage, names in enumerate(self.stages):
            for name in names:
                x = getattr(self, name)(x)
            x = max_pool2(getattr(self, f"cbam_{stage}")(x))
        x = x.mean(dim=(2, 3))
        x = self.dropout(F.relu(self.BatchNorm_0(self.Dense_0(x))))
        return self.logits(x).float()


class BasicBlock(nn.Module):
    """Two Conv3x3+BN, identity or 1x1-conv+BN projection shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, features: int, stride: int = 1):
        super().__init__()
        self.conv_bn_relu = ConvBNReLU(in_channels, features, stride=stride)
        self.conv2 = conv2d(features, features, 3, bias=False)
        self.bn2 = batch_norm2d(features)
        self.has_projection = stride != 1 or in_channels != features
        if self.has_projection:
            self.proj_conv = conv2d(in_channels, features, 1, bias=False, stride=stride)
            self.proj_bn = batch_norm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.conv_bn_relu(x)))
        shortcut = self.proj_bn(self.proj_conv(x)) if self.has_projection else x
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    """fer_jax.models.resnet.ResNet with its default "cifar" stem (Conv3x3/1, no max-pool)
    and grey input; stage widths width*(1, 2, 4, 8), strides 1, 2, 2, 2."""

    def __init__(self, num_classes: int = NUM_CLASSES,
                 stage_sizes: Sequence[int] = RESNET18_STAGES, width: int = 64):
        super().__init__()
        self.stem = ConvBNReLU(1, width, 3)
        self.block_names = []
        in_channels = width
        for stage, num_blocks in enumerate(stage_sizes):
            features = width * 2 ** stage
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                self.add_module(name, BasicBlock(in_channels, features, stride))
                self.block_names.append(name)
                in_channels = features
        self.logits = dense(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.logits(x.mean(dim=(2, 3))).float()


class VGGFer(nn.Module):
    """fer_jax.models.vgg.VGGFer: stages of two ConvBNReLU, pool, Dropout; flatten;
    (Dense+ReLU+Dropout) x 2; Dense."""

    def __init__(self, num_classes: int = NUM_CLASSES, widths: Sequence[int] = (64, 128, 256, 512),
                 dense_width: int = 1024, dropout: float = 0.5, stage_dropout: float = 0.2):
        super().__init__()
        self.stages = _add_conv_stages(self, widths, 2)
        self.stage_dropout = nn.Dropout(stage_dropout)
        self.Dense_0 = dense(pooled_size(len(widths)) ** 2 * widths[-1], dense_width)
        self.Dense_1 = dense(dense_width, dense_width)
        self.dropout = nn.Dropout(dropout)
        self.logits = dense(dense_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for names in self.stages:
            for name in names:
                x = getattr(self, name)(x)
            x = self.stage_dropout(max_pool2(x))
        x = flatten_nhwc(x)
        for layer in (self.Dense_0, self.Dense_1):
            x = self.dropout(F.relu(layer(x)))
        return self.logits(x).float()


# ---------------------------------------------------------------------------- registry

# The same names and attributes as fer_jax.models.registry: each name's class and the
# attributes it sets, which an experiment's model_kwargs may override.
_REGISTRY: Mapping[str, tuple[type, Mapping[str, Any]]] = {
    "simple_cnn_v1": (SimpleCNN, dict(batch_norm=False)),
    "simple_cnn_v2": (SimpleCNN, dict(batch_norm=True)),
    "deep_cnn_v1": (DeepCNN, dict(widths=(32, 64, 128, 256), dense_width=512, dropout=0.5,
                                  spatial_dropout=0.0)),
    "deep_cnn_v2": (DeepCNN, dict(widths=(32, 64, 128, 192), dense_width=256, dropout=0.7,
                                  spatial_dropout=0.1, spatial_dropout_blocks=2)),
    "cbam_cnn": (CBAMCNN, {}),
    "resnet18": (ResNet, dict(stage_sizes=RESNET18_STAGES)),
    "resnet34": (ResNet, dict(stage_sizes=RESNET34_STAGES)),
    "vgg_fer": (VGGFer, {}),
}

TORCH_MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_torch_model(name: str, num_classes: int = NUM_CLASSES,
                      model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The PyTorch copy of the registry's model NAME, with MODEL_KWARGS (an experiment's
    model_kwargs) overriding its attributes."""
    if name not in _REGISTRY:
        raise UserError(f"no PyTorch copy of model {name!r}; valid names: "
                        f"{', '.join(TORCH_MODEL_NAMES)}")
    cls, defaults = _REGISTRY[name]
    attributes = [p for p in inspect.signature(cls).parameters if p != "num_classes"]
    unknown = sorted(set(model_kwargs or {}) - set(attributes))
    if unknown:
        raise UserError(f"the PyTorch copy of {name} has no attribute(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(attributes)}")
    return cls(num_classes, **{**defaults, **(model_kwargs or {})})


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, as in Flax's batch_stats)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------- weights from Flax

def _lookup(tree: Mapping[str, Any], path: Sequence[str], what: str) -> Mapping[str, Any]:
    node = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"Flax {what} have no entry {'/'.join(path)}")
        node = node[part]
    return node


def _copy(target: torch.Tensor, value: Any, where: str) -> None:
    source = torch.from_numpy(np.array(value, dtype=np.float32))
    if source.shape != target.shape:
        raise ValueError(f"{where}: Flax has shape {tuple(source.shape)}, PyTorch "
                         f"{tuple(target.shape)}: the layers differ")
    target.copy_(source)


def load_flax_variables(model: nn.Module, variables: Mapping[str, Any]) -> None:
    """Copies a Flax model's {"params", "batch_stats"} into MODEL, matched by layer path.

    Every Flax array must find its layer and every layer its arrays, of the same shape
    (KeyError/ValueError otherwise): a copy that loads is the same architecture.
    """
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    copied = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
                continue
            path = name.split(".")
            p = _lookup(params, path, "params")
            if isinstance(module, nn.Conv2d):
                kernel = np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1))  # HWIO -> OIHW
                _copy(module.weight, kernel, f"{name}.kernel")
            elif isinstance(module, nn.Linear):
                _copy(module.weight, np.asarray(p["kernel"]).T, f"{name}.kernel")
            else:
                s = _lookup(stats, path, "batch_stats")
                _copy(module.weight, p["scale"], f"{name}.scale")
                _copy(module.running_mean, s["mean"], f"{name}.mean")
                _copy(module.running_var, s["var"], f"{name}.var")
                copied += 2
            copied += 1
            if module.bias is not None:
                _copy(module.bias, p["bias"], f"{name}.bias")
                copied += 1
    total = sum(len(leaves) for leaves in _leaf_dicts(params)) + \
        sum(len(leaves) for leaves in _leaf_dicts(stats))
    if copied != total:
        raise ValueError(f"copied {copied} of the Flax model's {total} arrays: the layers differ")


def _leaf_dicts(tree: Mapping[str, Any]):
    """The innermost dicts (one per layer) of a nested variables tree."""
    for value in tree.values():
        if isinstance(value, Mapping):
            if any(isinstance(v, Mapping) for v in value.values()):
                yield from _leaf_dicts(value)
            else:
                yield value
