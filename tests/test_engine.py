"""Unit tests of the step, optimizer and config pieces (single device, in-process)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax import config as config_lib
from fer_jax.engine import optim
from fer_jax.engine.parallel import DATA_AXIS, StepRunner
from fer_jax.engine.step import cross_entropy, init_state, make_step_fns
from fer_jax.errors import UserError
from fer_jax.models.from_config import build_model


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, 48, 48, 1)).astype(np.float32),
            "label": rng.integers(0, 7, size=n).astype(np.int32)}


def _runner(config, class_weights=None, label_smoothing=0.0, tx=None, eval_tta="none"):
    model = build_model(config, bn_axis_name=DATA_AXIS)
    tx = tx or optim.make_optimizer(config)
    plateau = optim.make_plateau(config)
    state = init_state(config, model, tx, plateau)
    train_fn, eval_fn = make_step_fns(model.apply, tx, class_weights, label_smoothing, eval_tta)
    runner = StepRunner(train_fn, eval_fn, "jit")
    return model, runner, runner.to_devices(state), state


def _config(**kw):
    c = config_lib.base_config()
    c.model = "simple_cnn_v2"
    c.model_kwargs.dropout = 0.0
    for k, v in kw.items():
        c[k] = v
    return c


def test_class_weighted_loss_is_pytorchs_weighted_mean():
    config = _config(learning_rate=0.0)
    weights = jnp.asarray([1.0, 10.0, 1.0, 0.5, 1.0, 2.0, 1.0], jnp.float32)
    model, runner, device_state, host_state = _runner(config, class_weights=weights)
    batch = _batch()
    _, metrics = runner.train(device_state, batch, jax.random.PRNGKey(0))
    logits, _ = model.clone(bn_axis_name=None).apply(
        host_state.variables, batch["image"], train=True, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = np.asarray(weights)[batch["label"]]
    expected = float(np.sum(w * np.asarray(ce)) / np.sum(w))
    assert float(runner.to_host(metrics)["loss"]) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(float(np.mean(ce)), rel=1e-3)  # the weights mattered


def test_label_smoothing_matches_the_smoothed_target_formula():
    logits = jnp.asarray([[2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.0]])
    ce = cross_entropy(logits, jnp.asarray([0]), 0.1)
    log_p = jax.nn.log_softmax(logits)[0]
    target = np.full(7, 0.1 / 7)
    target[0] += 0.9
    chex.assert_trees_all_close(ce[0], -jnp.sum(target * log_p), rtol=1e-6)


def test_bf16_compute_trains_like_fp32():
    """Params stay float32; three bf16 steps follow the fp32 losses within 2%."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = _config(compute_dtype=dtype, learning_rate=1e-3)
        _, runner, state, _ = _runner(config)
        out = []
        for i in range(3):
            state, metrics = runner.train(state, _batch(seed=i), jax.random.PRNGKey(0))
            out.append(float(runner.to_host(metrics)["loss"]))
        host = runner.to_host(state)
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(host.params))
        losses[dtype] = np.array(out)
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)
    assert not np.array_equal(losses["bfloat16"], losses["float32"])  # bf16 really ran


def test_plateau_scales_the_update_and_steps_only_per_epoch():
    config = _config(learning_rate=1e-2)
    config.plateau.patience = 1
    config.plateau.factor = 0.5
    _, runner, state, host_state = _runner(config)
    before = runner.to_host(state).params
    stepped, _ = runner.train(state, _batch(), jax.random.PRNGKey(0))
    delta_full = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), runner.to_host(stepped).params, before)
    # Two epochs without improvement halve the scale; train steps do not move it.
    optimizer = optim.build_optimizer(config)
    plateau_state = optimizer.plateau_step(host_state.plateau_state, 1.0)
    plateau_state = optimizer.plateau_step(plateau_state, 1.5)
    assert float(plateau_state.scale) == pytest.approx(0.5)
    halved = runner.to_devices(host_state.replace(plateau_state=plateau_state))
    stepped_half, metrics = runner.train(halved, _batch(), jax.random.PRNGKey(0))
    assert float(runner.to_host(metrics)["lr_scale"]) == pytest.approx(0.5)
    assert float(runner.to_host(stepped_half).plateau_state.scale) == pytest.approx(0.5)
    delta_half = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), runner.to_host(stepped_half).params, before)
    chex.assert_trees_all_close(delta_half, jax.tree.map(lambda d: d * 0.5, delta_full), atol=1e-6)


def test_plateau_factor_one_is_off_and_never_changes_the_scale():
    config = _config()
    config.plateau.factor = 1.0
    config.plateau.patience = 0
    config_lib.validate(config)
    optimizer = optim.build_optimizer(config)
    state = optimizer.plateau.init({})
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        state = optimizer.plateau_step(state, value)
    assert float(state.scale) == 1.0


def test_gradient_clipping_runs_before_adamw():
    config = _config(grad_clip_norm=1e-3, weight_decay=0.0)
    tx = optim.make_optimizer(config)
    reference = optax.adamw(config.learning_rate, weight_decay=0.0)
    params = {"w": jnp.ones(3)}
    grads = [{"w": jnp.asarray([100.0, 0.0, 0.0])}, {"w": jnp.asarray([1.0, 0.0, 0.0])}]
    state, ref_state = tx.init(params), reference.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        # The same gradient clipped to norm 1e-3 by hand, then plain AdamW.
        clipped = {"w": g["w"] * (1e-3 / jnp.linalg.norm(g["w"]))}
        ref_updates, ref_state = reference.update(clipped, ref_state, params)
        chex.assert_trees_all_close(updates, ref_updates, rtol=1e-5)
    unclipped = optax.adamw(config.learning_rate, weight_decay=0.0)
    u_state = unclipped.init(params)
    for g in grads:
        u_updates, u_state = unclipped.update(g, u_state, params)
    assert not np.allclose(np.asarray(u_updates["w"]), np.asarray(updates["w"]))


def test_batch_stats_change_in_training_steps_only():
    config = _config()
    _, runner, state, host_state = _runner(config)
    stepped, _ = runner.train(state, _batch(), jax.random.PRNGKey(0))
    after = runner.to_host(stepped).batch_stats
    assert not np.allclose(jax.tree.leaves(after)[0], jax.tree.leaves(host_state.batch_stats)[0])
    batch = dict(_batch(), mask=np.ones(16, bool))
    sums = runner.eval(stepped, batch)
    chex.assert_trees_all_equal(runner.to_host(stepped).batch_stats, after)
    assert float(runner.to_host(sums)["count"]) == 16


def test_eval_counts_only_masked_rows():
    _, runner, state, _ = _runner(_config())
    batch = dict(_batch(), mask=np.array([True] * 10 + [False] * 6))
    sums = runner.to_host(runner.eval(state, batch))
    assert float(sums["count"]) == 10 and np.asarray(sums["confusion"]).sum() == 10


@pytest.mark.parametrize("override, message", [
    ("epochs=abc", "expected a value of type int"),
    ("plateau.nope=1", "unknown config key 'plateau.nope'"),
    ("augment.scale_range=a,b", "expected a value of type tuple"),
    ("balanced_sampling=maybe", "expected a value of type bool"),
    ("justtext", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        config_lib.apply_overrides(config_lib.load_experiment("cbam"), [override])


def test_overrides_are_typed():
    config = config_lib.apply_overrides(config_lib.load_experiment("cbam"), [
        "epochs=3", "learning_rate=0.01", "balanced_sampling=true", "augment.scale_range=0.8,1.2",
        "model_kwargs.dropout=0.1", "data.split_scheme=stratified"])
    assert config.epochs == 3 and config.learning_rate == 0.01 and config.balanced_sampling is True
    assert tuple(config.augment.scale_range) == (0.8, 1.2)
    assert config.model_kwargs.dropout == 0.1 and config.data.split_scheme == "stratified"


def test_every_experiment_has_the_required_keys_and_builds_its_model():
    for name in config_lib.experiment_names():
        config = config_lib.load_experiment(name)
        for key in ("epochs", "batch_size", "learning_rate", "seed", "max_train_steps"):
            assert key in config, (name, key)
        assert config.experiment == name
        config_lib.validate(config)
        build_model(config)  # the model name and its kwargs are valid


def test_flip_tta_validation_scores_the_mean_of_a_face_and_its_mirror():
    config = _config(learning_rate=0.0)
    rng = np.random.default_rng(3)
    # Faces that are not mirror-symmetric, so that the mirror changes the logits.
    batch = {"image": rng.normal(size=(16, 48, 48, 1)).astype(np.float32),
             "label": rng.integers(0, 7, size=16).astype(np.int32), "mask": np.ones(16, bool)}
    batch["mask"][-3:] = False  # padding rows stay out of every sum
    sums = {}
    for tta in ("none", "flip"):
        model, runner, device_state, state = _runner(config, eval_tta=tta)
        sums[tta] = runner.to_host(runner.eval(device_state, batch))
    eval_model = model.clone(bn_axis_name=None)
    plain = jax.nn.softmax(eval_model.apply(state.variables, batch["image"], train=False))
    mirror = jax.nn.softmax(eval_model.apply(state.variables, batch["image"][:, :, ::-1], train=False))
    for tta, probs in (("none", plain), ("flip", (plain + mirror) / 2)):
        probs, keep = np.asarray(probs)[:13], batch["label"][:13]
        expected_loss = -np.sum(np.log(probs[np.arange(13), keep]))
        assert float(sums[tta]["loss_sum"]) == pytest.approx(expected_loss, rel=1e-5), tta
        expected_confusion = np.zeros((7, 7))
        np.add.at(expected_confusion, (keep, probs.argmax(-1)), 1)
        np.testing.assert_array_equal(sums[tta]["confusion"], expected_confusion)
    assert float(sums["flip"]["loss_sum"]) != pytest.approx(float(sums["none"]["loss_sum"]), rel=1e-4)
    with pytest.raises(UserError, match="eval_tta must be one of none, flip"):
        _runner(config, eval_tta="crops")


def test_flip_tta_loss_stays_finite_when_each_view_is_certain_of_another_class():
    import types

    from fer_jax.engine.step import eval_step

    def apply_fn(variables, images, train):
        # Class 0 for a bright top-left pixel, class 1 for a dark one, with logits so far
        # apart that every other probability underflows to zero in float32.
        top_left = images[:, 0, 0, 0]
        return 1e4 * jnp.stack([top_left, 1.0 - top_left] + [jnp.zeros_like(top_left)] * 5, -1)

    image = np.zeros((2, 48, 48, 1), np.float32)
    image[:, 0, 0, 0] = 1.0  # its mirror image has the bright pixel top right
    batch = {"image": image[None], "label": np.asarray([[1, 2]], np.int32), "mask": np.ones((1, 2), bool)}
    state = types.SimpleNamespace(variables={}, eval_variables={})
    sums = jax.vmap(lambda b: eval_step(state, b, apply_fn=apply_fn, tta="flip"), axis_name=DATA_AXIS)(batch)
    # Label 1: half the mass (mirror view), -log(1/2); label 2: no view gives it any
    # probability, yet the loss stays finite (about 1e4) instead of -log(0).
    loss = float(sums["loss_sum"][0])
    assert np.isfinite(loss)
    assert loss == pytest.approx(np.log(2.0) + 1e4, abs=0.05)


def test_fine_tuning_groups_follow_the_runs_one_schedule():
    """Head, backbone (transfer.backbone_lr_scale) and frozen parts are labels of one
    optimizer, all under lr_schedule with warmup_epochs: Adam's step on a constant
    gradient is about its learning rate, so each group's update traces the schedule."""
    config = _config(learning_rate=1e-2, lr_schedule="cosine", warmup_epochs=1.0, epochs=2,
                     final_lr_fraction=0.0, weight_decay=0.0)
    config.transfer.backbone_lr_scale = 0.1
    params = {"stem": {"kernel": jnp.ones(3)}, "stage1": {"kernel": jnp.ones(3)},
              "logits": {"kernel": jnp.ones(3)}}
    labels = {"stem": {"kernel": optim.FROZEN}, "stage1": {"kernel": optim.BACKBONE},
              "logits": {"kernel": optim.HEAD}}
    optimizer = optim.build_optimizer(config, steps_per_epoch=4, labels=labels)
    state = optimizer.tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for step in range(8):
        updates, state = optimizer.tx.update(grads, state, params)
        rate = float(optimizer.learning_rate(step))
        assert float(jnp.abs(updates["logits"]["kernel"][0])) == pytest.approx(rate, rel=1e-3, abs=1e-9)
        assert float(jnp.abs(updates["stage1"]["kernel"][0])) == pytest.approx(0.1 * rate, rel=1e-3, abs=1e-9)
        assert float(jnp.abs(updates["stem"]["kernel"][0])) == 0.0
    assert float(optimizer.learning_rate(0)) == 0.0 and float(optimizer.learning_rate(4)) == pytest.approx(1e-2)


def test_a_constant_schedule_warms_up_too():
    config = _config(learning_rate=1e-2, warmup_epochs=1.0, epochs=3)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=4)
    values = [float(schedule(i)) for i in range(10)]
    assert values[0] == 0.0 and values[2] == pytest.approx(5e-3) and values[4:] == [pytest.approx(1e-2)] * 6


def test_the_train_step_reports_the_learning_rate_it_used():
    config = _config(learning_rate=1e-2, lr_schedule="cosine", epochs=1)
    model = build_model(config, bn_axis_name=DATA_AXIS)
    optimizer = optim.build_optimizer(config, steps_per_epoch=10)
    state = init_state(config, model, optimizer.tx, optimizer.plateau)
    state = state.replace(plateau_state=state.plateau_state._replace(scale=jnp.asarray(0.5)))
    train_fn, eval_fn = make_step_fns(model.apply, optimizer.tx, None, 0.0,
                                      learning_rate_fn=optimizer.learning_rate)
    runner = StepRunner(train_fn, eval_fn, "jit")
    device_state = runner.to_devices(state)
    for step in range(3):
        device_state, metrics = runner.train(device_state, _batch(seed=step), jax.random.PRNGKey(0))
        expected = 0.5 * float(optimizer.learning_rate(step))
        assert float(runner.to_host(metrics)["learning_rate"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ("final_lr_fraction=1.5", "final_lr_fraction must be a number in [0, 1], got 1.5"),
    ("plateau.factor=2.0", "plateau.factor must be a number in (0, 1] (1: off), got 2.0"),
    ("plateau.factor=0.0", "plateau.factor must be a number in (0, 1] (1: off), got 0.0"),
    ("batch_size=0", "batch_size must be a whole number >= 1, got 0"),
    ("optimizer=rmsprop", "optimizer must be one of adamw, sgd, nesterov, got 'rmsprop'"),
    ("optimizer=nesterov momentum=0.0", "momentum must be > 0 with optimizer=nesterov"),
    ("eval_tta=crops", "eval_tta must be one of none, flip, flip_crops, got 'crops'"),
    ("eval_tta=flip_crops", "eval_tta=flip_crops is for ensembles"),
    ("data.split_scheme=random", "data.split_scheme must be one of official, stratified, got 'random'"),
    ("data.val_fraction=1.0", "data.val_fraction must be a number in (0, 1), got 1.0"),
    ("warmup_epochs=-1", "warmup_epochs must be a number >= 0, got -1.0"),
    ("transfer.freeze=('stem',)", "transfer.freeze is set but init_from is empty"),
])
def test_the_config_is_validated_once_with_errors_naming_the_key(override, message):
    config = config_lib.apply_overrides(config_lib.load_experiment("cbam"), override.split(" "))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        config_lib.validate(config)
    config_lib.validate(config_lib.load_experiment("cbam"))
