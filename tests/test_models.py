"""The study's Flax models: shapes, exact parameter counts, train/eval behaviour, CBAM maps,
BatchNorm over a named axis, and the registry's handling of names and overrides."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.errors import UserError
from fer_jax.models import MODEL_NAMES, get_model
from fer_jax.models.layers import spatial_dropout

NUM_CLASSES = 7
BATCH = 2


def key(seed: int = 0) -> jax.Array:
    """An RBG key: XLA compiles its random bits several times faster than threefry's on CPU,
    which dominates the compile time of these small models' init and dropout."""
    return jax.random.key(seed, impl="rbg")


def images(batch: int = BATCH, channels: int = 1, seed: int = 0) -> jax.Array:
    return jax.random.uniform(key(seed), (batch, 48, 48, channels))


def init(model: nn.Module, x: jax.Array) -> dict:
    return jax.jit(lambda rng: model.init(rng, x, train=False))(key(0))


def abstract_params(model: nn.Module, channels: int = 1):
    """Parameter shapes without computing anything (no compilation)."""
    x = jax.ShapeDtypeStruct((1, 48, 48, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(key(0), x, train=False), x)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# --- parameter arithmetic, layer by layer -------------------------------------------------
def conv(k: int, cin: int, cout: int, bias: bool) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:  # scale + shift
    return 2 * c


def dense(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def conv_bn(k: int, cin: int, cout: int) -> int:  # conv drops its bias before BatchNorm
    return conv(k, cin, cout, bias=False) + bn(cout)


def double_conv_bn(cin: int, cout: int) -> int:
    return conv_bn(3, cin, cout) + conv_bn(3, cout, cout)


def cbam(c: int) -> int:
    hidden = max(c // 16, 4)
    shared_mlp = dense(c, hidden) + dense(hidden, c)
    spatial = conv(7, 2, 1, bias=True)  # [mean, max] -> 1 map
    return shared_mlp + spatial


def basic_block(cin: int, cout: int) -> int:
    projection = conv_bn(1, cin, cout) if cin != cout else 0
    return conv_bn(3, cin, cout) + conv_bn(3, cout, cout) + projection


def resnet_stages(stage_sizes, width: int = 64) -> int:
    total, cin = 0, width
    for stage, blocks in enumerate(stage_sizes):
        cout = width * 2 ** stage
        total += basic_block(cin, cout) + (blocks - 1) * basic_block(cout, cout)
        cin = cout
    return total


def vgg_imagenet(stage_sizes) -> int:
    """torchvision's VGG-bn features (convs keep their bias there), 3 input channels, gap head."""
    total, cin = 0, 3
    for convs, width in zip(stage_sizes, (64, 128, 256, 512, 512)):
        for _ in range(convs):
            total += conv(3, cin, width, bias=True) + bn(width)
            cin = width
    return total + dense(512, 7)


EXPECTED_PARAMS = {
    # 48 -pool-> 24 -pool-> 12: flatten 12*12*64 = 9216
    "simple_cnn_v1": conv(5, 1, 32, True) + conv(5, 32, 64, True)
    + dense(12 * 12 * 64, 128) + dense(128, 7),
    "simple_cnn_v2": conv_bn(5, 1, 32) + conv_bn(5, 32, 64)
    + dense(12 * 12 * 64, 128) + dense(128, 7),
    # global pooling: the head sees the last width; hidden Dense has no bias (BN follows)
    "deep_cnn_v1": double_conv_bn(1, 32) + double_conv_bn(32, 64) + double_conv_bn(64, 128)
    + double_conv_bn(128, 256) + dense(256, 512, bias=False) + bn(512) + dense(512, 7),
    "deep_cnn_v2": double_conv_bn(1, 32) + double_conv_bn(32, 64) + double_conv_bn(64, 128)
    + double_conv_bn(128, 192) + dense(192, 256, bias=False) + bn(256) + dense(256, 7),
    "cbam_cnn": double_conv_bn(1, 32) + cbam(32) + double_conv_bn(32, 64) + cbam(64)
    + double_conv_bn(64, 128) + cbam(128) + dense(128, 256, bias=False) + bn(256)
    + dense(256, 7),
    "resnet18": conv_bn(3, 1, 64) + resnet_stages((2, 2, 2, 2)) + dense(512, 7),
    "resnet34": conv_bn(3, 1, 64) + resnet_stages((3, 4, 6, 3)) + dense(512, 7),
    # four pools: 48 -> 3, flatten 3*3*512 = 4608
    "vgg_fer": double_conv_bn(1, 64) + double_conv_bn(64, 128) + double_conv_bn(128, 256)
    + double_conv_bn(256, 512) + dense(3 * 3 * 512, 1024) + dense(1024, 1024)
    + dense(1024, 7),
    # torchvision's vgg16_bn / vgg19_bn features: 14,723,136 / 20,035,392 parameters there.
    "vgg16_bn": vgg_imagenet((2, 2, 3, 3, 3)),
    "vgg19_bn": vgg_imagenet((2, 2, 4, 4, 4)),
}


def test_parameter_arithmetic_matches_known_totals():
    assert EXPECTED_PARAMS == {
        "simple_cnn_v1": 1_232_775, "simple_cnn_v2": 1_232_871, "deep_cnn_v1": 1_308_327,
        "deep_cnn_v2": 892_071, "cbam_cnn": 325_312, "resnet18": 11_171_271,
        "resnet34": 21_279_431, "vgg_fer": 10_462_535,
        "vgg16_bn": 14_723_136 + dense(512, 7), "vgg19_bn": 20_035_392 + dense(512, 7)}
    # torchvision's resnet18 (11,689,512 for 3-channel 7x7 stem and 1000 classes) with a
    # 1-channel 3x3 stem and a 7-class head.
    torchvision_resnet18 = 11_689_512
    assert EXPECTED_PARAMS["resnet18"] == (torchvision_resnet18 - conv(7, 3, 64, False)
                                           - dense(512, 1000) + conv(3, 1, 64, False)
                                           + dense(512, 7)) == 11_171_271


def test_every_model_has_an_expected_count():
    assert set(MODEL_NAMES) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count(name):
    variables = abstract_params(get_model(name))
    assert count(variables["params"]) == EXPECTED_PARAMS[name]
    for leaf in jax.tree.leaves(variables["params"]):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bfloat16_compute_still_gives_float32_logits_and_params(name):
    model = get_model(name, dtype="bfloat16")
    x = jax.ShapeDtypeStruct((BATCH, 48, 48, 1), jnp.float32)
    variables = abstract_params(model)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


def test_narrow_vgg_count():
    model = get_model("vgg_fer", widths=(32, 64, 128, 256), dense_width=256)
    expected = (double_conv_bn(1, 32) + double_conv_bn(32, 64) + double_conv_bn(64, 128)
                + double_conv_bn(128, 256) + dense(3 * 3 * 256, 256) + dense(256, 256)
                + dense(256, 7))
    assert count(abstract_params(model)["params"]) == expected


def test_time_to_accuracy_shapes_count():
    # fast_5min / fast_15min: 3x3 kernels, three or four pools (48 -> 6 or 3).
    three = get_model("simple_cnn_v1", widths=(32, 64, 128), kernel_size=3, dropout=0.0)
    four = get_model("simple_cnn_v1", widths=(32, 64, 128, 256), kernel_size=3, dropout=0.0)
    assert count(abstract_params(three)["params"]) == (
        conv(3, 1, 32, True) + conv(3, 32, 64, True) + conv(3, 64, 128, True)
        + dense(6 * 6 * 128, 128) + dense(128, 7)) == 683_527
    assert count(abstract_params(four)["params"]) == (
        conv(3, 1, 32, True) + conv(3, 32, 64, True) + conv(3, 64, 128, True) + conv(3, 128, 256, True)
        + dense(3 * 3 * 256, 128) + dense(128, 7)) == 683_783


# --- running the models -------------------------------------------------------------------
# Small variants keep compilation cheap; architecture-wide behaviour is covered above.
SMALL = {
    "simple_cnn_v1": {},
    "simple_cnn_v2": {},
    "deep_cnn_v1": {"widths": (4, 8, 8, 8), "dense_width": 16},
    "deep_cnn_v2": {"widths": (4, 8, 8, 8), "dense_width": 16},
    "cbam_cnn": {"widths": (8, 8, 16), "dense_width": 16},
    "resnet18": {"width": 8},
    "resnet34": {"width": 4},
    "vgg_fer": {"widths": (4, 8, 8, 8), "dense_width": 16},
    "vgg16_bn": {"widths": (4, 8, 8, 8, 8)},
    "vgg19_bn": {"widths": (4, 8, 8, 8, 8), "head": "classifier", "classifier_width": 16},
}


def eval_fn(model: nn.Module):
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def train_fn(model: nn.Module):
    """Training-mode forward: (logits, {"batch_stats": updated}) for a dropout key."""
    return jax.jit(lambda variables, x, rng: model.apply(
        variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]))


# resnet34 only repeats resnet18's blocks (its structure is pinned by the parameter count
# and its shapes by eval_shape above); running it costs most of this file's compile time.
RUN_CHEAPLY = [pytest.param(name, marks=pytest.mark.slow) if name == "resnet34" else name
               for name in MODEL_NAMES]


@pytest.mark.parametrize("name", RUN_CHEAPLY)
def test_forward_shapes_and_finite_in_train_and_eval(name):
    model = get_model(name, **SMALL[name])

    @jax.jit  # one compilation for init and both modes keeps this test fast
    def run(x):
        variables = model.init(key(0), x, train=False)
        logits = model.apply(variables, x, train=False)
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": key(1)})
        return variables, logits, train_logits, updates

    variables, logits, train_logits, updates = run(images())
    for out in (logits, train_logits):
        chex.assert_shape(out, (BATCH, NUM_CLASSES))
        chex.assert_type(out, jnp.float32)
        chex.assert_tree_all_finite(out)
    # simple_cnn_v1 has no BatchNorm, so no batch_stats collection at all
    has_bn = name != "simple_cnn_v1"
    assert set(updates) == ({"batch_stats"} if has_bn else set())
    assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})


def test_bfloat16_forward_runs_and_is_close_to_float32():
    x = images()
    f32 = get_model("simple_cnn_v2")
    b16 = get_model("simple_cnn_v2", dtype=jnp.bfloat16)

    @jax.jit
    def run(x):
        variables = f32.init(key(0), x, train=False)
        return f32.apply(variables, x, train=False), b16.apply(variables, x, train=False)

    reference, logits = run(x)
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    assert not np.array_equal(logits, reference)  # bf16 really computed in lower precision
    np.testing.assert_allclose(logits, reference, atol=0.1, rtol=0.1)


def test_num_classes_override_sets_output_width():
    model = get_model("simple_cnn_v1", num_classes=3)
    x = jax.ShapeDtypeStruct((BATCH, 48, 48, 1), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                            abstract_params(model), x)
    assert logits.shape == (BATCH, 3)


def test_imagenet_stem_repeats_grey_to_rgb():
    model = get_model("resnet18", width=8, stem="imagenet", num_input_channels=3)
    params = abstract_params(model, channels=3)["params"]
    assert params["stem"]["Conv_0"]["kernel"].shape == (7, 7, 3, 8)

    @jax.jit
    def run(grey):
        rgb = jnp.repeat(grey, 3, axis=-1)
        variables = model.init(key(0), rgb, train=False)
        return model.apply(variables, grey, train=False), model.apply(variables, rgb, train=False)

    from_grey, from_rgb = run(images())
    chex.assert_shape(from_grey, (BATCH, NUM_CLASSES))
    np.testing.assert_allclose(from_grey, from_rgb, rtol=1e-5, atol=1e-6)


# --- train / eval behaviour ---------------------------------------------------------------
@pytest.fixture(scope="module")
def deep_v2():
    model = get_model("deep_cnn_v2", **SMALL["deep_cnn_v2"])
    x = images(batch=4)
    return model, init(model, x), x, train_fn(model), eval_fn(model)


def test_dropout_depends_on_key_in_training_only(deep_v2):
    model, variables, x, train, evaluate = deep_v2
    key1, key2 = key(1), key(2)
    assert not np.allclose(train(variables, x, key1)[0], train(variables, x, key2)[0])
    np.testing.assert_array_equal(train(variables, x, key1)[0], train(variables, x, key1)[0])
    # eval needs no dropout key and repeats exactly
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


def test_batch_stats_update_in_training_not_in_eval(deep_v2):
    model, variables, x, train, _ = deep_v2
    _, eval_updates = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                       mutable=["batch_stats"]))(variables, x)
    chex.assert_trees_all_equal(eval_updates["batch_stats"], variables["batch_stats"])
    _, train_updates = train(variables, x, key(0))
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b),
                           train_updates["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(changed))
    # momentum 0.9: the new running mean is 0.9 * old (zeros) + 0.1 * batch mean
    first_bn = train_updates["batch_stats"]["ConvBNReLU_0"]["BatchNorm_0"]
    conv_out = jax.lax.conv_general_dilated(
        x, variables["params"]["ConvBNReLU_0"]["Conv_0"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(first_bn["mean"], 0.1 * conv_out.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)


def test_eval_output_of_a_sample_does_not_depend_on_its_batch(deep_v2):
    _, variables, x, train, evaluate = deep_v2
    np.testing.assert_allclose(evaluate(variables, x[:1].repeat(4, axis=0))[0],
                               evaluate(variables, x)[0], rtol=1e-5, atol=1e-6)
    # while training, BatchNorm uses the batch, so the same sample's logits change
    rng = key(0)
    other_batch = x.at[1:].set(x[1:] * 0.5)
    assert not np.allclose(train(variables, x, rng)[0][0], train(variables, other_batch, rng)[0][0])


def test_spatial_dropout_drops_whole_channels():
    x = jnp.ones((8, 5, 5, 16))
    y = spatial_dropout(0.5).apply({}, x, deterministic=False,
                                   rngs={"dropout": key(0)})
    per_channel = np.asarray(y).reshape(8, 25, 16)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # constant over H, W
    assert set(np.unique(per_channel)) == {0.0, 2.0}


# --- CBAM attention maps ------------------------------------------------------------------
def test_cbam_spatial_attention_maps_are_retrievable():
    model = get_model("cbam_cnn", **SMALL["cbam_cnn"])

    @jax.jit
    def run(x):
        variables = model.init(key(0), x, train=False)
        return model.apply(variables, x, train=False, mutable=["intermediates"])

    _, state = run(images(batch=3))
    maps = [state["intermediates"][f"cbam_{stage}"]["spatial"]["spatial_attention"][0]
            for stage in range(3)]
    # CBAM runs on each stage's full resolution, before its max-pool
    assert [m.shape for m in maps] == [(3, 48, 48, 1), (3, 24, 24, 1), (3, 12, 12, 1)]
    for attention in maps:
        assert float(attention.min()) > 0.0 and float(attention.max()) < 1.0
        assert float(attention.std()) > 0.0  # a map, not a constant


# --- BatchNorm over a named axis ----------------------------------------------------------
def bn_model(axis_name):
    return get_model("deep_cnn_v1", widths=(4, 8), dense_width=8, dropout=0.0,
                     bn_axis_name=axis_name)


def test_bn_axis_name_gives_global_batch_statistics_under_vmap():
    global_model, named_model = bn_model(None), bn_model("batch")
    x = images(batch=6)
    variables = init(global_model, x)

    @jax.jit
    def run(x):
        def train(model, xs):
            return model.apply(variables, xs, train=True, mutable=["batch_stats"])

        shards = x.reshape(2, 3, 48, 48, 1)
        return (train(global_model, x),
                jax.vmap(lambda xs: train(named_model, xs), axis_name="batch")(shards),
                jax.vmap(lambda xs: train(global_model, xs))(shards))

    (global_logits, global_updates), (logits, updates), (local_logits, _) = run(x)
    np.testing.assert_allclose(logits.reshape(6, NUM_CLASSES), global_logits, rtol=1e-3,
                               atol=1e-3)
    for shard in range(2):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[shard], updates),
                                    global_updates, rtol=1e-3, atol=1e-5)
    # without the axis name each shard normalises by its own statistics
    assert np.abs(local_logits.reshape(6, NUM_CLASSES) - global_logits).max() > 1e-2


# --- registry -----------------------------------------------------------------------------
def test_model_names():
    assert MODEL_NAMES == ("simple_cnn_v1", "simple_cnn_v2", "deep_cnn_v1", "deep_cnn_v2",
                           "cbam_cnn", "resnet18", "resnet34", "vgg_fer", "vgg16_bn", "vgg19_bn")


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="resnet50") as info:
        get_model("resnet50")
    for name in MODEL_NAMES:
        assert name in str(info.value)


def test_unknown_override_is_named():
    with pytest.raises(UserError, match="'dropout_rate'"):
        get_model("simple_cnn_v1", dropout_rate=0.5)
    with pytest.raises(UserError, match="'name'"):  # flax internals are not overrides
        get_model("simple_cnn_v1", name="x")


@pytest.mark.parametrize("override", [{"dropout": 1.5}, {"widths": "64"}, {"dtype": "int32"},
                                      {"stem": "tiny"}, {"num_classes": 0},
                                      {"dtype": "float17"}])
def test_bad_override_values_are_user_errors(override):
    name = "resnet18" if "stem" in override else "vgg_fer"
    with pytest.raises(UserError, match=list(override)[0]):
        get_model(name, **override)


def test_overrides_are_applied_and_normalised():
    model = get_model("deep_cnn_v2", widths=[8, 16], dtype="bfloat16", dropout=0.2)
    assert model.widths == (8, 16) and model.dtype == jnp.bfloat16 and model.dropout == 0.2
    assert model.spatial_dropout == 0.1 and model.dense_width == 256  # v2's own settings


def test_pool_stem_keeps_the_parameters_and_quarters_the_stages_input():
    cifar = get_model("resnet18", width=8)
    pooled = get_model("resnet18", width=8, stem="pool")
    assert (jax.tree.map(lambda a: a.shape, abstract_params(cifar))
            == jax.tree.map(lambda a: a.shape, abstract_params(pooled)))

    @jax.jit  # one compilation for init and both passes
    def run(x):
        variables = pooled.init(key(0), x, train=False)
        _, state = pooled.apply(variables, x, train=False, capture_intermediates=True,
                                mutable=["intermediates"])
        return state["intermediates"]["stage1_block1"]["__call__"][0], pooled.apply(variables, x, train=False)

    first_block, logits = run(images())
    chex.assert_shape(first_block, (BATCH, 24, 24, 8))
    chex.assert_tree_all_finite(logits)
