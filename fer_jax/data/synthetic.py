"""Built-in synthetic stand-in for FER2013: procedurally drawn faces that carry the 7 expressions.

Each class is a distribution over facial geometry (mouth curve and opening, brow
angle and height, eye opening, nose wrinkle, ...), shrunk towards neutral by a
random intensity and jittered, so classes overlap. Identity, pose, lighting,
noise and occluders vary independently of the class. Rendering evaluates
implicit shapes on the 48x48 grid for a whole batch at once.

It exists to try the system without the real data: a model trained on it says
nothing about real faces, hence SYNTHETIC_NOTICE.
"""
from __future__ import annotations

import dataclasses
import hashlib
import numbers
from typing import Sequence

import numpy as np

from fer_jax.errors import UserError
from fer_jax.data.types import (CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, PRIVATE_TEST, PUBLIC_TEST,
                                TRAINING, FerData)

# Bump whenever the drawn images change for a given seed: it is part of the fingerprint.
GENERATOR_VERSION = "fer_jax.synthetic/1"

SYNTHETIC_NOTICE = ("SYNTHETIC DATA: trained on procedurally drawn faces, for trying the system "
                    "only; not a result on real faces.")

# FER2013 Training split class counts, in CLASS_NAMES order.
FER_TRAINING_COUNTS = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965])
CLASS_PROPORTIONS = FER_TRAINING_COUNTS / FER_TRAINING_COUNTS.sum()

SPLIT_USAGES = (TRAINING, PUBLIC_TEST, PRIVATE_TEST)
_NEUTRAL = CLASS_NAMES.index("neutral")

# Expression geometry in face units (the face spans about [-0.8, 0.8] x [-1, 1]; one unit is
# 24 pixels at scale 1). Per parameter: the class means in CLASS_NAMES order
# (angry, disgust, fear, happy, sad, surprise, neutral), then the per-sample jitter.
EXPRESSION_TABLE: dict[str, tuple[tuple[float, ...], float]] = {
    "eye_open":       ((0.030, 0.028, 0.105, 0.026, 0.042, 0.115, 0.052), 0.010),
    "brow_gap":       ((0.070, 0.110, 0.190, 0.150, 0.150, 0.240, 0.150), 0.015),
    "brow_tilt":      ((0.110, 0.030, -0.060, 0.000, -0.080, 0.000, 0.000), 0.015),
    "brow_arch":      ((0.000, 0.010, 0.000, 0.030, 0.010, 0.070, 0.025), 0.012),
    "mouth_curve":    ((-0.020, -0.050, -0.030, 0.120, -0.090, 0.000, 0.000), 0.015),
    "mouth_width":    ((0.160, 0.200, 0.280, 0.270, 0.190, 0.130, 0.210), 0.020),
    "mouth_upper":    ((0.000, 0.040, 0.020, 0.010, 0.000, 0.100, 0.000), 0.012),
    "mouth_lower":    ((0.010, 0.010, 0.060, 0.080, 0.000, 0.140, 0.000), 0.015),
    "teeth":          ((0.300, 0.500, 0.600, 0.800, 0.000, 0.000, 0.000), 0.150),
    "lip_raise":      ((0.000, 0.060, 0.000, 0.000, 0.000, 0.000, 0.000), 0.010),
    "nose_wrinkle":   ((0.450, 1.000, 0.100, 0.100, 0.000, 0.000, 0.000), 0.150),
    "smile_folds":    ((0.300, 0.700, 0.300, 0.800, 0.200, 0.100, 0.200), 0.150),
    "forehead_lines": ((0.000, 0.100, 0.500, 0.100, 0.300, 0.700, 0.000), 0.150),
}
# Lower bounds that keep shapes drawable after jitter (upper bounds 1 for strengths).
_EXPRESSION_FLOOR = {"eye_open": 0.012, "mouth_width": 0.08, "mouth_upper": 0.0,
                     "mouth_lower": 0.0, "lip_raise": 0.0}
_STRENGTHS = ("teeth", "nose_wrinkle", "smile_folds", "forehead_lines")
# How far a non-neutral face goes from neutral towards its class mean.
INTENSITY_RANGE = (0.75, 1.3)

OCCLUDER_PROBABILITIES = {"bar": 0.15, "hand": 0.12, "glasses": 0.15}

_RENDER_CHUNK = 64  # images per vectorized pass: keeps the working arrays in cache


def class_counts_for(num_examples: int) -> np.ndarray:
    """Per-class counts in FER2013 Training proportions (largest remainder), every class present
    once there is room for all."""
    exact = CLASS_PROPORTIONS * num_examples
    counts = _largest_remainder(exact, num_examples)
    if num_examples >= NUM_CLASSES:
        for label in np.flatnonzero(counts == 0):
            counts[np.argmax(counts)] -= 1
            counts[label] = 1
    return counts


def _largest_remainder(exact: np.ndarray, total: int) -> np.ndarray:
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def sample_labels_and_usage(num_examples: int, usage_fractions: Sequence[float],
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels in FER proportions, each class split over SPLIT_USAGES in usage_fractions;
    rows ordered Training, PublicTest, PrivateTest (like Kaggle's file), shuffled within."""
    fractions = np.asarray(usage_fractions, dtype=np.float64)
    blocks: list[list[np.ndarray]] = [[] for _ in SPLIT_USAGES]
    for label, count in enumerate(class_counts_for(num_examples)):
        per_usage = _largest_remainder(fractions * count, int(count))
        for block, n in zip(blocks, per_usage):
            block.append(np.full(n, label, dtype=np.int32))
    labels, usage = [], []
    for name, block in zip(SPLIT_USAGES, blocks):
        block_labels = rng.permutation(np.concatenate(block))
        labels.append(block_labels)
        usage.append(np.full(len(block_labels), name))
    return np.concatenate(labels).astype(np.int32), np.concatenate(usage)


def sample_face_params(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Everything that decides one face, one float32 array of len(labels) per name."""
    n = len(labels)
    params: dict[str, np.ndarray] = {}
    intensity = rng.uniform(*INTENSITY_RANGE, size=n)
    for name, (means, jitter) in EXPRESSION_TABLE.items():
        means = np.asarray(means)
        neutral = means[_NEUTRAL]
        value = neutral + intensity * (means[labels] - neutral) + jitter * rng.standard_normal(n)
        if name in _STRENGTHS:
            value = np.clip(value, 0.0, 1.0)
        elif name in _EXPRESSION_FLOOR:
            value = np.maximum(value, _EXPRESSION_FLOOR[name])
        params[name] = value
    params["lip_side"] = rng.choice([-1.0, 1.0], size=n)

    # Identity: head shape, feature layout and tones, independent of the class.
    params["head_rx"] = rng.uniform(0.70, 0.82, n)
    params["head_ry"] = rng.uniform(0.90, 1.02, n)
    params["head_cy"] = rng.uniform(0.00, 0.10, n)
    params["eye_x"] = rng.uniform(0.27, 0.34, n)
    params["eye_y"] = rng.uniform(-0.28, -0.16, n)
    params["eye_w"] = rng.uniform(0.10, 0.13, n)
    params["nose_y"] = params["eye_y"] + rng.uniform(0.30, 0.38, n)
    params["mouth_y"] = params["eye_y"] + rng.uniform(0.58, 0.70, n)
    params["brow_thick"] = rng.uniform(0.030, 0.045, n)
    params["brow_dark"] = rng.uniform(0.30, 0.65, n)
    params["skin"] = rng.uniform(110, 200, n)
    params["background"] = rng.uniform(0, 255, n)
    params["hair"] = np.where(rng.random(n) < 0.8, rng.uniform(10, 80, n), rng.uniform(120, 220, n))
    params["hairline"] = rng.uniform(-0.90, -0.50, n)

    # Pose, lighting and the camera.
    params["angle"] = np.clip(rng.normal(0.0, np.deg2rad(9.0), n), -np.deg2rad(20), np.deg2rad(20))
    params["shift_x"] = rng.uniform(-0.12, 0.12, n)
    params["shift_y"] = rng.uniform(-0.10, 0.10, n)
    params["scale"] = rng.uniform(0.85, 1.15, n)
    params["brightness"] = rng.uniform(-30, 30, n)
    params["contrast"] = rng.uniform(0.6, 1.3, n)
    gradient = rng.uniform(0, 60, n)
    direction = rng.uniform(0, 2 * np.pi, n)
    params["gradient_x"] = gradient * np.cos(direction)
    params["gradient_y"] = gradient * np.sin(direction)
    params["blur_px"] = rng.uniform(0.7, 1.5, n)
    params["noise"] = rng.uniform(1.0, 6.0, n)

    # Occluders: each drawn or not per face. Geometry is drawn for every face so that the
    # random stream, hence every other face, does not depend on who wears one.
    for name, probability in OCCLUDER_PROBABILITIES.items():
        params[f"{name}_on"] = (rng.random(n) < probability).astype(np.float64)
    params["bar_x"] = rng.uniform(-0.8, 0.8, n)
    params["bar_y"] = rng.uniform(-0.8, 0.8, n)
    params["bar_angle"] = rng.uniform(0, np.pi, n)
    params["bar_half"] = rng.uniform(0.05, 0.12, n)
    params["bar_level"] = rng.uniform(0, 255, n)
    params["hand_x"] = rng.uniform(-0.6, 0.6, n)
    params["hand_y"] = rng.uniform(0.0, 0.9, n)
    params["hand_rx"] = rng.uniform(0.20, 0.40, n)
    params["hand_ry"] = rng.uniform(0.15, 0.30, n)
    params["hand_level"] = params["skin"] + rng.normal(0, 15, n)
    params["sunglasses"] = (rng.random(n) < 0.3).astype(np.float64)
    return {name: value.astype(np.float32) for name, value in params.items()}


def render_faces(params: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 48, 48) faces drawn from sample_face_params' output; rng draws the pixel noise."""
    n = len(params["skin"])
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, n, _RENDER_CHUNK):
        chunk = {name: value[start:start + _RENDER_CHUNK, None, None]
                 for name, value in params.items()}
        images[start:start + _RENDER_CHUNK] = _render_chunk(chunk, rng)
    return images


@dataclasses.dataclass(frozen=True)
class _Frame:
    """A batch's pixel grid in image (x, y) and face (u, v; |u| = au) coordinates, with the
    per-image parameters as (B, 1, 1) columns."""

    p: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    au: np.ndarray
    inv_edge: np.ndarray

    @classmethod
    def of(cls, p: dict[str, np.ndarray]) -> "_Frame":
        grid = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / (IMAGE_SIZE / 2) - 1.0
        x, y = grid[None, None, :], grid[None, :, None]
        cos, sin, scale = np.cos(p["angle"]), np.sin(p["angle"]), p["scale"]
        dx, dy = x - p["shift_x"], y - p["shift_y"]
        u = (cos / scale) * dx + (sin / scale) * dy
        v = (cos / scale) * dy - (sin / scale) * dx
        # Edges are about blur_px pixels wide whatever the face's scale.
        inv_edge = (IMAGE_SIZE / 2) * scale / p["blur_px"]
        return cls(p, x, y, u, v, np.abs(u), inv_edge)

    def take(self, index: np.ndarray) -> "_Frame":
        return _Frame({k: a[index] for k, a in self.p.items()}, self.x, self.y, self.u[index],
                      self.v[index], self.au[index], self.inv_edge[index])

    def cover(self, distance: np.ndarray) -> np.ndarray:
        """Soft inside-ness of a signed distance (negative inside); overwrites distance."""
        distance *= -self.inv_edge
        distance += 0.5
        return np.clip(distance, 0.0, 1.0, out=distance)


def _paint(image: np.ndarray, coverage: np.ndarray, level) -> None:
    """Blends level over image where coverage is 1 (in place; coverage is overwritten)."""
    coverage *= level - image
    image += coverage


def _darken(image: np.ndarray, amount: np.ndarray) -> None:
    """Multiplies image by 1 - amount (in place; amount is overwritten)."""
    amount *= image
    image -= amount


def _ellipse_distance(du: np.ndarray, dv: np.ndarray, rx, ry) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse, exact along the minor axis."""
    r = np.square(du / rx)
    r += np.square(dv / ry)
    np.sqrt(r, out=r)
    r -= 1.0
    r *= np.minimum(rx, ry)
    return r


def _render_chunk(p: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    f = _Frame.of(p)
    image = np.broadcast_to(p["background"], f.u.shape).astype(np.float32)
    _draw_head(f, image)
    _draw_upper_face(f, image)
    _draw_nose_and_mouth(f, image)
    _draw_occluders(f, image)
    # Camera: contrast, brightness, a lighting gradient, sensor noise.
    image -= 128.0
    image *= p["contrast"]
    image += 128.0 + p["brightness"] + p["gradient_x"] * f.x + p["gradient_y"] * f.y
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= p["noise"]
    image += noise
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def _draw_head(f: _Frame, image: np.ndarray) -> None:
    """Head shaded darker towards its rim, then hair above a hairline that drops at the sides."""
    p = f.p
    radius = np.square(f.u / p["head_rx"])
    radius += np.square((f.v - p["head_cy"]) / p["head_ry"])
    np.sqrt(radius, out=radius)
    rim = np.minimum(radius, 1.0)
    np.square(rim, out=rim)
    rim *= -0.3
    rim += 1.0
    rim *= p["skin"]
    _paint(image, f.cover((radius - 1.0) * p["head_rx"]), rim)
    hair = np.minimum(f.cover((radius - 1.07) * p["head_rx"]),
                      f.cover(f.v - (p["hairline"] + 0.6 * np.square(f.u))))
    _paint(image, hair, p["hair"])


def _draw_upper_face(f: _Frame, image: np.ndarray) -> None:
    """Eye sockets, eyes and irises, brows, forehead lines and the nose wrinkle."""
    p = f.p
    skin, ex, ey, ew, eh = p["skin"], p["eye_x"], p["eye_y"], p["eye_w"], p["eye_open"]
    ex_d, ey_d = f.au - ex, f.v - ey
    socket = _ellipse_distance(ex_d, ey_d, ew * 1.5, 0.09)
    np.clip(socket, -0.09, 0.0, out=socket)
    _darken(image, socket * (-0.18 / 0.09))
    eye = f.cover(_ellipse_distance(ex_d, ey_d, ew, eh))
    eye_r = np.sqrt(np.square(ex_d) + np.square(ey_d))
    iris = np.minimum(eye, f.cover(eye_r - ew * 0.55))
    _paint(image, eye, skin * 0.55 + 40.0)
    _paint(image, iris, skin * 0.15)

    # Brows: inner end at s = -1; positive tilt lowers it (a frown), arch lifts the middle.
    half_len = ew * 1.25
    s = (f.au - ex - 0.01) / half_len
    brow_y = ey - p["brow_gap"] - p["brow_tilt"] * s - p["brow_arch"] * (1.0 - np.square(s))
    brow_d = np.maximum(np.abs(f.v - brow_y) - p["brow_thick"], (np.abs(s) - 1.0) * half_len)
    _paint(image, f.cover(brow_d), skin * p["brow_dark"])

    # Forehead lines above the brows, nose wrinkle between the eyes: stripes in a box.
    brow_top = ey - p["brow_gap"]
    box = f.cover(np.maximum(f.au - 0.30, np.abs(f.v - (brow_top - 0.18)) - 0.10))
    box *= 0.3 * p["forehead_lines"]
    box *= 0.5 + 0.5 * np.cos(f.v * (2 * np.pi / 0.075))
    _darken(image, box)
    box = f.cover(np.maximum(f.au - 0.08, np.abs(ey_d - 0.03) - 0.07))
    box *= 0.4 * p["nose_wrinkle"]
    box *= 0.5 + 0.5 * np.cos(f.v * (2 * np.pi / 0.05))
    _darken(image, box)


def _draw_nose_and_mouth(f: _Frame, image: np.ndarray) -> None:
    """Nose shadows and nostrils, smile folds, lips, the open mouth and its teeth."""
    p = f.p
    skin, ey, ny = p["skin"], p["eye_y"], p["nose_y"]
    side_d = np.maximum(np.abs(f.au - 0.07) - 0.015, np.abs(f.v - (ey + ny) * 0.5) - (ny - ey) * 0.4)
    _darken(image, 0.15 * f.cover(side_d))
    nostril = f.cover(_ellipse_distance(f.au - 0.07, f.v - ny, 0.035, 0.022))
    _paint(image, nostril, skin * 0.45)

    # Mouth between an upper and a lower lip curve; s runs -1..1 across it.
    mw, my, curve = p["mouth_width"], p["mouth_y"], p["mouth_curve"]
    s = f.u / mw
    bulge = np.minimum(np.square(s), 1.0)
    centre = my - curve * bulge
    bulge -= 1.0
    bulge *= -1.0  # 1 - s^2, zero beyond the corners
    lift = p["lip_raise"] * 4.0 * np.clip(p["lip_side"] * s, 0.0, 1.0)
    upper = centre - (p["mouth_upper"] + lift) * bulge
    lower = centre + p["mouth_lower"] * bulge
    inner_d = np.maximum(np.maximum(upper - f.v, f.v - lower) - 0.028, (np.abs(s) - 1.0) * mw)

    # Smile folds from beside the nose to the mouth corners (a capsule, both sides at once).
    ax, ay = 0.13, ny
    bax, bay = mw + 0.04 - ax, my - curve + 0.02 - ay
    pax, pay = f.au - ax, f.v - ay
    h = pax * bax
    h += pay * bay
    h /= bax * bax + bay * bay
    np.clip(h, 0.0, 1.0, out=h)
    fold_d = np.square(pax - bax * h)
    fold_d += np.square(pay - bay * h)
    np.sqrt(fold_d, out=fold_d)
    fold_d -= 0.012
    fold = f.cover(fold_d)
    fold *= 0.35 * p["smile_folds"]
    _darken(image, fold)

    _darken(image, 0.2 * f.cover(inner_d - 0.045))  # lips
    mouth = f.cover(inner_d)
    teeth = np.minimum(mouth, f.cover(f.v - (upper + 0.4 * (lower - upper))))
    teeth *= p["teeth"]
    _paint(image, mouth, skin * 0.22)
    _paint(image, teeth, skin * 0.5 + 100.0)


def _draw_occluders(f: _Frame, image: np.ndarray) -> None:
    """Glasses (sometimes dark lenses), a hand-like blob, a bar across the image; each drawn
    only on the faces that have it."""
    for name, draw in (("glasses", _draw_glasses), ("hand", _draw_hand), ("bar", _draw_bar)):
        index = np.flatnonzero(f.p[f"{name}_on"][:, 0, 0])
        if len(index):
            part = image[index]
            draw(f.take(index), part)
            image[index] = part


def _draw_glasses(f: _Frame, image: np.ndarray) -> None:
    p = f.p
    ex_d, ey_d, lens_r = f.au - p["eye_x"], f.v - p["eye_y"], p["eye_w"] * 1.5
    ring = np.sqrt(np.square(ex_d) + np.square(ey_d)) - lens_r
    bridge = np.maximum(f.au - (p["eye_x"] - lens_r), np.abs(ey_d + 0.03) - 0.015)
    frame_d = np.minimum(np.abs(ring) - 0.018, bridge)
    lens_d = np.minimum(frame_d, ring + 10.0 * (1.0 - p["sunglasses"]))  # far unless dark
    _paint(image, f.cover(lens_d), 25.0)


def _draw_hand(f: _Frame, image: np.ndarray) -> None:
    p = f.p
    hand_d = _ellipse_distance(f.u - p["hand_x"], f.v - p["hand_y"], p["hand_rx"], p["hand_ry"])
    _paint(image, f.cover(hand_d), p["hand_level"])


def _draw_bar(f: _Frame, image: np.ndarray) -> None:
    p = f.p
    bar_d = np.abs((f.x - p["bar_x"]) * np.sin(p["bar_angle"])
                   - (f.y - p["bar_y"]) * np.cos(p["bar_angle"])) - p["bar_half"]
    _paint(image, f.cover(bar_d / p["scale"]), p["bar_level"])


def make_synthetic(num_examples: int = 12000, *, seed: int = 0,
                   usage_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> FerData:
    """num_examples synthetic faces, split Training/PublicTest/PrivateTest in usage_fractions
    (stratified by class); the same arguments always give the same bytes."""
    num_examples, seed, fractions = _checked_args(num_examples, seed, usage_fractions)
    order_seq, params_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
    labels, usage = sample_labels_and_usage(num_examples, fractions,
                                            np.random.default_rng(order_seq))
    params = sample_face_params(labels, np.random.default_rng(params_seq))
    images = render_faces(params, np.random.default_rng(noise_seq))
    identity = f"{GENERATOR_VERSION}|n={num_examples}|seed={seed}|usage_fractions={fractions!r}"
    return FerData(images=images, labels=labels, usage=usage,
                   source=f"synthetic:seed={seed},n={num_examples}",
                   fingerprint=hashlib.sha256(identity.encode()).hexdigest())


def _checked_args(num_examples, seed, usage_fractions) -> tuple[int, int, tuple[float, ...]]:
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral) \
            or num_examples < 1:
        raise UserError(f"synthetic data: num_examples must be a positive integer, got {num_examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"synthetic data: seed must be a non-negative integer, got {seed!r}")
    try:
        fractions = tuple(float(f) for f in usage_fractions)
    except (TypeError, ValueError):
        raise UserError(f"synthetic data: usage_fractions must be 3 numbers, got {usage_fractions!r}") from None
    if len(fractions) != len(SPLIT_USAGES) or any(not np.isfinite(f) or f < 0 for f in fractions) \
            or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError("synthetic data: usage_fractions must be 3 non-negative numbers "
                        f"(Training, PublicTest, PrivateTest) summing to 1, got {usage_fractions!r}")
    return int(num_examples), int(seed), fractions
