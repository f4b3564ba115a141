"""Splits: the official one, its fallback, and the original study's duplicate-aware stratified one."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import generated_fer_arrays
from fer_jax.data.readers import read_fer
from fer_jax.data.splits import duplicate_groups, make_splits, stratified_group_split
from fer_jax.data.types import NUM_CLASSES, PRIVATE_TEST, PUBLIC_TEST, TEST, TRAINING, UNLABELLED, FerData
from fer_jax.errors import UserError


def make_data(images, labels, usage) -> FerData:
    return FerData(images=np.asarray(images, dtype=np.uint8), labels=np.asarray(labels, dtype=np.int32),
                   usage=np.asarray(usage, dtype="<U11"), source="test", fingerprint="")


def concat(*parts: FerData) -> FerData:
    return make_data(*(np.concatenate([getattr(part, name) for part in parts])
                       for name in ("images", "labels", "usage")))


@pytest.fixture(scope="module")
def sample(fer_sample_path) -> FerData:
    return read_fer(fer_sample_path)


@pytest.fixture(scope="module")
def training_with_duplicates() -> FerData:
    """3,500 Training rows, 10% of them copies of other rows (some relabelled, as in FER2013)."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(NUM_CLASSES), [300, 100, 450, 1000, 600, 400, 650])
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    copies = rng.choice(len(labels), size=350, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(len(labels)), copies), size=350, replace=False)
    images[copies] = images[originals]
    labels[copies] = labels[originals]
    labels[copies[:50]] = (labels[originals[:50]] + 1) % NUM_CLASSES
    return make_data(images, labels, [TRAINING] * len(labels))


def class_shares(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=NUM_CLASSES) / len(labels)


def row_keys(data: FerData) -> set[bytes]:
    return {image.tobytes() for image in data.images}


# ------------------------------------------------------------------ official


def test_official_uses_the_usage_column():
    data = make_data(*generated_fer_arrays(n_per_class_split=3))
    splits = make_splits(data)
    parts = ((splits.train, TRAINING), (splits.validation, PUBLIC_TEST), (splits.test, PRIVATE_TEST))
    for part, usage in parts:
        assert len(part) == 21 and np.all(part.usage == usage)
    np.testing.assert_array_equal(splits.validation.images, data.split(PUBLIC_TEST).images)
    assert "validation = PublicTest (21)" in splits.description
    assert "test = PrivateTest (21)" in splits.description


def test_official_on_the_sample_has_no_test(sample):
    splits = make_splits(sample, "official")
    assert len(splits.train) == np.sum(sample.usage == TRAINING)
    assert len(splits.validation) == np.sum(sample.usage == PUBLIC_TEST)
    assert splits.test is None and "no PrivateTest rows" in splits.description


def test_official_falls_back_without_public_test(training_with_duplicates):
    splits = make_splits(training_with_duplicates, "official")
    assert np.all(splits.validation.usage == TRAINING)
    assert len(splits.train) + len(splits.validation) == len(training_with_duplicates)
    assert abs(len(splits.validation) - 700) <= 3
    assert "no PublicTest rows" in splits.description and "stratified 20% of Training" in splits.description
    assert splits.test is None


def test_official_never_validates_on_unlabelled_test_rows(training_with_duplicates):
    unlabelled = make_data(training_with_duplicates.images[:30], [UNLABELLED] * 30, [TEST] * 30)
    data = concat(training_with_duplicates, unlabelled)
    splits = make_splits(data)
    assert np.all(splits.validation.labels != UNLABELLED) and np.all(splits.train.labels != UNLABELLED)
    assert splits.test is None
    assert "not used: 30 unlabelled Test rows" in splits.description


def test_official_tests_on_labelled_test_rows_of_a_folder(training_with_duplicates):
    labelled_test = make_data(np.zeros((14, 48, 48)), np.arange(14) % 7, [TEST] * 14)
    data = concat(training_with_duplicates, labelled_test)
    splits = make_splits(data)
    assert splits.test is not None and len(splits.test) == 14
    assert "labelled Test rows" in splits.description


def test_nothing_to_train_on_is_a_user_error():
    images, labels, usage = generated_fer_arrays(n_per_class_split=1)
    only_tests = make_data(images, labels, np.where(usage == TRAINING, PUBLIC_TEST, usage))
    with pytest.raises(UserError, match="nothing to train on: no Training rows"):
        make_splits(only_tests)
    with pytest.raises(UserError, match="unknown split scheme 'random'"):
        make_splits(make_data(images, labels, usage), "random")
    with pytest.raises(UserError, match="val_fraction"):
        make_splits(make_data(images, labels, usage), val_fraction=1.5)


# ---------------------------------------------------------------- stratified


def test_stratified_sizes_and_class_shares(sample):
    training = sample.split(TRAINING)
    splits = make_splits(sample, "stratified")
    assert len(splits.train) + len(splits.validation) == len(training)
    assert abs(len(splits.validation) - 0.2 * len(training)) <= 3
    np.testing.assert_allclose(class_shares(splits.validation.labels), class_shares(splits.train.labels),
                               atol=0.01)
    assert np.all(splits.validation.usage == TRAINING)
    assert splits.test is not None and np.all(splits.test.usage == PUBLIC_TEST)
    assert "validates on part of Training" in splits.description


def test_duplicates_never_straddle_train_and_validation(training_with_duplicates):
    for seed in range(5):
        splits = make_splits(training_with_duplicates, "stratified", seed=seed)
        assert not row_keys(splits.train) & row_keys(splits.validation)
        np.testing.assert_allclose(class_shares(splits.validation.labels), class_shares(splits.train.labels),
                                   atol=0.01)


def test_stratified_is_deterministic_by_seed(training_with_duplicates):
    def validation_rows(seed):
        groups = duplicate_groups(training_with_duplicates.images)
        return stratified_group_split(training_with_duplicates.labels, groups, val_fraction=0.2, seed=seed)
    np.testing.assert_array_equal(validation_rows(42), validation_rows(42))
    assert not np.array_equal(validation_rows(42), validation_rows(43))
    first = make_splits(training_with_duplicates, "stratified", seed=7)
    again = make_splits(training_with_duplicates, "stratified", seed=7)
    np.testing.assert_array_equal(first.validation.images, again.validation.images)


def test_val_fraction_is_honoured(training_with_duplicates):
    splits = make_splits(training_with_duplicates, "stratified", val_fraction=0.5)
    assert abs(len(splits.validation) - 1750) <= 4


def test_duplicate_groups_ids():
    images = np.zeros((6, 48, 48), dtype=np.uint8)
    images[1, 0, 0] = 1
    images[3] = images[1]
    images[4, 47, 47] = 255
    np.testing.assert_array_equal(duplicate_groups(images), [0, 1, 0, 1, 2, 0])
    assert duplicate_groups(np.zeros((0, 48, 48), np.uint8)).shape == (0,)


def test_groups_split_whole_and_by_majority_label():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])  # group 0: two label-0 rows, one label-1 row
    for seed in range(10):
        in_val = stratified_group_split(labels, groups, val_fraction=0.3, seed=seed)
        assert len(set(in_val[groups == 0])) == 1  # never split
        # Group 0 (3 rows) counts as class 0, whose 30% rounds to no group; class 1 has 7 rows -> 2.
        assert not in_val[0] and in_val.sum() == 2


@pytest.mark.slow
def test_stratified_on_the_full_file(fer_public_path):
    data = read_fer(fer_public_path)
    splits = make_splits(data, "stratified")
    assert abs(len(splits.train) - 22_967) <= 10 and abs(len(splits.validation) - 5_742) <= 10
    assert len(splits.test) == 3_589
    assert not row_keys(splits.train) & row_keys(splits.validation)
    np.testing.assert_allclose(class_shares(splits.validation.labels), class_shares(splits.train.labels),
                               atol=0.01)
