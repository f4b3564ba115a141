"""Transfer learning: torchvision weights -> Flax (checked against PyTorch), loading, fine-tuning.

PyTorch builds torchvision's ResNet / VGG-bn layouts (same module and key names) with
random weights here, so nothing is downloaded. Without PyTorch (the bench extra) those
tests skip, except where CI is set: CI installs the extra, so there they must run.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from fer_jax.cli import convert as convert_cli
from fer_jax.config import apply_overrides, base_config, load_experiment
from fer_jax.data.source import prepare_data
from fer_jax.engine import optim
from fer_jax.engine.checkpoint import resolve_checkpoint, restore_variables
from fer_jax.engine.parallel import DATA_AXIS, StepRunner
from fer_jax.engine.step import TrainState, make_step_fns
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import DataError, UserError, run_cli
from fer_jax.models.from_config import transfer_model_kwargs
from fer_jax.models.registry import IMAGENET_ARCHITECTURES
from fer_jax.models.resnet import ResNet
from fer_jax.models.vgg_imagenet import VGG16_STAGES, VGGImageNet, adaptive_avg_pool, resize_input
from fer_jax.transfer import convert, finetune
from fer_jax.transfer.torch_file import read_state_dict

NARROW_VGG = dict(widths=(8, 16, 16, 24, 24), classifier_width=32, num_classes=10)


# ------------------------------------------------------------ torchvision's layout in PyTorch

def _torch_classes(torch):
    """ResNet (BasicBlock) and VGG-bn with torchvision's attribute names, so state_dict()
    keys are torchvision's: conv1.weight, layer2.0.downsample.0.weight, features.1.running_var..."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class TorchResNet(tnn.Module):
        def __init__(self, stage_sizes, width=64, num_classes=1000):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(width)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            cin = width
            for stage, blocks in enumerate(stage_sizes):
                cout = width * 2 ** stage
                layer = []
                for b in range(blocks):
                    layer.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                    cin = cout
                setattr(self, f"layer{stage + 1}", tnn.Sequential(*layer))
            self.num_stages = len(stage_sizes)
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            features = {"stem": self.relu(self.bn1(self.conv1(x)))}
            x = self.maxpool(features["stem"])
            for stage in range(1, self.num_stages + 1):
                x = features[f"stage{stage}"] = getattr(self, f"layer{stage}")(x)
            features["logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
            return features

    class TorchVGG(tnn.Module):
        def __init__(self, stage_sizes, widths=(64, 128, 256, 512, 512), classifier_width=4096,
                     num_classes=1000):
            super().__init__()
            layers, cin, self.stage_ends = [], 3, []
            for convs, width in zip(stage_sizes, widths):
                for _ in range(convs):
                    layers += [tnn.Conv2d(cin, width, 3, padding=1), tnn.BatchNorm2d(width),
                               tnn.ReLU(inplace=True)]
                    cin = width
                self.stage_ends.append(len(layers) - 1)
                layers.append(tnn.MaxPool2d(2, 2))
            self.features = tnn.Sequential(*layers)
            self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
            self.classifier = tnn.Sequential(
                tnn.Linear(cin * 49, classifier_width), tnn.ReLU(True), tnn.Dropout(),
                tnn.Linear(classifier_width, classifier_width), tnn.ReLU(True), tnn.Dropout(),
                tnn.Linear(classifier_width, num_classes))

        def forward(self, x):
            features = {}
            for index, layer in enumerate(self.features):
                x = layer(x)
                if index == 2:
                    features["block1_conv1"] = x
                if index in self.stage_ends:
                    features[f"stage{self.stage_ends.index(index) + 1}"] = x
            features["logits"] = self.classifier(torch.flatten(self.avgpool(x), 1))
            return features

    return TorchResNet, TorchVGG


def _randomize_batch_norm(torch, model, seed):
    """Non-trivial BatchNorm weights and running statistics (defaults would hide a mix-up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(123)
    return model.eval()


@pytest.fixture(scope="module")
def torch():
    if os.environ.get("CI"):  # CI installs the bench extra: no PyTorch there is a broken install
        import torch
    else:
        torch = pytest.importorskip("torch", reason="PyTorch comes with the bench extra: "
                                                    "pip install -e '.[dev,bench]'")
    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="module")
def torch_nets(torch):
    return _torch_classes(torch)


def _torch_model(torch, torch_nets, arch, seed=0, **kwargs):
    torch.manual_seed(seed)
    resnet_cls, vgg_cls = torch_nets
    spec = convert.ARCH_SPECS[arch]
    cls = resnet_cls if spec.family == "resnet" else vgg_cls
    return _randomize_batch_norm(torch, cls(spec.stage_sizes, **kwargs), seed)


@pytest.fixture(scope="module")
def weight_files(torch, torch_nets, tmp_path_factory):
    """arch -> (PyTorch model, its saved state dict): resnet18, resnet34 and a narrow vgg16_bn."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for arch, kwargs in (("resnet18", {}), ("resnet34", {}), ("vgg16_bn_narrow", NARROW_VGG)):
        model = _torch_model(torch, torch_nets, arch.replace("_narrow", ""), seed=len(files), **kwargs)
        path = folder / f"{arch}.pth"
        torch.save(model.state_dict(), path)
        files[arch] = (model, path)
    return files


def _torch_features(torch, model, gray_nhwc: np.ndarray, channel_inputs: np.ndarray | None = None):
    """PyTorch's features (NHWC numpy) for a grey batch repeated to RGB (or given 3 channels)."""
    rgb = channel_inputs if channel_inputs is not None else np.repeat(gray_nhwc, 3, axis=-1)
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))))
    return {k: (v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy()) for k, v in out.items()}


def _flax_features(model, variables, x):
    logits, state = model.apply(variables, jnp.asarray(x), train=False, capture_intermediates=True,
                                mutable=["intermediates"])
    inter = state["intermediates"]
    features = {"logits": np.asarray(logits)}
    for key, value in inter.items():
        if key != "__call__":
            features[key] = np.asarray(value["__call__"][0])
    return features


def _assert_matches(flax_value, torch_value, what):
    """fp32 agreement to 1e-5 of the feature's scale."""
    scale = max(1.0, float(np.max(np.abs(torch_value))))
    error = float(np.max(np.abs(flax_value - torch_value)))
    assert flax_value.shape == torch_value.shape, what
    assert error <= 1e-5 * scale, f"{what}: max |flax - torch| = {error:.3g} (scale {scale:.3g})"


def _gray_batch(size=64, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 1)).astype(np.float32)


def _fresh_variables(model, size=48, seed=0):
    """Random variables of MODEL's shapes (compiling model.init's RNG takes ~10 s on 2 cores)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)),
                                               train=False))
    rng = np.random.default_rng(seed)
    return {"params": jax.tree.map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(np.float32),
                                   shapes["params"]),
            "batch_stats": jax.tree.map(lambda s: rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32),
                                        shapes["batch_stats"])}


def _flax_model_for(arch, gray_to_rgb, **overrides):
    channels = 1 if gray_to_rgb == "sum" else 3
    return convert.reference_model(arch, num_input_channels=channels, **overrides)


# ------------------------------------------------------------------------- the name table

@pytest.mark.parametrize("arch", convert.ARCHITECTURES)
def test_layer_maps_cover_every_variable_once(arch):
    shapes = convert.variable_shapes(convert.reference_model(arch))
    mapped = [(collection, layer.flax + (leaf,)) for layer in convert.layer_maps(arch)
              for _, collection, leaf in convert._TENSORS[layer.kind]]
    assert len(mapped) == len(set(mapped))
    assert set(mapped) == {(c, path) for c, paths in shapes.items() for path in paths}
    torch_names = [f"{layer.torch}.{suffix}" for layer in convert.layer_maps(arch)
                   for suffix, _, _ in convert._TENSORS[layer.kind]]
    assert len(set(torch_names)) == len(torch_names) == len(convert.expected_keys(arch))


def test_layer_maps_use_torchvision_names():
    names = convert.expected_keys("resnet18")
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.bias", "fc.weight"} <= names and len(names) == 102
    names = convert.expected_keys("vgg19_bn")
    # vgg19_bn: 16 convs, features.49 the last conv, .50 its BatchNorm
    assert {"features.0.bias", "features.1.running_mean", "features.49.weight", "features.50.running_var",
            "classifier.0.weight", "classifier.6.bias"} <= names and "features.51.weight" not in names


# ------------------------------------------------------------------------ reading .pth files

@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_read_state_dict_matches_torch(torch, tmp_path, zip_format):
    base = torch.randn(4, 6)
    state = {"w": torch.randn(3, 4, 5), "transposed": base.t(), "slice": base[1:3, 2:],
             "half": torch.randn(5).half(), "count": torch.tensor(7),
             "param": torch.nn.Parameter(torch.randn(2))}
    path = tmp_path / "x.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    read = read_state_dict(path)
    assert sorted(read) == sorted(state)
    for key, tensor in state.items():
        expected = tensor.detach().numpy()
        assert read[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(read[key], expected, err_msg=key)


def test_read_state_dict_unwraps_checkpoints_and_data_parallel(torch, tmp_path):
    weights = {"module.a": torch.ones(2), "module.b": torch.zeros(3)}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": weights}, path)
    assert sorted(read_state_dict(path)) == ["a", "b"]


# ---------------------------------------------------------------- numerics against PyTorch

@pytest.mark.parametrize("arch,gray_to_rgb", [("resnet18", "sum"), ("resnet18", "repeat"),
                                              ("resnet34", "sum"), ("resnet34", "repeat")])
def test_resnet_matches_pytorch(torch, weight_files, arch, gray_to_rgb):
    torch_model, path = weight_files[arch]
    variables = convert.adapt_first_layer(convert.read_pretrained(path, arch), arch,
                                          gray_to_rgb=gray_to_rgb)
    x = _gray_batch()
    got = _flax_features(_flax_model_for(arch, gray_to_rgb), variables, x)
    want = _torch_features(torch, torch_model, x)
    _assert_matches(got["stem"], want["stem"], "stem")
    for stage, blocks in enumerate(convert.ARCH_SPECS[arch].stage_sizes, start=1):
        _assert_matches(got[f"stage{stage}_block{blocks}"], want[f"stage{stage}"], f"stage{stage}")
    _assert_matches(got["logits"], want["logits"], "logits")


@pytest.mark.parametrize("gray_to_rgb", ["sum", "repeat"])
def test_vgg16_bn_layout_matches_pytorch(torch, weight_files, gray_to_rgb):
    """vgg16_bn's key layout at narrow widths (fast); 96 px leaves a 3x3 map, so the
    adaptive 7x7 pool's overlapping bins and fc1's (C, 7, 7) column order both matter."""
    torch_model, path = weight_files["vgg16_bn_narrow"]
    reference = convert.reference_model("vgg16_bn", **NARROW_VGG)
    variables = convert.convert_state_dict(read_state_dict(path), "vgg16_bn", reference=reference)
    variables = convert.adapt_first_layer(variables, "vgg16_bn", gray_to_rgb=gray_to_rgb)
    x = _gray_batch(size=96)
    got = _flax_features(_flax_model_for("vgg16_bn", gray_to_rgb, **NARROW_VGG), variables, x)
    want = _torch_features(torch, torch_model, x)
    for stage, convs in enumerate(VGG16_STAGES, start=1):
        _assert_matches(got[f"block{stage}_conv{convs}"], want[f"stage{stage}"], f"stage{stage}")
    _assert_matches(got["logits"], want["logits"], "logits")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16_bn", "vgg19_bn"])
def test_full_vgg_bn_matches_pytorch(torch, torch_nets, tmp_path, arch):
    """torchvision's full widths and 4096-wide classifier (138M / 144M values)."""
    torch_model = _torch_model(torch, torch_nets, arch, seed=5)
    path = tmp_path / f"{arch}.pth"
    torch.save(torch_model.state_dict(), path)
    converted = convert.read_pretrained(path, arch)
    x = _gray_batch(size=64, batch=1)
    want = _torch_features(torch, torch_model, x)
    for gray_to_rgb in ("sum", "repeat"):
        variables = convert.adapt_first_layer(converted, arch, gray_to_rgb=gray_to_rgb)
        got = _flax_features(_flax_model_for(arch, gray_to_rgb), variables, x)
        for stage, convs in enumerate(convert.ARCH_SPECS[arch].stage_sizes, start=1):
            _assert_matches(got[f"block{stage}_conv{convs}"], want[f"stage{stage}"], f"stage{stage}")
        _assert_matches(got["logits"], want["logits"], f"logits ({gray_to_rgb})")


@pytest.mark.parametrize("arch,gray_to_rgb", [("resnet18", "sum"), ("vgg16_bn", "repeat")])
def test_imagenet_normalization_folded_into_first_layer(torch, weight_files, arch, gray_to_rgb):
    """On (p - mean) / std the first layer computes what torchvision's computes on
    ImageNet-normalized RGB, away from the zero-padded border."""
    key = arch if arch in weight_files else f"{arch}_narrow"
    torch_model, path = weight_files[key]
    reference = convert.reference_model(arch, **(NARROW_VGG if key != arch else {}))
    norm = {"mean": 0.51, "std": 0.25}
    variables = convert.adapt_first_layer(
        convert.convert_state_dict(read_state_dict(path), arch, reference=reference), arch,
        gray_to_rgb=gray_to_rgb, pixel_norm=norm)
    pixels = np.random.default_rng(1).uniform(size=(2, 48, 48, 1)).astype(np.float32)
    imagenet = (np.repeat(pixels, 3, -1) - np.array(convert.IMAGENET_MEAN, np.float32)) \
        / np.array(convert.IMAGENET_STD, np.float32)
    model = _flax_model_for(arch, gray_to_rgb, **(NARROW_VGG if key != arch else {}))
    got = _flax_features(model, variables, (pixels - norm["mean"]) / norm["std"])
    want = _torch_features(torch, torch_model, None, channel_inputs=imagenet.astype(np.float32))
    name, border = ("stem", 2) if arch == "resnet18" else ("block1_conv1", 1)
    inner = (slice(None), slice(border, -border), slice(border, -border))
    _assert_matches(got[name][inner], want[name][inner], f"{name} interior")
    assert np.max(np.abs(got[name] - want[name])) > 1e-3  # the border does differ: not a no-op test


def test_vgg_helpers_match_pytorch(torch):
    x = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), (7, 7))
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(jnp.asarray(x), 7)),
                               want.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    gray = _gray_batch(size=48, batch=2)
    want = torch.nn.functional.interpolate(torch.from_numpy(gray.transpose(0, 3, 1, 2)), size=(96, 96),
                                           mode="bilinear", align_corners=False)
    np.testing.assert_allclose(np.asarray(resize_input(jnp.asarray(gray), 96)),
                               want.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- bad weight files

def _bad_file_message(path, arch="resnet18") -> str:
    with pytest.raises(DataError) as err:
        convert.read_pretrained(path, arch)
    assert str(path) in str(err.value)
    return str(err.value)


def test_corrupt_file_is_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a PyTorch weights file" in _bad_file_message(junk)
    pickle_like = tmp_path / "pickle_like.pth"
    pickle_like.write_bytes(b"\x80\x02" + np.random.default_rng(1).bytes(4096))
    assert "truncated or damaged" in _bad_file_message(pickle_like)
    assert "not found" in _bad_file_message(tmp_path / "absent.pth")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_file_is_refused(torch, weight_files, tmp_path, zip_format):
    model, _ = weight_files["resnet18"]
    full = tmp_path / "full.pth"
    torch.save(model.state_dict(), full, _use_new_zipfile_serialization=zip_format)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated or damaged" in _bad_file_message(cut)


def test_weights_of_another_architecture_are_named(weight_files):
    _, resnet34 = weight_files["resnet34"]
    message = _bad_file_message(resnet34, "resnet18")
    assert "resnet34 weights, not resnet18" in message and "--arch resnet34" in message
    assert "unexpected keys: layer1.2.bn1.bias" in message
    _, resnet18 = weight_files["resnet18"]
    message = _bad_file_message(resnet18, "vgg16_bn")
    assert "resnet18 weights, not vgg16_bn" in message and "missing keys: classifier.0.bias" in message


def test_wrong_shapes_and_values_are_listed(torch, torch_nets, tmp_path):
    narrow = _torch_model(torch, torch_nets, "resnet18", width=32)
    path = tmp_path / "narrow.pth"
    torch.save(narrow.state_dict(), path)
    message = _bad_file_message(path)
    assert "conv1.weight is (32, 3, 7, 7), resnet18 has (64, 3, 7, 7)" in message
    state = _torch_model(torch, torch_nets, "resnet18").state_dict()
    state["layer3.1.bn2.running_var"][0] = float("nan")
    torch.save(state, path)
    assert "not finite floating-point values: layer3.1.bn2.running_var" in _bad_file_message(path)


def test_pickled_model_is_refused(torch, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    assert "save model.state_dict()" in _bad_file_message(path)


# ------------------------------------------------------------------------------ the command

def test_convert_command_writes_a_checkpoint_that_loads(weight_files, tmp_path, capsys):
    _, path = weight_files["resnet18"]
    out = tmp_path / "converted"
    with pytest.raises(SystemExit) as exit_:
        run_cli(convert_cli.main, [str(path), "--arch", "resnet18", "--out", str(out)])
    assert exit_.value.code == 0
    assert "--set init_from=" in capsys.readouterr().out
    from_pth = convert.read_pretrained(path, "resnet18")
    from_dir = convert.read_pretrained(out, "resnet18")
    same = jax.tree.map(np.array_equal, from_pth, from_dir)
    assert all(jax.tree.leaves(same)) and len(jax.tree.leaves(same)) == 102
    with pytest.raises(DataError, match="holds resnet18 weights, not resnet34"):
        convert.read_pretrained(out, "resnet34")


@pytest.mark.parametrize("case", ["corrupt", "other_arch", "truncated", "existing_out"])
def test_convert_command_errors_are_one_line(weight_files, tmp_path, capsys, case):
    _, path = weight_files["resnet34" if case == "other_arch" else "resnet18"]
    out = tmp_path / "out"
    if case == "corrupt":
        path = tmp_path / "corrupt.pth"
        path.write_bytes(b"not weights at all")
    elif case == "truncated":
        data = weight_files["resnet18"][1].read_bytes()
        path = tmp_path / "truncated.pth"
        path.write_bytes(data[: len(data) - 1000])
    elif case == "existing_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        run_cli(convert_cli.main, [str(path), "--arch", "resnet18", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    if case == "existing_out":
        assert (out / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------- load_pretrained

def test_load_pretrained_fills_the_backbone_and_keeps_the_head(torch, weight_files):
    torch_model, path = weight_files["resnet18"]
    model = ResNet(stem="imagenet", num_input_channels=1)  # 7 classes, grey summed
    fresh = _fresh_variables(model)
    messages = []
    loaded = finetune.load_pretrained(fresh, str(path), "resnet18", "sum", log=messages.append)
    np.testing.assert_array_equal(loaded["params"]["logits"]["kernel"], fresh["params"]["logits"]["kernel"])
    assert "fresh: logits" in messages[0] and "not used: none" in messages[0]
    x = _gray_batch(size=48)
    got = _flax_features(model, loaded, x)
    want = _torch_features(torch, torch_model, x)
    _assert_matches(got["stage4_block2"], want["stage4"], "stage4")


def test_load_pretrained_reports_a_model_of_another_layout(weight_files):
    _, path = weight_files["resnet18"]
    cifar = ResNet(num_input_channels=1)  # 3x3 stem: not torchvision's
    fresh = _fresh_variables(cifar)
    with pytest.raises(UserError, match=r"stem/Conv_0/kernel \(7, 7, 1, 64\) vs model \(3, 3, 1, 64\)"):
        finetune.load_pretrained(fresh, str(path), "resnet18", "sum", log=lambda m: None)
    repeat_model = ResNet(stem="imagenet", num_input_channels=3)
    fresh = _fresh_variables(repeat_model)
    with pytest.raises(UserError, match="num_input_channels=1 for transfer.gray_to_rgb='sum'"):
        finetune.load_pretrained(fresh, str(path), "resnet18", "sum", log=lambda m: None)


def test_load_pretrained_vgg_gap_head_skips_the_classifier(weight_files, tmp_path):
    _, path = weight_files["vgg16_bn_narrow"]
    reference = convert.reference_model("vgg16_bn", **NARROW_VGG)
    converted = convert.convert_state_dict(read_state_dict(path), "vgg16_bn", reference=reference)
    adapted = convert.adapt_first_layer(converted, "vgg16_bn", gray_to_rgb="repeat")
    model = VGGImageNet(widths=NARROW_VGG["widths"], head="gap")
    fresh = _fresh_variables(model)
    merged, report = finetune.merge_pretrained(fresh, adapted, arch="vgg16_bn", gray_to_rgb="repeat")
    assert report["unused"] == ["fc1", "fc2"] and report["fresh"] == ["logits"]
    np.testing.assert_array_equal(merged["batch_stats"]["block5_conv3"]["bn"]["var"],
                                  adapted["batch_stats"]["block5_conv3"]["bn"]["var"])


# ---------------------------------------------------------------------- fine-tuning controls

def _transfer_config(**transfer) -> ml_collections.ConfigDict:
    config = base_config()
    if "transfer" not in config:  # until config.py has the group
        config.transfer = ml_collections.ConfigDict(dict(
            init_from="", gray_to_rgb="sum", input_size=48, freeze=(), backbone_lr_scale=0.1,
            warmup_steps=0, imagenet_normalization=False))
    config.learning_rate = 1e-2
    config.weight_decay = 0.0
    config.transfer.update(transfer)
    return config


def _small_resnet():
    model = ResNet(stem="imagenet", width=8, stage_sizes=(1, 1, 1, 1))
    return model, _fresh_variables(model)


def _toy_params():
    """Top-level parts named as in ResNet; what the optimizer sees of a model."""
    rng = np.random.default_rng(0)
    parts = ("stem", "stage1_block1", "stage1_block2", "stage2_block1", "stage4_block1", "logits")
    return {part: {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                   "bias": rng.normal(size=(4,)).astype(np.float32)} for part in parts}


def _largest_change(before, after, keys):
    return max(float(jnp.max(jnp.abs(a - b)))
               for k in keys for a, b in zip(jax.tree.leaves(before[k]), jax.tree.leaves(after[k])))


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_frozen_parts_do_not_move_and_the_backbone_is_slower(clip):
    params = _toy_params()
    config = _transfer_config(freeze=("stem", "stage1"), backbone_lr_scale=0.1)
    config.grad_clip_norm = clip
    tx = optim.make_optimizer(config, labels=finetune.param_labels(params, config.transfer.freeze))
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 3.0, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert _largest_change(params, new, ["stem", "stage1_block1", "stage1_block2"]) == 0.0
    # AdamW's first step moves each weight by about its learning rate.
    assert _largest_change(params, new, ["logits"]) == pytest.approx(1e-2, rel=1e-3)
    assert _largest_change(params, new, ["stage2_block1", "stage4_block1"]) == pytest.approx(1e-3, rel=1e-3)


def test_warmup_ramps_the_learning_rate():
    params = _toy_params()
    config = _transfer_config()
    config.update({"warmup_epochs": 1.0, "epochs": 3})
    tx = optim.make_optimizer(config, steps_per_epoch=4, labels=finetune.param_labels(params, ()))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    steps = []
    for _ in range(5):
        updates, state = update(grads, state, params)
        steps.append(float(jnp.max(jnp.abs(updates["logits"]["kernel"]))))
    np.testing.assert_allclose(steps, [0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2], rtol=1e-3)


def test_the_converted_architectures_are_the_registrys_imagenet_ones():
    assert tuple(convert.ARCH_SPECS) == IMAGENET_ARCHITECTURES == convert.ARCHITECTURES


def test_transfer_model_kwargs_follow_the_grey_strategy_and_size():
    config = _transfer_config(gray_to_rgb="repeat", input_size=96)
    config.model = "vgg16_bn"
    assert transfer_model_kwargs(config) == {"num_input_channels": 3, "input_size": 96}
    config.transfer.update(gray_to_rgb="sum", input_size=48)
    assert transfer_model_kwargs(config) == {"num_input_channels": 1}
    config.model = "simple_cnn_v1"
    assert transfer_model_kwargs(config) == {}
    config.init_from = "weights.pth"
    with pytest.raises(UserError, match="needs a model with ImageNet weights"):
        finetune.check_transfer_config(config)


def test_unknown_freeze_names_are_refused():
    params = _toy_params()
    with pytest.raises(UserError, match="no part named 'stage9'; valid: backbone, stage1, "
                                        "stage1_block1, stage1_block2, stage2, "):
        finetune.param_labels(params, ("stage9",))
    with pytest.raises(UserError, match="'logits' is the new head"):
        finetune.param_labels(params, ("logits",))
    labels = finetune.param_labels(params, ("backbone",))
    assert set(traverse_util.flatten_dict(labels).values()) == {finetune.FROZEN, finetune.HEAD}


def test_frozen_batch_norm_uses_and_keeps_its_running_statistics():
    model, variables = _small_resnet()
    freeze = ("stem", "stage1")
    x = jnp.asarray(_gray_batch(size=48, batch=4))
    apply = finetune.frozen_bn_apply(model.apply, freeze)
    _, train_state = apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=True)
    _, eval_state = model.apply(variables, x, train=False, mutable=["intermediates"],
                                capture_intermediates=True)
    old, new = variables["batch_stats"], train_state["batch_stats"]
    assert _largest_change(old, new, ["stem", "stage1_block1"]) == 0.0
    assert _largest_change(old, new, ["stage2_block1"]) > 1e-3
    # Frozen stages compute what they compute in evaluation; the next one does not.
    frozen_out = train_state["intermediates"]["stage1_block1"]["__call__"][0]
    np.testing.assert_allclose(frozen_out, eval_state["intermediates"]["stage1_block1"]["__call__"][0],
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(train_state["intermediates"]["stage2_block1"]["__call__"][0],
                           eval_state["intermediates"]["stage2_block1"]["__call__"][0], atol=1e-3)


def test_keep_frozen_batch_stats_restores_only_frozen_parts():
    model, variables = _small_resnet()
    _, state = model.apply(variables, jnp.asarray(_gray_batch(size=48, batch=4)), train=True,
                           mutable=["batch_stats"])
    kept = finetune.keep_frozen_batch_stats(variables["batch_stats"], state["batch_stats"], ("stage1",))
    mask = finetune.frozen_batch_stats_mask(variables["batch_stats"], ("stage1",))
    assert all(jax.tree.leaves(mask["stage1_block1"])) and not any(jax.tree.leaves(mask["stem"]))
    assert _largest_change(variables["batch_stats"], kept, ["stage1_block1"]) == 0.0
    assert _largest_change(state["batch_stats"], kept, ["stem", "stage2_block1"]) == 0.0
    assert _largest_change(variables["batch_stats"], kept, ["stem"]) > 1e-3


def test_a_train_step_leaves_frozen_parts_and_their_statistics_alone():
    """The trainer's own step (jit + shard_map, BatchNorm over the data axis) with the
    fine-tuning optimizer and frozen_bn_apply."""
    model, variables = _small_resnet()
    model = model.clone(bn_axis_name=DATA_AXIS)
    config = _transfer_config(freeze=("stem", "stage1"))
    tx = optim.make_optimizer(config, labels=finetune.param_labels(variables["params"], config.transfer.freeze))
    plateau = optim.make_plateau(config)
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=variables["params"],
                       batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                       plateau_state=plateau.init(variables["params"]))
    train_fn, eval_fn = make_step_fns(finetune.frozen_bn_apply(model.apply, config.transfer.freeze),
                                      tx, None, 0.0)
    runner = StepRunner(train_fn, eval_fn, "jit")
    batch = {"image": _gray_batch(size=48, batch=8), "label": np.arange(8, dtype=np.int32) % 7}
    new_state, _ = runner.train(runner.to_devices(state), batch, jax.random.PRNGKey(0))
    new = runner.to_host(new_state)
    for collection in ("params", "batch_stats"):
        before, after = variables[collection], getattr(new, collection)
        assert _largest_change(before, after, ["stem", "stage1_block1"]) == 0.0, collection
        assert _largest_change(before, after, ["stage2_block1"]) > 1e-4, collection
    assert _largest_change(variables["params"], new.params, ["logits"]) > 1e-3


# ----------------------------------------------------------------------------- experiments

@pytest.mark.parametrize("name,model", [("resnet_transfer", "resnet18"), ("vgg_transfer", "vgg16_bn")])
def test_transfer_experiments_load(name, model):
    config = load_experiment(name)
    assert config.model == model and config.transfer.imagenet_normalization
    finetune.check_transfer_config(config)


@pytest.mark.slow  # a fine-tuning run from a torchvision file: about 12 s
def test_train_command_fine_tunes_from_a_torchvision_file(torch, weight_files, fer_sample_path, tmp_path):
    """End to end: experiments/resnet_transfer with --set init_from=FILE."""
    weights = weight_files["resnet18"][1]
    config = apply_overrides(load_experiment("resnet_transfer"), [
        f"init_from={weights}", "transfer.input_size=48", "transfer.freeze=('stem','stage1')",
        "max_train_steps=2", "batch_size=16", "warmup_epochs=1.0"])
    prepared = prepare_data(config.data, str(fer_sample_path))
    summary = train_and_evaluate(config, tmp_path, prepared=prepared, progress=False)
    assert summary["steps"] == 2
    trained = traverse_util.flatten_dict(restore_variables(resolve_checkpoint(tmp_path))["params"], sep="/")
    pretrained = traverse_util.flatten_dict(convert.read_pretrained(str(weights), "resnet18")["params"], sep="/")
    frozen = [k for k in trained if k.startswith("stage1_")]
    moving = [k for k in trained if k.startswith("stage4_")]
    assert frozen and moving
    for key in frozen:  # the frozen stage kept the converted weights exactly
        np.testing.assert_array_equal(trained[key], pretrained[key], err_msg=key)
    assert max(float(np.abs(trained[k] - pretrained[k]).max()) for k in moving) > 0
