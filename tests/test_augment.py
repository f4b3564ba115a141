"""Batch augmentation: exact geometry, each photometric op, determinism, sharding."""
from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from fer_jax.data.augment import (AugmentConfig, affine_transforms, apply_transforms,
                                  augment_batch)
from fer_jax.errors import UserError

SEED = tf.constant([3, 4], tf.int64)


def random_batch(n: int = 16, low: float = 0.0, high: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(n, 48, 48, 1)).astype(np.float32)


def only(**kwargs) -> AugmentConfig:
    """A config with everything off except KWARGS."""
    base = AugmentConfig.none()
    return AugmentConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **kwargs})


def warp(images: np.ndarray, angle_deg=0.0, scale=1.0, shear_deg=0.0, shift=(0.0, 0.0),
         fill_mode="nearest") -> np.ndarray:
    n = len(images)
    transforms = affine_transforms(
        tf.fill([n], math.radians(angle_deg)), tf.fill([n], float(scale)),
        tf.fill([n], math.radians(shear_deg)), tf.constant([shift] * n, tf.float32), (48, 48))
    return apply_transforms(tf.constant(images), transforms, fill_mode).numpy()


def test_full_augmentation_keeps_shape_dtype_and_range():
    images = random_batch(32)
    out = augment_batch(tf.constant(images), SEED, AugmentConfig.full(), erase_value=0.5).numpy()
    assert out.shape == (32, 48, 48, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.isfinite(out))
    assert not np.allclose(out, images)


def test_disabled_config_is_exact_identity():
    images = random_batch()
    out = augment_batch(tf.constant(images), SEED, AugmentConfig.none()).numpy()
    np.testing.assert_array_equal(out, images)


def test_flip_with_probability_one_mirrors_exactly():
    images = random_batch()
    out = augment_batch(tf.constant(images), SEED, only(hflip_prob=1.0)).numpy()
    np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_flip_with_probability_half_mirrors_some_rows_whole():
    images = random_batch(64)
    out = augment_batch(tf.constant(images), SEED, only(hflip_prob=0.5)).numpy()
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
    assert np.all(flipped ^ kept)
    assert 16 <= flipped.sum() <= 48


def test_zero_geometric_parameters_are_the_identity():
    images = random_batch()
    np.testing.assert_allclose(warp(images), images, atol=1e-5)


def test_rotation_by_90_degrees_is_counter_clockwise_rot90():
    images = random_batch()
    expected = np.rot90(images, k=1, axes=(1, 2))
    np.testing.assert_allclose(warp(images, angle_deg=90.0), expected, atol=1e-4)


def test_integer_translation_shifts_pixels():
    images = random_batch(4)
    out = warp(images, shift=(3.0, -2.0), fill_mode="constant")
    # out[y, x] = in[y + 2, x - 3]; uncovered pixels are the constant 0.
    np.testing.assert_allclose(out[:, :46, 3:], images[:, 2:, :45], atol=1e-5)
    assert np.all(out[:, :, :3] == 0) and np.all(out[:, 46:, :] == 0)


def test_nearest_fill_repeats_the_edge():
    images = random_batch(4)
    out = warp(images, shift=(3.0, 0.0), fill_mode="nearest")
    np.testing.assert_allclose(out[:, :, :3], np.repeat(images[:, :, :1], 3, axis=2), atol=1e-5)


def test_scaling_about_the_centre_magnifies():
    # Pixels 20..27 are bright; output x samples input 23.5 + (x - 23.5) / 2, so the
    # fully bright span is x in [17, 30] and bilinear edges reach [15, 32].
    images = np.zeros((1, 48, 48, 1), np.float32)
    images[:, 20:28, 20:28] = 1.0
    out = warp(images, scale=2.0)[0, ..., 0]
    full, touched = np.argwhere(out > 0.999), np.argwhere(out > 1e-6)
    assert full.min(axis=0).tolist() == [17, 17] and full.max(axis=0).tolist() == [30, 30]
    assert touched.min(axis=0).tolist() == [15, 15] and touched.max(axis=0).tolist() == [32, 32]
    assert out[16, 23] == pytest.approx(0.75, abs=1e-5)


def test_shear_moves_rows_sideways_in_proportion_to_height():
    images = np.zeros((1, 48, 48, 1), np.float32)
    images[:, :, 23:25] = 1.0  # a vertical bar at the centre
    out = warp(images, shear_deg=45.0, fill_mode="constant")[0, ..., 0]
    centres = [np.argwhere(out[y] > 0.99).mean() for y in (8, 23, 38)]
    # tan(45 deg) = 1: one pixel of horizontal displacement per row.
    assert centres[0] - centres[1] == pytest.approx(centres[1] - centres[2], abs=0.6)
    assert abs(centres[0] - centres[2]) == pytest.approx(30.0, abs=1.0)


def test_same_seed_same_batch_and_other_seed_differs():
    images = tf.constant(random_batch())
    cfg = AugmentConfig.full()
    a = augment_batch(images, SEED, cfg).numpy()
    b = augment_batch(images, tf.constant([3, 4], tf.int64), cfg).numpy()
    c = augment_batch(images, tf.constant([3, 5], tf.int64), cfg).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_rows_of_a_global_batch_augment_like_the_whole_batch():
    images = random_batch(64)
    cfg = AugmentConfig.full()
    whole = augment_batch(tf.constant(images), SEED, cfg).numpy()
    part = augment_batch(tf.constant(images[16:32]), SEED, cfg, global_batch_size=64,
                         row_offset=16).numpy()
    np.testing.assert_array_equal(part, whole[16:32])
    with pytest.raises(UserError):
        augment_batch(tf.constant(images[:16]), SEED, cfg, global_batch_size=64, row_offset=56)


def test_brightness_adds_one_bounded_delta_per_image():
    images = random_batch(32, 0.3, 0.7)
    out = augment_batch(tf.constant(images), SEED, only(brightness=0.2)).numpy()
    delta = (out - images).reshape(32, -1)
    np.testing.assert_allclose(delta, delta[:, :1].repeat(delta.shape[1], axis=1), atol=1e-6)
    assert np.all(np.abs(delta[:, 0]) <= 0.2 + 1e-6) and np.abs(delta[:, 0]).max() > 0.05


def test_contrast_scales_around_the_image_mean():
    images = random_batch(32, 0.3, 0.7)
    out = augment_batch(tf.constant(images), SEED, only(contrast=0.2)).numpy()
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3), keepdims=True), mean, atol=1e-5)
    centred_in, centred_out = images - mean, out - mean
    factor = (centred_in * centred_out).sum(axis=(1, 2, 3)) / (centred_in ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(centred_out, factor[:, None, None, None] * centred_in, atol=1e-5)
    assert np.all((factor >= 0.8 - 1e-5) & (factor <= 1.2 + 1e-5))
    assert np.abs(factor - 1).max() > 0.05


def test_erasing_writes_one_rectangle_of_the_right_size():
    images = random_batch(200, 0.5, 1.0)
    out = augment_batch(tf.constant(images), SEED, only(erasing_prob=1.0), erase_value=0.0).numpy()
    for erased in (out[..., 0] == 0.0):
        rows, cols = np.flatnonzero(erased.any(axis=1)), np.flatnonzero(erased.any(axis=0))
        h, w = rows.size, cols.size
        assert erased.sum() == h * w  # one solid axis-aligned rectangle
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + h))
        assert 0.015 <= h * w / 48 ** 2 <= 0.22
        assert 0.25 <= h / w <= 4.0


def test_erasing_probability_is_respected():
    images = random_batch(1000, 0.5, 1.0)
    out = augment_batch(tf.constant(images), SEED, only(erasing_prob=0.1), erase_value=0.0).numpy()
    fraction = (out == 0.0).any(axis=(1, 2, 3)).mean()
    assert 0.07 <= fraction <= 0.13


def test_config_from_mapping_and_config_dict():
    cfg = AugmentConfig.from_mapping({"rotation_deg": 10, "scale_range": [0.8, 1.2]})
    assert cfg.rotation_deg == 10.0 and cfg.scale_range == (0.8, 1.2)
    assert cfg.hflip_prob == AugmentConfig().hflip_prob
    config_dict = ml_collections.ConfigDict(dict(
        rotation_deg=0.0, hflip_prob=0.0, translate_frac=0.0, scale_range=(1.0, 1.0),
        shear_deg=0.0, brightness=0.0, contrast=0.0, erasing_prob=0.0))
    assert AugmentConfig.from_mapping(config_dict) == AugmentConfig.none()
    assert not AugmentConfig.none().geometric and AugmentConfig.full().geometric


@pytest.mark.parametrize("bad", [
    {"rotaton_deg": 5.0}, {"hflip_prob": 1.5}, {"scale_range": (1.2, 0.8)},
    {"scale_range": "big"}, {"translate_frac": -0.1}, {"fill_mode": "wrap-around"},
    {"erasing_prob": True}])
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        AugmentConfig.from_mapping(bad)
