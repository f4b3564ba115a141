"""Random augmentation of whole image batches with stateless TensorFlow ops.

Every random draw comes from a `[2]` stateless seed, so a batch's augmentation is a
pure function of (images, seed, config). Parameters are drawn per row of a *global*
batch and then sliced, so a process that augments only its rows of the global batch
gets exactly the rows that a single process would produce.

Geometry (rotation, translation, scale, shear) is one affine map per image, applied
in a single ImageProjectiveTransformV3 (bilinear). Uncovered pixels are filled with
the nearest edge pixel (FILL_MODE): a constant fill paints black wedges whose hard
edges no real face has (and that pull down the image's mean), and a reflection
mirrors facial parts (an eye, the chin) into the border; edge replication adds the
least structure. No experiment needs another fill, so it is not a config key.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import tensorflow as tf

from fer_jax.errors import UserError

FILL_MODES = ("nearest", "reflect", "constant")  # apply_transforms' choices
FILL_MODE = "nearest"  # the training augmentation's (the module docstring says why)

# Random erasing, as in the original study (torchvision RandomErasing's defaults).
ERASE_AREA = (0.02, 0.2)
ERASE_ASPECT = (0.3, 3.3)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Every augmentation of the original study; 0 / False (or scale (1, 1)) disables one.

    rotation_deg: angle ~ U(-r, r) degrees. hflip_prob: probability of a mirror.
    translate_frac: shift ~ U(-f, f) * image size, per axis. scale_range: zoom ~ U(lo, hi).
    shear_deg: x-shear angle ~ U(-s, s) degrees. brightness: additive delta ~ U(-b, b)
    on the [0, 1] scale. contrast: factor ~ U(1 - c, 1 + c) around the image's mean.
    erasing_prob: probability of erasing one rectangle (2-20 % of the area, aspect
    0.3-3.3).
    random_crop: > 0, the side of a window at a uniformly random position that each
    image is cut to first (the batch comes out random_crop x random_crop); 0 keeps 48x48.
    """

    rotation_deg: float = 15.0
    hflip_prob: float = 0.5
    translate_frac: float = 0.1
    scale_range: tuple[float, float] = (0.9, 1.1)
    shear_deg: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    erasing_prob: float = 0.0
    random_crop: int = 0

    def __post_init__(self):
        if (isinstance(self.random_crop, bool) or not isinstance(self.random_crop, int)
                or self.random_crop < 0):
            raise UserError(f"augment.random_crop must be a whole number >= 0, got {self.random_crop!r}")
        for name in ("rotation_deg", "hflip_prob", "translate_frac", "shear_deg",
                     "brightness", "contrast", "erasing_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"augment.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        try:
            low, high = (float(v) for v in self.scale_range)
        except (TypeError, ValueError):
            raise UserError(f"augment.scale_range must be two numbers (low, high), "
                            f"got {self.scale_range!r}") from None
        object.__setattr__(self, "scale_range", (low, high))
        checks = [
            ("rotation_deg", 0.0 <= self.rotation_deg <= 180.0, "in [0, 180]"),
            ("hflip_prob", 0.0 <= self.hflip_prob <= 1.0, "in [0, 1]"),
            ("translate_frac", 0.0 <= self.translate_frac < 1.0, "in [0, 1)"),
            ("scale_range", 0.0 < low <= high, "0 < low <= high"),
            ("shear_deg", 0.0 <= self.shear_deg < 90.0, "in [0, 90)"),
            ("brightness", 0.0 <= self.brightness <= 1.0, "in [0, 1]"),
            ("contrast", 0.0 <= self.contrast <= 1.0, "in [0, 1]"),
            ("erasing_prob", 0.0 <= self.erasing_prob <= 1.0, "in [0, 1]"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"augment.{name} must be {rule}, got {getattr(self, name)!r}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all."""
        return cls(rotation_deg=0.0, hflip_prob=0.0, translate_frac=0.0, scale_range=(1.0, 1.0),
                   shear_deg=0.0, brightness=0.0, contrast=0.0, erasing_prob=0.0)

    @classmethod
    def full(cls) -> "AugmentConfig":
        """Every augmentation on (the throughput benchmark's setting)."""
        return cls(rotation_deg=15.0, hflip_prob=0.5, translate_frac=0.1, scale_range=(0.9, 1.1),
                   shear_deg=10.0, brightness=0.2, contrast=0.2, erasing_prob=0.1)

    @classmethod
    def from_mapping(cls, m: Any) -> "AugmentConfig":
        """From a dict or ml_collections ConfigDict; missing keys keep the defaults."""
        if hasattr(m, "to_dict"):
            m = m.to_dict()
        if not isinstance(m, Mapping):
            raise UserError(f"augment config must be a mapping, got {type(m).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise UserError(f"unknown augment key(s) {', '.join(map(repr, unknown))}; "
                            f"known keys: {', '.join(sorted(known))}")
        return cls(**dict(m))

    @property
    def geometric(self) -> bool:
        return (self.rotation_deg > 0 or self.translate_frac > 0 or self.shear_deg > 0
                or self.scale_range != (1.0, 1.0))


def affine_transforms(angle_rad: tf.Tensor, scale: tf.Tensor, shear_rad: tf.Tensor,
                      shift: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """The (b, 8) output-to-input rows for ImageProjectiveTransformV3.

    The forward map is out = c + shift + R(angle) Sh(shear) (scale * (in - c)), c the
    image centre, positive angles counter-clockwise as seen; shift is (b, 2) in pixels
    (x, y). The op wants the inverse: in = c + A^-1 (out - c - shift).
    """
    height, width = size
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin, tan = tf.cos(angle_rad), tf.sin(angle_rad), tf.tan(shear_rad)
    # A = scale * R Sh with R = [[cos, sin], [-sin, cos]] (y points down), Sh = [[1, tan], [0, 1]].
    a00, a01 = scale * cos, scale * (cos * tan + sin)
    a10, a11 = -scale * sin, scale * (cos - sin * tan)
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    ox = cx + shift[:, 0]
    oy = cy + shift[:, 1]
    b0 = cx - (i00 * ox + i01 * oy)
    b1 = cy - (i10 * ox + i11 * oy)
    zeros = tf.zeros_like(a00)
    return tf.stack([i00, i01, b0, i10, i11, b1, zeros, zeros], axis=1)


def apply_transforms(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str = "nearest") -> tf.Tensor:
    """Warps a (b, h, w, c) float32 batch with (b, 8) output-to-input rows, bilinear."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3], fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR", fill_mode=fill_mode.upper())


def _uniform(seed: tf.Tensor, rows: int, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform([rows], seed=seed, minval=low, maxval=high, dtype=tf.float32)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, *,
                  erase_value: float = 0.0, global_batch_size: int | None = None,
                  row_offset: int = 0) -> tf.Tensor:
    """Augments a float32 (b, 48, 48, 1) batch in [0, 1]; the result stays in [0, 1].

    seed: int32/int64 [2]. Parameters are drawn for `global_batch_size` rows (default:
    this batch's size) and rows [row_offset, row_offset + b) are used, so a shard of a
    global batch is augmented exactly as the same rows of the whole batch would be.
    erase_value: what random erasing writes (the pipeline passes the data set's mean,
    which normalizes to 0 as torchvision's RandomErasing after Normalize does).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    if batch is None or height is None or width is None:
        raise ValueError(f"augment_batch needs a static batch and image size, got {images.shape}")
    rows = batch if global_batch_size is None else int(global_batch_size)
    if not 0 <= row_offset <= rows - batch:
        raise UserError(f"rows [{row_offset}, {row_offset + batch}) are not inside a global "
                        f"batch of {rows}")
    pick = slice(row_offset, row_offset + batch)
    # One independent stream per parameter, fixed positions so that turning one
    # augmentation off leaves the draws of the others unchanged.
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=13)

    def draw(i: int, low: float, high: float) -> tf.Tensor:
        return _uniform(seeds[i], rows, low, high)[pick]

    if cfg.random_crop:
        images = _random_crop(images, seed, cfg.random_crop, rows, pick)
        height, width = cfg.random_crop, cfg.random_crop

    if cfg.geometric:
        angle = draw(0, -1.0, 1.0) * math.radians(cfg.rotation_deg)
        scale = draw(1, *cfg.scale_range)
        shear = draw(2, -1.0, 1.0) * math.radians(cfg.shear_deg)
        shift = tf.stack([draw(3, -1.0, 1.0) * cfg.translate_frac * width,
                          draw(4, -1.0, 1.0) * cfg.translate_frac * height], axis=1)
        transforms = affine_transforms(angle, scale, shear, shift, (height, width))
        images = apply_transforms(images, transforms, FILL_MODE)
    if cfg.hflip_prob > 0:
        flip = draw(5, 0.0, 1.0) < cfg.hflip_prob
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if cfg.brightness > 0:
        images = images + draw(6, -cfg.brightness, cfg.brightness)[:, None, None, None]
    if cfg.contrast > 0:
        factor = draw(7, 1.0 - cfg.contrast, 1.0 + cfg.contrast)[:, None, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = mean + factor * (images - mean)
    if cfg.brightness > 0 or cfg.contrast > 0:
        images = tf.clip_by_value(images, 0.0, 1.0)
    if cfg.erasing_prob > 0:
        images = _random_erase(images, draw, cfg.erasing_prob, erase_value)
    return images


def _random_crop(images: tf.Tensor, seed: tf.Tensor, size: int, rows: int, pick: slice) -> tf.Tensor:
    """A SIZE x SIZE window of each image at a uniform position (its own seed stream, so the
    other augmentations draw what they draw without the crop)."""
    height, width = int(images.shape[1]), int(images.shape[2])
    if size > min(height, width):
        raise UserError(f"augment.random_crop {size} is larger than the {height}x{width} images")
    crop_seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 13), num=2)
    top = tf.random.stateless_uniform([rows], seed=crop_seeds[0], maxval=height - size + 1,
                                      dtype=tf.int32)[pick]
    left = tf.random.stateless_uniform([rows], seed=crop_seeds[1], maxval=width - size + 1,
                                       dtype=tf.int32)[pick]
    window = tf.range(size, dtype=tf.int32)[None, :]
    images = tf.gather(images, top[:, None] + window, axis=1, batch_dims=1)
    return tf.gather(images, left[:, None] + window, axis=2, batch_dims=1)


def _random_erase(images: tf.Tensor, draw, prob: float, value: float) -> tf.Tensor:
    """Erases one rectangle per chosen image: area 2-20 %, log-uniform aspect 0.3-3.3.

    torchvision retries sizes that do not fit; on a square image every size in these
    ranges fits (the longest side is at most sqrt(0.2 * 3.3) < 1 of the side), so one
    draw suffices and the clamp below never binds for 48x48 faces.
    """
    height, width = int(images.shape[1]), int(images.shape[2])
    area = draw(8, *ERASE_AREA) * float(height * width)
    aspect = tf.exp(draw(9, math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])))
    h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, float(height))
    w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, float(width))
    chosen = draw(10, 0.0, 1.0) < prob
    top = tf.floor(draw(11, 0.0, 1.0) * (float(height) - h + 1.0))
    left = tf.floor(draw(12, 0.0, 1.0) * (float(width) - w + 1.0))
    ys = tf.range(height, dtype=tf.float32)[None, :, None]
    xs = tf.range(width, dtype=tf.float32)[None, None, :]
    inside = ((ys >= top[:, None, None]) & (ys < (top + h)[:, None, None])
              & (xs >= left[:, None, None]) & (xs < (left + w)[:, None, None])
              & chosen[:, None, None])
    return tf.where(inside[..., None], tf.constant(value, images.dtype), images)
