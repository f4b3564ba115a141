"""benchmarks/bn_own_gradient.py's BatchNorm (training-mode normalization with its own
gradient, the experiment `python benchmarks/xla_cpu_probe.py bn` times) against flax's
nn.BatchNorm, which the models use: values, gradients, running statistics, variable
trees, two devices under an axis name."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from benchmarks import bn_own_gradient
from fer_jax.models import layers

# float32: max error over the reference's max magnitude (the two gradients sum in other
# orders). bfloat16: the input gradient is rounded to bfloat16 from float32 in both, so
# they may differ by one unit in the last place of 8 significant bits (2**-8 = 3.9e-3 of
# the largest value); the parameter gradients are float32 sums of either.
F32_TOLERANCE = 1e-5
BF16_TOLERANCE = 1e-2
SHAPE = (6, 5, 4, 3)


def _bn(cls, train: bool, dtype, axis_name=None):
    return cls(use_running_average=not train, momentum=layers.BN_MOMENTUM,
               epsilon=layers.BN_EPSILON, axis_name=axis_name, dtype=dtype)


def _max_rel(got, want) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _inputs(dtype, shape=SHAPE):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, shape), dtype)
    weights = jnp.asarray(rng.normal(size=shape), jnp.float32)  # a loss that is not symmetric
    variables = _bn(nn.BatchNorm, True, dtype).init(jax.random.key(0), x)
    # Parameters and running statistics away from their initial ones and from each other.
    variables = jax.tree.map(lambda a: a + 0.3 * jnp.arange(1, a.size + 1, dtype=a.dtype), variables)
    return x, weights, variables


def _loss_and_grads(module, x, weights, variables, train: bool):
    def loss(x, params):
        y, stats = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                mutable=["batch_stats"])
        return (y.astype(jnp.float32) * weights).sum(), (y, stats["batch_stats"])

    (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        x, variables["params"])
    return y, stats, grads


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_norm_matches_flax_in_values_gradients_and_running_statistics(dtype, train):
    x, weights, variables = _inputs(dtype)
    want_y, want_stats, want_grads = _loss_and_grads(_bn(nn.BatchNorm, train, dtype), x, weights,
                                                     variables, train)
    y, stats, grads = _loss_and_grads(_bn(bn_own_gradient.BatchNorm, train, dtype), x, weights,
                                      variables, train)
    assert y.dtype == want_y.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want_y, np.float32))
    jax.tree.map(np.testing.assert_array_equal, stats, want_stats)
    tolerance = F32_TOLERANCE if dtype == "float32" else BF16_TOLERANCE
    (dx, dparams), (want_dx, want_dparams) = grads, want_grads
    assert dx.dtype == want_dx.dtype
    assert _max_rel(dx, want_dx) < tolerance
    for name in ("scale", "bias"):
        assert _max_rel(dparams[name], want_dparams[name]) < F32_TOLERANCE


class _TwoNorms(nn.Module):
    """Two auto-named BatchNorm layers made by MAKE (a batch_norm builder)."""

    make: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        x = self.make(True, None, jnp.float32)(x)
        return self.make(True, None, jnp.float32)(nn.Dense(4)(x))


def test_batch_norm_keeps_flax_variables_names_and_type():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 5, 3)), jnp.float32)
    flax_variables = _TwoNorms(layers.batch_norm).init(jax.random.key(0), x)
    variables = _TwoNorms(bn_own_gradient.batch_norm).init(jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    assert {"BatchNorm_0", "BatchNorm_1"} <= set(variables["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, variables, flax_variables)
    # fer_jax.transfer.finetune freezes BatchNorm layers found by isinstance.
    assert issubclass(bn_own_gradient.BatchNorm, nn.BatchNorm)


def test_batch_norm_gradient_takes_two_reductions():
    x, weights, variables = _inputs("float32")
    module = bn_own_gradient.batch_norm(True, None, jnp.float32)

    def loss(x, params):
        y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            mutable=["batch_stats"])
        return (y * weights).sum()

    jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, variables["params"]))
    # The forward pass's mean and mean square, the backward's sum(dy) and sum(dy * x_hat),
    # the loss's sum (flax's automatic gradient takes eight).
    assert jaxpr.count("reduce_sum") == 5


def _two_device_step(cls, x, weights, variables):
    """Loss and gradients on 2 devices: each half of the batch, statistics over both."""
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    module = _bn(cls, True, x.dtype, axis_name="data")

    def local(x, weights, variables):
        def loss(x, params):
            y, stats = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                    x, mutable=["batch_stats"])
            return (y.astype(jnp.float32) * weights).sum(), stats["batch_stats"]

        (value, stats), (dx, dparams) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            x, variables["params"])
        return jax.lax.psum(value, "data"), stats, dx, jax.lax.psum(dparams, "data")

    step = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P()),
                         out_specs=(P(), P(), P("data"), P()), check_vma=False)
    return jax.jit(step)(x, weights, variables)


def test_two_devices_under_an_axis_name_match_one_device_on_the_whole_batch():
    assert jax.device_count() >= 2  # tests/conftest.py gives the test process 8
    x, weights, variables = _inputs("float32", shape=(8, 5, 4, 3))
    module = _bn(bn_own_gradient.BatchNorm, True, jnp.float32)

    def loss(x, params):
        y, stats = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                mutable=["batch_stats"])
        return (y * weights).sum(), stats["batch_stats"]

    (want_value, want_stats), (want_dx, want_dparams) = jax.jit(
        jax.value_and_grad(loss, (0, 1), has_aux=True))(x, variables["params"])
    value, stats, dx, dparams = _two_device_step(bn_own_gradient.BatchNorm, x, weights, variables)
    _, flax_stats, flax_dx, flax_dparams = _two_device_step(nn.BatchNorm, x, weights, variables)
    assert abs(float(value) - float(want_value)) < 1e-4 * abs(float(want_value))
    for got in (stats, flax_stats):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                     got, want_stats)
    for got_dx, got_dparams in ((dx, dparams), (flax_dx, flax_dparams)):
        assert _max_rel(got_dx, want_dx) < F32_TOLERANCE
        for name in ("scale", "bias"):
            assert _max_rel(got_dparams[name], want_dparams[name]) < F32_TOLERANCE
