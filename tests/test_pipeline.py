"""Training/eval batch streams: determinism, resumption, sharding, coverage, weights."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fer_jax.data import pipeline
from fer_jax.data.augment import AugmentConfig
from fer_jax.data.pipeline import (class_weights, epoch_order, eval_batches, normalization_stats,
                                   num_eval_batches, sampling_weights, steps_per_epoch,
                                   train_batches)
from fer_jax.errors import UserError
from fer_jax.models.classifier import normalize_images
from fer_jax.transfer.convert import adapt_first_layer

# FER2013 Training class counts (angry ... neutral).
FER_COUNTS = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965])
NORM = {"mean": 0.5, "std": 0.25}


def make_data(n: int = 203, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, size=n).astype(np.int32)
    return images, labels


def normalized(images: np.ndarray, norm=NORM) -> np.ndarray:
    return ((images.astype(np.float32) / 255 - norm["mean"]) / norm["std"])[..., None]


def train_list(images, labels, **kwargs) -> list[dict]:
    args = dict(global_batch_size=32, seed=7, epoch=0, augment=AugmentConfig.full(),
                balanced=False, norm=NORM)
    args.update(kwargs)
    return list(train_batches(images, labels, **args))


def test_tensorflow_sees_no_gpu():
    assert tf.config.get_visible_devices("GPU") == []


def test_normalization_stats_match_numpy():
    images, _ = make_data(20)
    stats = normalization_stats(images)
    pixels = images.astype(np.float64) / 255
    assert stats["mean"] == pytest.approx(pixels.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(), rel=1e-12)
    with pytest.raises(UserError):
        normalization_stats(np.full((2, 48, 48), 7, np.uint8))


def test_class_weights_on_a_known_example():
    labels = np.array([0, 1, 1, 2, 2, 2, 2])
    # inverse counts 1, 1/2, 1/4 have mean 7/12.
    weights = class_weights(labels, num_classes=3)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, [12 / 7, 6 / 7, 3 / 7], rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0)
    with pytest.raises(UserError):
        class_weights(np.array([0, 0, 2]), num_classes=3)


def test_sampling_weights_give_each_class_equal_mass():
    labels = np.array([0, 1, 1, 2, 2, 2, 2])
    weights = sampling_weights(labels, num_classes=3)
    np.testing.assert_allclose(weights, [1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    with pytest.raises(UserError):
        sampling_weights(np.array([0, 7]))


def test_batch_counts():
    assert steps_per_epoch(203, 32) == 6
    assert num_eval_batches(203, 32) == 7
    assert num_eval_batches(192, 32) == 6
    with pytest.raises(UserError):
        steps_per_epoch(203, 0)


def test_shuffle_is_a_deterministic_permutation_per_epoch():
    labels = np.repeat(np.arange(7), FER_COUNTS)
    order = epoch_order(labels, seed=1, epoch=0, balanced=False)
    assert np.array_equal(np.sort(order), np.arange(len(labels)))
    np.testing.assert_array_equal(np.bincount(labels[order]), FER_COUNTS)
    np.testing.assert_array_equal(order, epoch_order(labels, seed=1, epoch=0, balanced=False))
    assert not np.array_equal(order, epoch_order(labels, seed=1, epoch=1, balanced=False))
    assert not np.array_equal(order, epoch_order(labels, seed=2, epoch=0, balanced=False))


def test_balanced_sampling_is_near_uniform_over_classes():
    labels = np.repeat(np.arange(7), FER_COUNTS)
    order = epoch_order(labels, seed=0, epoch=0, balanced=True)
    assert len(order) == len(labels)
    counts = np.bincount(labels[order], minlength=7)
    target = len(labels) / 7
    assert np.all(np.abs(counts - target) <= 0.15 * target), counts
    # With replacement: the rare class is drawn far more often than it occurs.
    assert counts[1] > 5 * FER_COUNTS[1]
    np.testing.assert_array_equal(order, epoch_order(labels, seed=0, epoch=0, balanced=True))


def test_train_batches_shapes_dtypes_and_range():
    images, labels = make_data()
    batches = train_list(images, labels)
    assert len(batches) == 203 // 32
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (32, 48, 48, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
        pixels = batch["image"] * NORM["std"] + NORM["mean"]
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_unaugmented_batches_follow_the_epoch_order():
    images, labels = make_data()
    batches = train_list(images, labels, augment=AugmentConfig.none(), balanced=True)
    order = epoch_order(labels, seed=7, epoch=0, balanced=True)[: 6 * 32].reshape(6, 32)
    for rows, batch in zip(order, batches):
        np.testing.assert_array_equal(batch["label"], labels[rows])
        np.testing.assert_allclose(batch["image"], normalized(images[rows]), atol=1e-5)


def test_same_seed_same_batches_and_other_seed_or_epoch_differs():
    images, labels = make_data()
    first = train_list(images, labels)
    again = train_list(images, labels)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    for other in (train_list(images, labels, seed=8), train_list(images, labels, epoch=1)):
        assert not np.allclose(first[0]["image"], other[0]["image"])


def test_augmentation_differs_between_batches_with_the_same_rows():
    # Every batch holds the same image: only the per-batch augmentation seed differs.
    images = np.repeat(make_data(1)[0], 64, axis=0)
    labels = np.zeros(64, np.int32)
    batches = train_list(images, labels, global_batch_size=32)
    assert not np.allclose(batches[0]["image"], batches[1]["image"])


def test_start_batch_resumes_the_epoch_exactly():
    images, labels = make_data()
    whole = train_list(images, labels, balanced=True)
    resumed = train_list(images, labels, balanced=True, start_batch=4)
    assert len(resumed) == len(whole) - 4
    for a, b in zip(whole[4:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert train_list(images, labels, start_batch=6) == []
    with pytest.raises(UserError):
        train_list(images, labels, start_batch=7)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(process_count):
    images, labels = make_data()
    whole = train_list(images, labels, balanced=True)
    shards = [train_list(images, labels, balanced=True, process_index=p,
                         process_count=process_count) for p in range(process_count)]
    for step, batch in enumerate(whole):
        for key in ("image", "label"):
            joined = np.concatenate([shard[step][key] for shard in shards])
            np.testing.assert_array_equal(joined, batch[key])


def test_bad_batch_arguments_are_user_errors():
    images, labels = make_data()
    with pytest.raises(UserError):
        train_list(images, labels, global_batch_size=30, process_count=4)
    with pytest.raises(UserError):
        train_list(images, labels, global_batch_size=256)
    with pytest.raises(UserError):
        train_list(images, labels[:-1])
    with pytest.raises(UserError):
        train_list(images.astype(np.float32), labels)
    with pytest.raises(UserError):
        train_list(images, labels, norm={"mean": 0.5, "std": 0.0})
    with pytest.raises(UserError):
        list(eval_batches(images, labels, global_batch_size=30, norm=NORM, process_count=4))


def test_eval_covers_every_example_once_in_order():
    images, labels = make_data()
    batches = list(eval_batches(images, labels, global_batch_size=32, norm=NORM))
    assert len(batches) == num_eval_batches(203, 32)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == bool and mask.sum() == 203 and mask[:203].all()
    got = np.concatenate([b["image"] for b in batches])
    assert got.shape == (7 * 32, 48, 48, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[mask], normalized(images), atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], labels)
    assert np.all(got[~mask] == 0)


def test_training_validation_and_inference_normalize_to_the_same_bits():
    """The trained model sees the same float32 inputs in every path: the training stream
    (without augmentation), the per-epoch validation batches and inference."""
    images, labels = make_data(n=64)
    # Every pixel value, and statistics like FER2013's (x / 255 and x * float32(1 / 255)
    # differ in the last bit for some values).
    images[0] = np.arange(48 * 48).reshape(48, 48) % 256
    norm = normalization_stats(images)
    expected = normalize_images(images, norm)
    (validation,) = eval_batches(images, labels, global_batch_size=64, norm=norm)
    np.testing.assert_array_equal(validation["image"], expected)
    (training,) = train_list(images, labels, global_batch_size=64, augment=AugmentConfig.none(),
                             norm=norm)
    rows = epoch_order(labels, seed=7, epoch=0, balanced=False)
    np.testing.assert_array_equal(training["image"], expected[rows])


@pytest.mark.parametrize("norm, message", [
    ({"mean": 0.5}, "must be a mapping with numbers 'mean' and 'std'"),
    ({"mean": 0.5, "std": 0.0}, "needs a finite mean and a positive std"),
])
def test_the_pipeline_and_the_weight_conversion_refuse_a_bad_normalization_alike(norm, message):
    images, labels = make_data(n=8)
    with pytest.raises(UserError, match=f"^norm {message}"):
        eval_batches(images, labels, global_batch_size=8, norm=norm)
    stem = {"stem": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}}}
    statistics = {"stem": {"BatchNorm_0": {"mean": np.zeros(8, np.float32)}}}
    with pytest.raises(UserError, match=f"^pixel_norm {message}"):
        adapt_first_layer({"params": stem, "batch_stats": statistics}, "resnet18", gray_to_rgb="sum",
                          pixel_norm=norm)


@pytest.mark.parametrize("process_count", [2, 4])
def test_eval_shards_concatenate_to_the_global_batch(process_count):
    images, labels = make_data()
    whole = list(eval_batches(images, labels, global_batch_size=32, norm=NORM))
    shards = [list(eval_batches(images, labels, global_batch_size=32, norm=NORM,
                                process_index=p, process_count=process_count))
              for p in range(process_count)]
    for step, batch in enumerate(whole):
        for key in ("image", "label", "mask"):
            joined = np.concatenate([shard[step][key] for shard in shards])
            np.testing.assert_array_equal(joined, batch[key])


def test_measure_throughput_reports_images_per_second():
    result = pipeline.measure_throughput(num_images=256, global_batch_size=64, seconds=0.0)
    assert result["images"] == 256 and result["epochs"] == 1
    assert result["images_per_s"] > 0


def test_one_stream_over_several_epochs_is_those_epochs_in_turn():
    """A run reads one iterator: epochs 1-2 from batch 2 of epoch 1 are the per-epoch streams."""
    images, labels = make_data(64)
    common = dict(global_batch_size=16, seed=3, augment=AugmentConfig(hflip_prob=0.5, rotation_deg=10.0),
                  balanced=True, norm=NORM)
    stream = list(pipeline.train_batches(images, labels, epoch=1, start_batch=2, epochs=2, **common))
    apart = (list(pipeline.train_batches(images, labels, epoch=1, start_batch=2, **common))
             + list(pipeline.train_batches(images, labels, epoch=2, **common)))
    assert len(stream) == len(apart) == 2 + 4
    for a, b in zip(stream, apart):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    with pytest.raises(UserError, match="epochs must be a whole number >= 1"):
        pipeline.train_dataset(images, labels, epoch=0, epochs=0, **common)


def test_training_stream_runs_without_tf_data_autotuning():
    # Autotuning's thread made dropping an epoch's iterator take 12-15 s beside a running
    # step on the 2-core machine (docs/results/bench.md, "Epoch boundaries").
    images, labels = make_data(64)
    dataset = pipeline.train_dataset(images, labels, global_batch_size=16, seed=0, epoch=0,
                                     augment=AugmentConfig.none(), balanced=False, norm=NORM)
    options = dataset.options()
    assert options.autotune.enabled is False
    assert options.deterministic is True
    batches = list(dataset.as_numpy_iterator())
    assert len(batches) == 4 and batches[0]["image"].shape == (16, 48, 48, 1)
