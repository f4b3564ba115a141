"""The oneDNN convolutions (fer_jax.kernels) against lax's: every model's conv shapes,
values and gradients; a short training run; two devices; the fallback and failure paths.

The oneDNN tests skip where the kernels cannot be built (other CPUs, no compiler).
"""
from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.conv_layers import conv_shapes
from fer_jax import kernels
from fer_jax.benchmarking.steps import prepare_jax_steps
from fer_jax.errors import UserError
from fer_jax.kernels import build
from fer_jax.kernels.conv import OnednnConvGeneralDilated
from fer_jax.models import STUDY_MODEL_NAMES, get_model
from fer_jax.models.layers import max_pool2
from parallel_worker import train_steps

DN = ("NHWC", "HWIO", "NHWC")
# float32: max error over the output's max magnitude (oneDNN and XLA sum in other orders).
F32_TOLERANCE = 1e-5
# bfloat16: against float32 convolutions of the same bfloat16 inputs, so that only the
# kernels' own rounding shows: outputs rounded to 8 significant bits (2**-8 = 3.9e-3 of
# a value) after float32 accumulation.
BF16_TOLERANCE = 1e-2
ODD_BATCH = 3
# The networks whose every conv is checked: the study's models and the ImageNet stem.
NETWORKS = [(name, {}) for name in STUDY_MODEL_NAMES] + [
    ("resnet18", {"stem": "imagenet", "num_input_channels": 3, "input_size": 96}),
    ("vgg16_bn", {"widths": (8, 16, 16, 32, 32)})]


def _usable() -> tuple[bool, str]:
    return kernels._availability("cpu")


onednn = pytest.mark.skipif(not _usable()[0], reason=f"oneDNN kernels unavailable: {_usable()[1]}")


ALL_SHAPES = sorted({shape for name, kwargs in NETWORKS for shape in conv_shapes(name, kwargs)},
                    key=repr)


def _max_rel(got, want) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _conv_and_grads(conv_fn, x, w, strides, padding, dy):
    def f(x, w):
        return conv_fn(x, w, strides, padding, dimension_numbers=DN)

    def run(x, w, dy):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(dy))

    return jax.jit(run)(x, w, dy)


def test_every_model_conv_shape_is_collected():
    assert len(ALL_SHAPES) > 20
    kernels_seen = {shape[1] for shape in ALL_SHAPES}
    assert {(1, 1), (3, 3), (5, 5), (7, 7)} <= kernels_seen
    assert any(shape[1] == (7, 7) and shape[3] == (2, 2) for shape in ALL_SHAPES)


@onednn
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_model_conv_matches_lax_in_values_and_gradients(dtype):
    conv = OnednnConvGeneralDilated(threads=2)
    rng = np.random.default_rng(0)
    tolerance = F32_TOLERANCE if dtype == "float32" else BF16_TOLERANCE
    for in_shape, kernel, features, strides, padding in ALL_SHAPES:
        x = jnp.asarray(rng.standard_normal((ODD_BATCH, *in_shape)), dtype)
        fan_in = kernel[0] * kernel[1] * in_shape[-1]
        w = jnp.asarray(rng.standard_normal((*kernel, in_shape[-1], features)) / np.sqrt(fan_in),
                        dtype)
        y = jax.eval_shape(lambda x, w: lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=DN), x, w)
        dy = jnp.asarray(rng.standard_normal(y.shape), dtype)
        want = _conv_and_grads(lax.conv_general_dilated, *(a.astype(jnp.float32) for a in (x, w)),
                               strides, padding, dy.astype(jnp.float32))
        got = _conv_and_grads(conv, x, w, strides, padding, dy)
        for part, g, e in zip(("y", "dx", "dw"), got, want):
            assert g.shape == e.shape and g.dtype == jnp.dtype(dtype)
            error = _max_rel(g, e)
            assert error <= tolerance, (in_shape, kernel, features, strides, padding, part, error)


@onednn
@pytest.mark.parametrize("batch", [1, 5])
def test_odd_batches_and_asymmetric_padding(batch):
    conv = OnednnConvGeneralDilated()
    rng = np.random.default_rng(batch)
    x = jnp.asarray(rng.standard_normal((batch, 13, 11, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 5, 6, 4)), jnp.float32)
    for strides, padding in [((2, 1), [(0, 2), (1, 3)]), ((1, 2), "SAME"), ((3, 3), "VALID")]:
        y = jax.eval_shape(lambda x, w: lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=DN), x, w)
        dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        want = _conv_and_grads(lax.conv_general_dilated, x, w, strides, padding, dy)
        got = _conv_and_grads(conv, x, w, strides, padding, dy)
        for g, e in zip(got, want):
            assert _max_rel(g, e) <= F32_TOLERANCE, (strides, padding)


def test_what_the_kernels_do_not_cover_goes_to_lax():
    conv = OnednnConvGeneralDilated()
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 2, 4))
    hlo = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                    feature_group_count=2)).lower(x, w).as_text()
    assert "fer_onednn" not in hlo and "convolution" in hlo
    w = jnp.ones((3, 3, 4, 4), jnp.float16)
    hlo = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=DN)).lower(
        x.astype(jnp.float16), w).as_text()
    assert "fer_onednn" not in hlo
    # Too few channels for oneDNN's fast kernels (CBAM's 2 -> 1, the images' 1 -> 32).
    for shape in [(7, 7, 2, 1), (3, 3, 1, 32)]:
        w = jnp.ones(shape)
        x = jnp.ones((2, 8, 8, shape[2]))
        hlo = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=DN)).lower(
            x, w).as_text()
        assert "fer_onednn" not in hlo, shape


@onednn
def test_gradient_nothing_uses_is_not_computed():
    """A first layer's input gradient is left out of the compiled step (XLA's DCE)."""
    conv = OnednnConvGeneralDilated()
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    loss = lambda w, x: jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=DN) ** 2)
    hlo = jax.jit(jax.grad(loss)).lower(w, x).compile().as_text()
    assert "fer_onednn_conv_backward_weights" in hlo
    assert "fer_onednn_conv_backward_data" not in hlo


@onednn
def test_concurrent_calls_from_two_threads_give_each_its_own_result():
    conv = OnednnConvGeneralDilated(threads=1)
    f = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=DN))
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)), jnp.float32)
    inputs = [jnp.asarray(rng.standard_normal((8, 24, 24, 16)), jnp.float32) for _ in range(2)]
    expected = [np.asarray(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN))
                for x in inputs]
    errors = []

    def worker(i):
        for _ in range(20):
            errors.append(_max_rel(f(inputs[i], w), expected[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 40 and max(errors) <= F32_TOLERANCE


# ------------------------------------------------------------------------- training

# Small copies of the study's networks (BatchNorm, 5x5 and 3x3 convs, CBAM's 7x7 one).
TRAIN_NETWORKS = {"simple_cnn_v2": {"widths": (16, 32), "dense_width": 32},
                  "cbam_cnn": {"widths": (16, 32), "dense_width": 32, "reduction": 4}}


@onednn
@pytest.mark.parametrize("model, dtype, first_tolerance, tolerance", [
    # float32: the kernels' sums differ in the last bits (the first loss agrees to 1e-5);
    # AdamW's normalised step turns that noise in near-zero gradients into +-lr steps, so
    # after 6 steps on one batch the curves agree to a few 1e-3 relative.
    ("simple_cnn_v2", "float32", 1e-5, 5e-3),
    pytest.param("cbam_cnn", "float32", 1e-5, 5e-3, marks=pytest.mark.slow),
])
def test_training_with_onednn_follows_xlas_loss_curve(model, dtype, first_tolerance, tolerance):
    curves = _loss_curves(model, dtype)
    assert curves["xla"][-1] < 0.9 * curves["xla"][0]  # the steps learn: the curves are not flat
    np.testing.assert_allclose(curves["onednn"][0], curves["xla"][0], rtol=first_tolerance)
    np.testing.assert_allclose(curves["onednn"], curves["xla"], rtol=tolerance)


@onednn
@pytest.mark.slow
def test_bfloat16_training_with_onednn_starts_and_ends_where_xlas_does():
    # Each kernel rounds its outputs to 8 bits, differently, and six AdamW steps on one
    # batch amplify that: measured, the first loss agreed to 0.5%, the middle steps drifted
    # apart by up to 9%, and both ended within 0.6% of each other. So the start and the
    # end are compared, not every step.
    curves = _loss_curves("simple_cnn_v2", "bfloat16")
    for name in ("onednn", "xla"):
        assert curves[name][-1] < 0.9 * curves[name][0], (name, curves[name])
    np.testing.assert_allclose(curves["onednn"][0], curves["xla"][0], rtol=1e-2)
    np.testing.assert_allclose(curves["onednn"][-1], curves["xla"][-1], rtol=0.1)


def _loss_curves(model: str, dtype: str, steps_run: int = 6) -> dict[str, np.ndarray]:
    curves = {}
    for name in ("onednn", "xla"):
        # One device: this compares the kernels' arithmetic; two devices against one is
        # test_two_devices_with_onednn_match_one's.
        steps = prepare_jax_steps(model, 8, dtype, TRAIN_NETWORKS[model], kernels=name,
                                  devices=jax.devices("cpu")[:1])
        assert steps.kernels == name
        curves[name] = np.array([float(steps.train_step()["loss"]) for _ in range(steps_run)])
    return curves


@onednn
def test_two_devices_with_onednn_match_one():
    """parallel_worker builds its model with the default kernels (auto: oneDNN here); meshes
    of 1 and 2 of the test process's CPU devices."""
    results = {devices: train_steps("jit", 3, jax.devices("cpu")[:devices]) for devices in (1, 2)}
    assert str(results[1]["kernels"]) == str(results[2]["kernels"]) == "onednn"
    for key, value in results[1].items():
        if key not in ("device_count", "kernels"):
            np.testing.assert_allclose(results[2][key], value, rtol=1e-5, atol=1e-5, err_msg=key)
    assert int(results[2]["device_count"]) == 2


# ------------------------------------------------------------------ choice and fallback

@pytest.fixture
def fresh_availability():
    kernels._availability.cache_clear()
    yield
    kernels._availability.cache_clear()


def _unavailable(monkeypatch, reason="no C++ compiler (g++) on PATH to build the oneDNN kernels"):
    def fail():
        raise build.KernelsUnavailable(reason)
    monkeypatch.setattr(kernels, "load", fail)


def test_auto_falls_back_to_xla_with_the_reason(monkeypatch, fresh_availability):
    _unavailable(monkeypatch)
    choice, line = kernels.decide_kernels("auto", "cpu")
    assert choice == "xla"
    assert line == ("kernels: XLA convolutions (auto: no C++ compiler (g++) on PATH to build "
                    "the oneDNN kernels)")


def test_explicit_onednn_fails_with_the_reason(monkeypatch, fresh_availability):
    _unavailable(monkeypatch, "oneDNN headers not found under /x/include")
    with pytest.raises(UserError, match=r"kernels=onednn: oneDNN headers not found under /x"):
        kernels.decide_kernels("onednn", "cpu")


def test_accelerators_never_load_the_library(monkeypatch, fresh_availability):
    monkeypatch.setattr(kernels, "load", lambda: pytest.fail("loaded the library on a GPU"))
    assert kernels.decide_kernels("auto", "gpu") == (
        "xla", "kernels: XLA convolutions (auto: the gpu backend uses XLA's kernels)")
    with pytest.raises(UserError, match="kernels=onednn: the tpu backend uses XLA's kernels"):
        kernels.decide_kernels("onednn", "tpu")
    assert kernels.decide_kernels("xla", "cpu")[0] == "xla"


def test_other_platforms_are_refused_before_building(monkeypatch, fresh_availability):
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(kernels, "load", lambda: pytest.fail("tried to build on aarch64"))
    choice, line = kernels.decide_kernels("auto", "cpu")
    assert choice == "xla" and "x86-64 Linux only" in line


def test_unknown_setting_is_a_user_error():
    with pytest.raises(UserError, match="kernels must be one of auto, onednn, xla, got 'fast'"):
        kernels.decide_kernels("fast", "cpu")
    with pytest.raises(UserError, match="bad value 'auto' for 'kernels'"):
        get_model("simple_cnn_v1", kernels="auto")


def test_missing_compiler_headers_or_a_broken_source_fail_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(build.COMPILER_ENV, "no-such-compiler-fer")
    with pytest.raises(build.KernelsUnavailable, match="no C.. compiler .no-such-compiler-fer."):
        build.build(tmp_path)
    monkeypatch.delenv(build.COMPILER_ENV)
    monkeypatch.setattr(build, "onednn_prefix", lambda: tmp_path)
    with pytest.raises(build.KernelsUnavailable, match="oneDNN headers not found"):
        build.build(tmp_path)


@onednn
def test_a_failed_compilation_is_reported_and_leaves_no_library(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(build, "SOURCE", broken)
    with pytest.raises(build.KernelsUnavailable, match="building the oneDNN kernels failed: .*error"):
        build.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.so*"))


def test_the_library_is_keyed_by_its_source(monkeypatch, tmp_path):
    first = build.library_path(tmp_path, "g++")
    changed = tmp_path / "changed.cc"
    changed.write_text(build.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCE", changed)
    assert build.library_path(tmp_path, "g++") != first
    assert first.parent.parent == tmp_path / "kernels"


def test_models_get_the_kernels_through_layers_conv():
    default = get_model("resnet18")
    chosen = get_model("resnet18", kernels="onednn")
    assert default.kernels == "xla" and chosen.kernels == "onednn"
    assert kernels.conv_general_dilated_for("xla") is None
    assert isinstance(kernels.conv_general_dilated_for("onednn"), OnednnConvGeneralDilated)
    # Equal settings compare equal (Flax modules holding them do too).
    assert kernels.conv_general_dilated_for("onednn") == kernels.conv_general_dilated_for("onednn")


@onednn
def test_a_model_lowers_its_convs_to_the_library():
    model = get_model("cbam_cnn", kernels="onednn")
    x = jnp.zeros((2, 48, 48, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
    # Five of the six ConvBNReLU; the first (1 -> 32) and CBAM's 2 -> 1 ones stay on XLA.
    assert hlo.count("fer_onednn_conv_forward") == 5
    assert hlo.count("stablehlo.convolution") == 1 + 3


def _reshape_max_pool2(x):
    """A 2x2 max-pool as a reshape and a max, differentiated by JAX."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (1, 7, 5, 3), (5, 6, 9, 2)])
def test_max_pool2_matches_a_reshape_max_in_values_and_gradients(dtype, shape):
    # Integers below 256 (exact in bfloat16), distinct within every window: no ties, where
    # the two gradients differ by design.
    b, h, w, c = shape
    rng = np.random.default_rng(0)
    base = 4 * rng.integers(0, 64, (b, h // 2 + 1, 1, w // 2 + 1, 1, c))
    order = np.argsort(rng.random((b, h // 2 + 1, w // 2 + 1, c, 4)), axis=-1)
    windows = base + order.reshape(b, h // 2 + 1, w // 2 + 1, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    x = jnp.asarray(windows.reshape(b, h + 2 - h % 2, w + 2 - w % 2, c)[:, :h, :w], dtype)
    y, vjp = jax.vjp(max_pool2, x)
    want_y, want_vjp = jax.vjp(_reshape_max_pool2, x)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), dtype)
    (dx,), (want_dx,) = jax.jit(vjp)(dy), want_vjp(dy)
    assert y.dtype == dx.dtype == jnp.dtype(dtype) and dx.shape == x.shape
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want_y, np.float32))
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(want_dx, np.float32))


def test_max_pool2_gives_a_tied_windows_gradient_to_its_first_maximum():
    x = jnp.array([[0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 3.0, 3.0]]).reshape(1, 2, 4, 1)
    dx = jax.grad(lambda x: (max_pool2(x) * jnp.array([2.0, 5.0]).reshape(1, 1, 2, 1)).sum())(x)
    np.testing.assert_array_equal(np.asarray(dx).reshape(2, 4),
                                  [[2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])


def test_max_pool2_gradient_has_no_select_and_scatter_or_reduction():
    x = jnp.ones((2, 8, 8, 3))
    text = jax.jit(jax.grad(lambda x: max_pool2(x).sum())).lower(x).as_text()
    assert "select_and_scatter" not in text and "reduce_window" not in text
    assert "divide" not in text  # the reshape-and-max's gradient divides by the tie count
