"""Knowledge distillation: the loss, the teachers' rows in the batches, the cache, a run."""
from __future__ import annotations

import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax import config as config_lib
from fer_jax import distillation
from fer_jax.data import pipeline
from fer_jax.data.augment import AugmentConfig
from fer_jax.data.source import prepare_data
from fer_jax.engine import optim
from fer_jax.engine.parallel import DATA_AXIS
from fer_jax.engine.run_options import RunOptions
from fer_jax.engine.step import distillation_loss, make_step_fns, mix_batch, new_state
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError
from fer_jax.model_release import _recipe_lines
from fer_jax.models import get_model


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------------------ the loss

def test_distillation_loss_is_t_squared_kl_of_the_softened_distributions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
    teacher = _softmax(rng.normal(size=(5, 7)) * 2).astype(np.float32)
    t = 3.0
    p = _softmax(np.log(teacher) / t)
    q = _softmax(logits / t)
    want = t * t * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    np.testing.assert_allclose(distillation_loss(jnp.asarray(logits), jnp.asarray(teacher), t), want,
                               rtol=1e-5, atol=1e-6)


def test_distillation_loss_is_zero_where_the_student_matches_and_finite_for_zero_probabilities():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 7)), jnp.float32)
    np.testing.assert_allclose(distillation_loss(logits, jax.nn.softmax(logits), 4.0), 0.0, atol=1e-5)
    hard = jax.nn.one_hot(jnp.arange(4), 7)  # exact zeros
    assert bool(jnp.all(jnp.isfinite(distillation_loss(logits, hard, 2.0))))


def _step(alpha, *, mixup=0.0, labels=None, teacher=None, temperature=2.0, smoothing=0.0):
    model = get_model("simple_cnn_v1", widths=(4, 8), dense_width=16, dropout=0.0)
    variables = dict(model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 48, 48, 1)), train=False))
    variables.setdefault("batch_stats", {})
    opt = optim.build_optimizer(config_lib.base_config())
    state = new_state(variables, opt.tx, opt.plateau)
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(8, 48, 48, 1)).astype(np.float32),
             "label": np.arange(8, dtype=np.int32) % 7 if labels is None else labels,
             "teacher": (_softmax(rng.normal(size=(8, 7))).astype(np.float32)
                         if teacher is None else teacher)}
    train_fn, _ = make_step_fns(model.apply, opt.tx, None, smoothing, mixup_alpha=mixup,
                                distill_alpha=alpha, distill_temperature=temperature)
    run = jax.jit(jax.vmap(train_fn, axis_name=DATA_AXIS, in_axes=(None, 0, None)))
    _, metrics = run(state, jax.tree.map(lambda a: a[None], batch), jax.random.PRNGKey(0))
    logits = model.apply(variables, batch["image"], train=True, rngs={"dropout": jax.random.PRNGKey(9)},
                         mutable=["batch_stats"])[0]
    return float(metrics["loss"][0]), batch, logits


def test_with_alpha_one_the_labels_do_not_matter_and_with_alpha_zero_the_teacher_does_not():
    teacher = _softmax(np.random.default_rng(3).normal(size=(8, 7))).astype(np.float32)
    a, _, _ = _step(1.0, teacher=teacher, labels=np.zeros(8, np.int32))
    b, _, _ = _step(1.0, teacher=teacher, labels=np.full(8, 5, np.int32))
    assert a == pytest.approx(b, rel=1e-6)
    c, _, _ = _step(0.0, teacher=teacher)
    d, _, _ = _step(0.0, teacher=np.full((8, 7), 1 / 7, np.float32))
    assert c == pytest.approx(d, rel=1e-6)
    e, _, _ = _step(0.5, teacher=teacher)
    f, _, _ = _step(0.5, teacher=np.full((8, 7), 1 / 7, np.float32))
    assert e != pytest.approx(f, rel=1e-3)


def test_the_blended_loss_is_the_weighted_sum_of_its_two_parts():
    alpha, t = 0.7, 3.0
    loss, batch, _ = _step(alpha, temperature=t)
    hard, _, _ = _step(0.0, temperature=t)
    soft_only, _, _ = _step(1.0, temperature=t)
    assert loss == pytest.approx((1 - alpha) * hard + alpha * soft_only, rel=1e-5)


def test_each_row_is_taught_by_its_own_teacher_row():
    t = 2.0
    loss, batch, logits = _step(1.0, temperature=t)
    want = float(jnp.mean(distillation_loss(logits, jnp.asarray(batch["teacher"]), t)))
    assert loss == pytest.approx(want, rel=1e-5)
    shuffled = float(jnp.mean(distillation_loss(logits, jnp.roll(jnp.asarray(batch["teacher"]), 1, 0), t)))
    assert loss != pytest.approx(shuffled, rel=1e-3)


def test_mixing_blends_the_teachers_rows_as_it_blends_the_labels():
    labels = jnp.arange(16) % 7
    images = jnp.asarray(np.random.default_rng(4).uniform(size=(16, 48, 48, 1)), jnp.float32)
    both = jnp.concatenate([jax.nn.one_hot(labels, 7), jax.nn.one_hot((labels + 3) % 7, 7)], -1)
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0)):
        _, mixed = mix_batch(images, both, jax.random.PRNGKey(5), mixup_alpha=mixup, cutmix_alpha=cutmix)
        hard, teacher = mixed[:, :7], mixed[:, 7:]
        np.testing.assert_allclose(teacher, jnp.roll(hard, 3, axis=-1), atol=1e-6)
        assert float(jnp.min(jnp.max(hard, -1))) < 1.0


# -------------------------------------------------------------------- rows in the batches

def test_each_batch_carries_the_teacher_rows_of_its_own_examples():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(96, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, size=96).astype(np.int32)
    teacher = np.eye(7, dtype=np.float32)[(labels + 3) % 7]  # row i points at label_i + 3
    norm = pipeline.normalization_stats(images)
    for process in range(2):
        batches = list(pipeline.train_batches(
            images, labels, global_batch_size=16, seed=1, epoch=2, augment=AugmentConfig.none(),
            balanced=True, norm=norm, teacher=teacher, process_index=process, process_count=2))
        assert len(batches) == 6
        for batch in batches:
            chex.assert_shape(batch["teacher"], (8, 7))
            np.testing.assert_array_equal(batch["teacher"].argmax(-1), (batch["label"] + 3) % 7)


@pytest.mark.parametrize("teacher, message", [
    (np.full((5, 7), 1 / 7, np.float32), "must be a float array (6, 7)"),
    (np.full((6, 7), 0.5, np.float32), "6 rows are not probabilities (first: row 0"),
    (np.where(np.arange(6)[:, None] == 5, np.nan, np.eye(7, dtype=np.float32)[:6]),
     "1 rows are not probabilities (first: row 5"),
])
def test_bad_teacher_probabilities_are_refused_in_one_line(teacher, message):
    with pytest.raises(UserError) as refused:
        pipeline.check_teacher_probabilities(teacher, 6)
    assert message in str(refused.value) and "\n" not in str(refused.value)


# ------------------------------------------------------------------------- the config

@pytest.mark.parametrize("values, message", [
    ({"alpha": 0.5}, "distill.teachers is empty"),
    ({"teachers": ("runs/x",)}, "distill.alpha is 0"),
    ({"teachers": ("runs/x",), "alpha": 1.5}, "distill.alpha must be a number in [0, 1]"),
    ({"teachers": ("runs/x",), "alpha": 0.5, "temperature": 0.0}, "distill.temperature must be a number > 0"),
])
def test_distill_keys_are_checked(values, message):
    config = config_lib.base_config()
    for key, value in values.items():
        config.distill[key] = value
    with pytest.raises(UserError) as refused:
        config_lib.validate(config)
    assert message in str(refused.value)


def test_the_distill_experiment_names_the_released_ensemble():
    config = config_lib.validate(config_lib.load_experiment("distill"))
    assert config.distill.teachers == ("released",) and config.distill.alpha > 0
    names, checkpoints, weights = distillation.resolve_teachers(config.distill.teachers)
    assert names == ["final", "cbam"] and len(checkpoints) == 2 and weights == [1.0, 1.0]


def test_a_distilled_model_card_names_its_teachers():
    config = config_lib.load_experiment("distill").to_dict()
    lines = _recipe_lines(json.loads(json.dumps(config)))
    assert any(line.startswith("- distilled from `released` (alpha 0.7, temperature 4") for line in lines)
    plain = _recipe_lines(json.loads(json.dumps(config_lib.load_experiment("fast_15min").to_dict())))
    assert not any("distilled" in line for line in plain)


def test_an_ensemble_file_is_the_only_teacher_entry_or_none():
    with pytest.raises(UserError, match="only teacher entry"):
        distillation.resolve_teachers(["released", "runs/cbam"])


def test_a_distilling_config_without_a_teacher_is_refused(tmp_path, fer_sample_path):
    config = _student_config(("runs/anything",))
    with pytest.raises(UserError, match="no teacher was given"):
        train_and_evaluate(config, tmp_path / "run", prepared=prepare_data(config.data, str(fer_sample_path)),
                           options=RunOptions(wandb_mode="disabled", progress=False))


def test_a_missing_teacher_is_one_line_and_exit_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fer_jax.train", "--experiment=distill",
                           f"--workdir={tmp_path / 'run'}", "--set", f"distill.teachers={tmp_path / 'nope'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(tmp_path / "nope") in done.stderr.splitlines()[-1]


# -------------------------------------------------------------------- a run and its cache

def _student_config(teachers):
    config = config_lib.load_experiment("distill")
    config.distill.teachers = tuple(str(t) for t in teachers)
    config.model_kwargs = ml_collections.ConfigDict({"widths": (4, 8), "dense_width": 16, "kernel_size": 3,
                                                     "dropout": 0.0})
    config.batch_size = 32
    config.max_train_steps = 3
    config.budget_minutes = 0.0
    return config


def test_a_distilled_run_trains_and_scores_the_training_faces_once(tmp_path, fer_sample_path, simple_run,
                                                                  cbam_run, monkeypatch):
    config = _student_config((simple_run, cbam_run))
    prepared = prepare_data(config.data, str(fer_sample_path))
    options = RunOptions(wandb_mode="disabled", progress=False)
    teacher = distillation.teacher_for(config, progress=False)
    summary = train_and_evaluate(config, tmp_path / "run", prepared=prepared, options=options, teacher=teacher)
    assert summary["steps"] == 3 and np.isfinite(summary["last_train_loss"])

    cached = np.load(tmp_path / "run" / distillation.CACHE_FILE)
    train = prepared.splits.train
    probabilities = cached["probabilities"]
    chex.assert_shape(probabilities, (len(train), 7))
    identity = json.loads(str(cached["identity"]))
    members = [distillation.load_member(c) for c in (simple_run, cbam_run)]
    assert [t["step_dir"] for t in identity["teachers"]] == [m.info["step_dir"] for m in members]
    # The mean of the two teachers' mirror-averaged probabilities, as scored directly.
    direct = np.mean([m.probabilities(train.images[:40], "flip") for m in members], axis=0)
    np.testing.assert_allclose(probabilities[:40], direct, atol=1e-5)

    # Resumed and longer: the cache is read, the teachers are not run again.
    def refuse(*args, **kwargs):
        raise AssertionError("the teachers ran again")
    monkeypatch.setattr(distillation, "teacher_probabilities", refuse)
    config.max_train_steps = 4
    summary = train_and_evaluate(config, tmp_path / "run", prepared=prepared, options=options, teacher=teacher)
    assert summary["steps"] == 4
    # Other faces: not what the cache holds, so they are scored.
    with pytest.raises(AssertionError, match="ran again"):
        teacher(train.images[:10], tmp_path / "run")
