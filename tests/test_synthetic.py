"""The synthetic FER stand-in: determinism, layout, class mix, speed, and its difficulty."""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax.data import synthetic
from fer_jax.data.synthetic import (CLASS_PROPORTIONS, SYNTHETIC_NOTICE, make_synthetic,
                                    render_faces, sample_face_params)
from fer_jax.data.types import (CLASS_NAMES, NUM_CLASSES, PRIVATE_TEST, PUBLIC_TEST, TRAINING,
                                FerData)
from fer_jax.errors import UserError


@pytest.fixture(scope="module")
def data_20k() -> FerData:
    return make_synthetic(20000, seed=0)


def test_same_seed_gives_same_bytes():
    a, b = make_synthetic(300, seed=3), make_synthetic(300, seed=3)
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.usage, b.usage)
    assert a.fingerprint == b.fingerprint


def test_different_seed_or_size_differs():
    a, b = make_synthetic(300, seed=3), make_synthetic(300, seed=4)
    assert np.mean(a.images != b.images) > 0.5
    assert a.fingerprint != b.fingerprint
    assert make_synthetic(301, seed=3).fingerprint != a.fingerprint
    assert make_synthetic(300, seed=3, usage_fractions=(0.6, 0.2, 0.2)).fingerprint != a.fingerprint


def test_fingerprint_is_stable_across_releases_of_the_same_generator():
    # Changing this value means every cached synthetic data set changes identity:
    # only when GENERATOR_VERSION is bumped.
    assert synthetic.GENERATOR_VERSION == "fer_jax.synthetic/1"
    assert make_synthetic(50, seed=0).fingerprint == (
        "cad96291baf3e77a0e4b4512c9fe1fc523125d55c191bc21b2b58f08a9739972")


def test_shapes_dtypes_and_source():
    data = make_synthetic(130, seed=7)
    assert data.images.shape == (130, 48, 48) and data.images.dtype == np.uint8
    assert data.labels.shape == (130,) and data.labels.dtype == np.int32
    assert set(np.unique(data.labels)) == set(range(NUM_CLASSES))
    assert set(data.usage) == {TRAINING, PUBLIC_TEST, PRIVATE_TEST}
    assert data.source == "synthetic:seed=7,n=130"
    assert data.has_labels
    # Faces use the whole grey range, not a constant or a near-binary image.
    assert data.images.std() > 20 and len(np.unique(data.images)) > 200


def test_class_proportions_follow_fer_training(data_20k):
    share = data_20k.class_counts() / len(data_20k)
    np.testing.assert_allclose(share, CLASS_PROPORTIONS, atol=0.01)
    assert share[CLASS_NAMES.index("happy")] == pytest.approx(0.25, abs=0.01)
    assert share[CLASS_NAMES.index("disgust")] == pytest.approx(0.015, abs=0.003)


def test_every_class_present_for_small_sizes():
    for n in (7, 50, 200):
        counts = make_synthetic(n, seed=1).class_counts()
        assert counts.sum() == n
        assert np.all(counts >= 1), (n, counts)
    assert np.all(make_synthetic(200, seed=1).split(TRAINING).class_counts() >= 1)


def test_usage_fractions_are_stratified(data_20k):
    for usage, fraction in zip((TRAINING, PUBLIC_TEST, PRIVATE_TEST), (0.8, 0.1, 0.1)):
        part = data_20k.split(usage)
        assert abs(len(part) - fraction * 20000) <= NUM_CLASSES
        # Within each class too, not just overall.
        np.testing.assert_allclose(part.class_counts() / data_20k.class_counts(), fraction, atol=0.005)
    # Kaggle's order: all Training rows, then PublicTest, then PrivateTest.
    first_non_training = np.argmax(data_20k.usage != TRAINING)
    assert np.all(data_20k.usage[:first_non_training] == TRAINING)


def test_custom_usage_fractions():
    data = make_synthetic(1000, seed=2, usage_fractions=(0.5, 0.5, 0.0))
    assert len(data.split(TRAINING)) == pytest.approx(500, abs=NUM_CLASSES)
    assert len(data.split(PUBLIC_TEST)) == pytest.approx(500, abs=NUM_CLASSES)
    assert len(data.split(PRIVATE_TEST)) == 0


@pytest.mark.parametrize("kwargs", [
    dict(num_examples=0), dict(num_examples=-5), dict(num_examples=10.5), dict(num_examples=True),
    dict(num_examples=10, seed=-1), dict(num_examples=10, seed=1.5),
    dict(num_examples=10, usage_fractions=(0.5, 0.5)),
    dict(num_examples=10, usage_fractions=(0.9, 0.2, -0.1)),
    dict(num_examples=10, usage_fractions=(0.8, 0.1, 0.2)),
    dict(num_examples=10, usage_fractions="abc"),
])
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError, match="synthetic data"):
        make_synthetic(**kwargs)


def test_class_geometry_carries_the_expression():
    labels = np.repeat(np.arange(NUM_CLASSES), 400)
    params = sample_face_params(labels, np.random.default_rng(0))

    def mean(name, cls):
        return params[name][labels == CLASS_NAMES.index(cls)].mean()

    assert mean("mouth_curve", "happy") > mean("mouth_curve", "neutral") + 0.05
    assert mean("mouth_curve", "sad") < mean("mouth_curve", "neutral") - 0.04
    assert mean("eye_open", "surprise") > 1.5 * mean("eye_open", "neutral")
    assert mean("brow_tilt", "angry") > 0.05 > mean("brow_tilt", "neutral")
    assert mean("nose_wrinkle", "disgust") > 0.6 > mean("nose_wrinkle", "sad")
    assert mean("mouth_lower", "surprise") > mean("mouth_lower", "sad") + 0.08
    # Jitter: the same class does not give one fixed face.
    assert params["mouth_curve"][labels == CLASS_NAMES.index("happy")].std() > 0.01


def test_rendering_many_faces_is_a_function_of_the_generator():
    labels = np.arange(3000) % NUM_CLASSES
    params = sample_face_params(labels, np.random.default_rng(0))
    images = render_faces(params, np.random.default_rng(1))
    assert images.shape == (3000, 48, 48) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, render_faces(params, np.random.default_rng(1)))
    assert not np.array_equal(images, render_faces(params, np.random.default_rng(2)))


def test_notice_says_synthetic_and_not_real():
    assert SYNTHETIC_NOTICE.startswith("SYNTHETIC DATA")
    assert "not a result on real faces" in SYNTHETIC_NOTICE


def _linear_softmax_accuracy(train: FerData, val: FerData, steps: int = 300) -> float:
    """Full-batch L2-regularized softmax regression on standardized pixels."""
    x = train.images.reshape(len(train), -1).astype(np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-3
    x = jnp.asarray((x - mean) / std)
    x_val = jnp.asarray((val.images.reshape(len(val), -1) - mean) / std)
    y = jnp.asarray(train.labels)
    params = {"w": jnp.zeros((x.shape[1], NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)}
    optimizer = optax.adam(3e-3)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                + 1e-3 * jnp.sum(p["w"] ** 2))

    @jax.jit
    def step(p, state):
        updates, state = optimizer.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    predicted = np.asarray(jnp.argmax(x_val @ params["w"] + params["b"], axis=1))
    return float(np.mean(predicted == val.labels))


def test_linear_model_on_pixels_stays_well_below_80_percent(data_20k):
    train = data_20k.split(TRAINING).subset(np.arange(5000))
    val = data_20k.split(PUBLIC_TEST)
    majority = np.mean(val.labels == np.bincount(train.labels).argmax())
    accuracy = _linear_softmax_accuracy(train, val)
    print(f"linear validation accuracy {accuracy:.3f} (majority {majority:.3f})")
    # It learns something (so the check is live) but pose, lighting and clutter defeat it.
    assert accuracy > majority + 0.05
    assert accuracy < 0.65, f"linear model reached {accuracy:.3f}: synthetic data too easy"


@pytest.mark.slow
def test_small_cnn_learns_the_expressions_above_80_percent():
    class SmallCnn(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x[..., None]
            for features in (32, 64):
                x = nn.relu(nn.Conv(features, (3, 3))(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Dense(128)(x.reshape(len(x), -1)))
            return nn.Dense(NUM_CLASSES)(x)

    data = make_synthetic(10000, seed=0)
    train, val = data.split(TRAINING), data.split(PUBLIC_TEST)
    x = (train.images.astype(np.float32) - 128.0) / 64.0
    x_val = (val.images.astype(np.float32) - 128.0) / 64.0
    model, optimizer = SmallCnn(), optax.adam(1e-3)
    params = model.init(jax.random.PRNGKey(0), x[:1])
    state = optimizer.init(params)

    @jax.jit
    def step(p, state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()
        updates, state = optimizer.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    rng, batch = np.random.default_rng(0), 128
    for _ in range(6):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            index = order[i:i + batch]
            params, state = step(params, state, x[index], train.labels[index])
    predicted = np.asarray(jnp.argmax(model.apply(params, x_val), axis=-1))
    accuracy = float(np.mean(predicted == val.labels))
    print(f"small CNN validation accuracy {accuracy:.3f}")
    assert accuracy > 0.80, f"small CNN reached only {accuracy:.3f}: synthetic data too hard"
