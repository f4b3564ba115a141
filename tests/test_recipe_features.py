"""The training features of the accuracy recipes: random crops and their ten-crop, Mixup /
CutMix, SGD with Nesterov momentum, the weights' moving average, and the recipes themselves."""
from __future__ import annotations

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from fer_jax import config as config_lib
from fer_jax.cli import train as train_cli
from fer_jax.data import source
from fer_jax.data.augment import AugmentConfig, augment_batch
from fer_jax.engine import optim
from fer_jax.engine.checkpoint import RunCheckpoints, resolve_checkpoint, restore_variables
from fer_jax.engine.parallel import DATA_AXIS
from fer_jax.engine.step import eval_step, make_step_fns, mix_batch, new_state
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError
from fer_jax.models.classifier import Classifier
from fer_jax.inference.loading import load_model
from fer_jax.models.from_config import build_model
from fer_jax.data.tta import tta_views
from fer_jax.models import get_model


def _batch(n=8, size=48, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 1)).astype(np.float32)


def _config(**values):
    config = config_lib.base_config()
    for key, value in values.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


# ------------------------------------------------------------------------- random crops

def test_random_crop_cuts_each_face_to_a_window_of_itself():
    images = _batch(8)
    cfg = dataclasses.replace(AugmentConfig.none(), random_crop=40)
    out = augment_batch(tf.constant(images), tf.constant([1, 2], tf.int64), cfg).numpy()
    assert out.shape == (8, 40, 40, 1)
    origins = set()
    for face, crop in zip(images, out):
        found = [(y, x) for y in range(9) for x in range(9)
                 if np.array_equal(face[y:y + 40, x:x + 40], crop)]
        assert found, "a crop that is no window of its face"
        origins.add(found[0])
    assert len(origins) > 1  # the positions are random, per face


def test_random_crop_is_validated_with_its_key():
    with pytest.raises(UserError, match="augment.random_crop"):
        config_lib.validate(_config(**{"augment.random_crop": 50}))
    assert config_lib.input_size(_config(**{"augment.random_crop": 40})) == 40
    assert config_lib.input_size(config_lib.base_config()) == 48


def test_flip_crops_of_a_crop_model_are_the_corners_and_centre_with_mirrors():
    faces = np.arange(2 * 48 * 48, dtype=np.int64).reshape(2, 48, 48).astype(np.uint8)
    views = tta_views(faces, "flip_crops", crop=40)
    assert len(views) == 10 and all(v.shape == (2, 40, 40) for v in views)
    windows = [faces[:, 4:44, 4:44], faces[:, :40, :40], faces[:, :40, 8:], faces[:, 8:, :40],
               faces[:, 8:, 8:]]
    for got, want in zip(views, windows + [w[:, :, ::-1] for w in windows]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(tta_views(faces, "none", crop=40)[0], windows[0])
    # a 48x48 model keeps its ten-crop of shifted whole faces
    assert all(v.shape == (2, 48, 48) for v in tta_views(faces, "flip_crops"))


def test_a_crop_model_is_scored_on_the_centre_window():
    model = get_model("vgg_fer", widths=(4, 4, 4, 4), dense_width=8)
    variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 40, 40, 1)), train=False)
    norm = {"mean": 0.5, "std": 0.25}
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    classifier = Classifier(model, variables, norm, batch_size=4, crop=40)
    np.testing.assert_allclose(classifier.probabilities(faces),
                               classifier.probabilities(faces[:, 4:44, 4:44]), rtol=1e-6)
    # validation in the train step does the same on the normalized batch
    state = new_state(dict(variables), optim.make_optimizer(_config()), optim.make_plateau(_config()))
    batch = {"image": _batch(4), "label": np.zeros(4, np.int32), "mask": np.ones(4, bool)}
    crop_eval = functools.partial(eval_step, apply_fn=model.apply, image_size=40)
    sums = jax.vmap(crop_eval, axis_name=DATA_AXIS, in_axes=(None, 0))(
        state, jax.tree.map(lambda a: a[None], batch))
    logits = model.apply(variables, batch["image"][:, 4:44, 4:44], train=False)
    want = -jax.nn.log_softmax(logits)[:, 0].sum()
    np.testing.assert_allclose(sums["loss_sum"][0], want, rtol=1e-5)


# ------------------------------------------------------------------------ mixup / cutmix

@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_batches_have_soft_targets_that_match_the_pixels(mixup, cutmix):
    images = jnp.asarray(_batch(16))
    labels = jnp.arange(16) % 7
    mixed, targets = mix_batch(images, jax.nn.one_hot(labels, 7), jax.random.PRNGKey(3),
                               mixup_alpha=mixup, cutmix_alpha=cutmix)
    chex.assert_shape(mixed, images.shape)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.min(jnp.max(targets, -1))) < 1.0  # mixed targets, not one-hot
    assert not np.allclose(mixed, images)


def _one_step(config, variables, model, batch):
    opt = optim.build_optimizer(config)
    state = new_state(variables, opt.tx, opt.plateau, ema=config.ema_decay > 0)
    train_fn, _ = make_step_fns(model.apply, opt.tx, None, config.label_smoothing,
                                mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
                                ema_decay=config.ema_decay)
    # jitted: a whole step dispatched op by op takes several times its compilation
    run = jax.jit(jax.vmap(train_fn, axis_name=DATA_AXIS, in_axes=(None, 0, None)))
    out = run(state, jax.tree.map(lambda a: a[None], batch), jax.random.PRNGKey(0))
    return jax.tree.map(lambda a: a[0], out)


def _tiny():
    model = get_model("simple_cnn_v2")
    variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 48, 48, 1)), train=False)
    batch = {"image": _batch(8), "label": np.arange(8, dtype=np.int32) % 7}
    return model, dict(variables), batch


def test_mixup_changes_the_loss_of_the_step():
    model, variables, batch = _tiny()
    _, plain = _one_step(_config(), variables, model, batch)
    _, mixed = _one_step(_config(mixup_alpha=0.4, label_smoothing=0.1), variables, model, batch)
    assert np.isfinite(mixed["loss"]) and not np.isclose(plain["loss"], mixed["loss"])


def test_mixup_with_class_weights_is_refused_naming_the_keys():
    with pytest.raises(UserError, match="mixup_alpha/cutmix_alpha.*class_weighted_loss"):
        config_lib.validate(_config(cutmix_alpha=1.0, class_weighted_loss=True))
    with pytest.raises(UserError, match="mixup_alpha"):
        config_lib.validate(_config(mixup_alpha=-1.0))


# -------------------------------------------------------------------------- optimizer

@pytest.mark.parametrize("optimizer, factor", [("sgd", 1.0), ("nesterov", 1.9)])
def test_sgd_first_update_is_the_momentum_rule(optimizer, factor):
    config = _config(optimizer=optimizer, momentum=0.9, learning_rate=0.1)
    tx = optim.build_optimizer(config).tx
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    updates, _ = tx.update(grads, tx.init(params), params)
    # Nesterov's first step: -lr * (g + momentum * g); plain momentum: -lr * g
    np.testing.assert_allclose(updates["w"], -0.1 * factor * grads["w"], rtol=1e-6)


def test_optimizer_keys_are_validated():
    for values, key in (({"optimizer": "lion"}, "optimizer"), ({"momentum": 1.5}, "momentum"),
                        ({"mixup_alpha": -0.5}, "mixup_alpha"), ({"ema_decay": 1.0}, "ema_decay")):
        with pytest.raises(UserError, match=f"^{key} "):
            config_lib.validate(_config(**values))


# ------------------------------------------------------------------------------- EMA

def test_ema_follows_the_weights_and_is_what_eval_uses():
    model, variables, batch = _tiny()
    state, _ = _one_step(_config(ema_decay=0.9), variables, model, batch)
    rate = 1.0 / 10.0  # the warm-up decay of step 0
    want = jax.tree.map(lambda v0, v1: rate * v0 + (1 - rate) * v1, variables["params"], state.params)
    chex.assert_trees_all_close(state.ema["params"], want, rtol=1e-5, atol=1e-7)
    assert state.eval_variables is state.ema
    plain, _ = _one_step(_config(), variables, model, batch)
    assert plain.ema is None and plain.eval_variables["params"] is plain.params


@pytest.fixture()
def synthetic_only(monkeypatch, tmp_path):
    """No FER2013 anywhere: the runs train on the built-in synthetic faces."""
    monkeypatch.delenv(source.ENV_VAR, raising=False)
    monkeypatch.setattr(source, "tfds_manual_dir", lambda: tmp_path / "no_tfds")


def test_ema_run_checkpoints_the_average_and_resumes_it(synthetic_only, tmp_path):
    config = _config(model="simple_cnn_v2", ema_decay=0.9, batch_size=16, max_train_steps=2,
                     **{"data.synthetic_size": 400})
    prepared = source.prepare_data(config.data)
    train_and_evaluate(config, tmp_path, prepared=prepared, progress=False)
    latest = max((tmp_path / "checkpoints" / "latest").iterdir(), key=lambda p: int(p.name))
    checkpoints = RunCheckpoints(tmp_path)
    variables, train, _ = checkpoints.restore_latest(None, None)
    checkpoints.close()
    assert "params" in train  # the trained weights, beside the optimizer state
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(variables["params"]),
                                                       jax.tree.leaves(train["params"])))
    best = restore_variables(resolve_checkpoint(tmp_path))
    chex.assert_trees_all_close(best["params"], variables["params"])  # the EMA was evaluated
    loaded = load_model(tmp_path)
    chex.assert_trees_all_close(loaded.variables["params"], variables["params"])
    config.max_train_steps = 3
    summary = train_and_evaluate(config, tmp_path, prepared=prepared, progress=False)
    assert summary["steps"] == 3 and latest.exists()


# ----------------------------------------------------------------------------- recipes

@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg_fer", "resnet_fer", "resnet_crop"])
def test_recipe_builds_and_trains_two_steps(name, synthetic_only, tmp_path):
    status = train_cli.main(["--experiment", name, "--workdir", str(tmp_path), "--no-progress",
                             "--set", "max_train_steps=2", "--set", "data.synthetic_size=400",
                             "--set", "batch_size=16", "--eval-batch-size", "64"])
    assert status in (0, None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2
    loaded = load_model(tmp_path)
    assert loaded.classifier().crop == 40
    model = build_model(loaded.config)
    assert model is not None
