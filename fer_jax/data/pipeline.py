"""Training and evaluation batches from in-memory arrays, with tf.data feeding the host.

The training stream of an epoch is a pure function of (seed, epoch): the order of the
examples comes from `np.random.default_rng([seed, epoch])` and the augmentation of
batch i from a stateless seed folded from (seed, epoch, i). Resuming at `start_batch=k`
therefore yields exactly batches k, k+1, ... of the unbroken epoch.

A global batch is defined independently of how many processes read it: process p of
P gets rows [p*B/P, (p+1)*B/P) of every global batch.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf

from fer_jax.runtime import usable_cores
from fer_jax.data.augment import AugmentConfig, augment_batch
from fer_jax.data.normalization import check_norm, standardize, to_unit_scale
from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES
from fer_jax.errors import UserError


def _hide_gpus_from_tensorflow() -> None:
    """TensorFlow only feeds data: the accelerators' memory belongs to JAX."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        # The runtime is already initialized (someone used TF first); nothing to undo.
        pass


_hide_gpus_from_tensorflow()

# Salt that separates the augmentation key from the order generator's seed words.
_AUGMENT_STREAM = 1

# Batches the training stream keeps ready ahead of the step. Fixed, with tf.data's
# autotuning off (_dataset_options): a few suffice where one batch takes the pipeline
# about a millisecond and the step tens of them.
DEFAULT_PREFETCH_BATCHES = 4


# ----------------------------------------------------------------------------- checks

def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 \
            or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise UserError(f"images must be a uint8 array (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                        f"got {dtype} {shape}")


def _check_labels(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise UserError(f"labels must be in [0, {num_classes}); {bad.size} are not "
                        f"(first: index {bad[0]}, value {labels[bad[0]]})")
    return labels


def _check_pair(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _check_images(images)
    labels = _check_labels(labels)
    if len(images) != len(labels):
        raise UserError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise UserError("no examples to make batches of")
    return labels


def check_teacher_probabilities(teacher: np.ndarray, count: int) -> np.ndarray:
    """TEACHER as float32 (COUNT, classes) rows of probabilities, or UserError."""
    teacher = np.asarray(teacher)
    if teacher.shape != (count, NUM_CLASSES) or not np.issubdtype(teacher.dtype, np.floating):
        raise UserError(f"teacher probabilities must be a float array ({count}, {NUM_CLASSES}), "
                        f"got {teacher.dtype} {teacher.shape}")
    teacher = teacher.astype(np.float32)
    sums = teacher.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(sums) | (teacher.min(axis=1) < 0) | (np.abs(sums - 1) > 1e-3))
    if bad.size:
        raise UserError(f"teacher probabilities: {bad.size} rows are not probabilities "
                        f"(first: row {bad[0]}, {teacher[bad[0]].tolist()})")
    return teacher


def _check_seed(seed: int, epoch: int) -> None:
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise UserError(f"{name} must be a non-negative integer, got {value!r}")


def _shard_rows(global_batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Rows [lo, hi) of each global batch that this process reads."""
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) \
            or global_batch_size < 1:
        raise UserError(f"global batch size must be a positive integer, got {global_batch_size!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} is not in [0, {process_count})")
    if global_batch_size % process_count:
        raise UserError(f"global batch size {global_batch_size} is not divisible by the "
                        f"{process_count} processes")
    per_process = global_batch_size // process_count
    return process_index * per_process, (process_index + 1) * per_process


# ------------------------------------------------------------------- statistics, weights

def normalization_stats(images: np.ndarray) -> dict:
    """Mean and standard deviation of all pixels, on the [0, 1] scale.

    Computed exactly from the 256-bin histogram: no float copy of the data set.
    """
    _check_images(images)
    if len(images) == 0:
        raise UserError("normalization statistics need at least one image")
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    var = float((counts * (values - mean) ** 2).sum() / total)
    std = float(np.sqrt(var))
    if std == 0.0:
        raise UserError("all training pixels have the same value: cannot normalize")
    return {"mean": mean, "std": std}


def class_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Inverse class frequency scaled to mean 1 over classes, float32 (num_classes,).

    w_c = (1 / n_c) / ((1 / K) * sum_k 1 / n_k), with n_c the count of class c and
    K = num_classes. A class with no examples has no defined weight: UserError.
    """
    labels = _check_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise UserError(f"class weights need every class present; classes "
                        f"{missing.tolist()} have no examples")
    inverse = 1.0 / counts
    return (inverse / inverse.mean()).astype(np.float32)


def sampling_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-example weight 1 / n_{label}: every class gets the same total weight (float64)."""
    labels = _check_labels(labels, num_classes)
    if labels.size == 0:
        raise UserError("sampling weights need at least one label")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return 1.0 / counts[labels]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full training batches per epoch (the remainder is dropped)."""
    _shard_rows(global_batch_size, 0, 1)
    if num_examples < 0:
        raise UserError(f"number of examples must be >= 0, got {num_examples}")
    return num_examples // global_batch_size


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Evaluation batches covering every example once (the last one padded)."""
    _shard_rows(global_batch_size, 0, 1)
    if num_examples < 0:
        raise UserError(f"number of examples must be >= 0, got {num_examples}")
    return -(-num_examples // global_batch_size)


def epoch_order(labels: np.ndarray, *, seed: int, epoch: int, balanced: bool) -> np.ndarray:
    """The example indices of one epoch (length N), a pure function of (seed, epoch).

    balanced=False: a permutation. balanced=True: N draws with replacement, each
    example with probability proportional to 1 / n_{label} (PyTorch's
    WeightedRandomSampler with num_samples=N), so classes come out near uniform.
    """
    _check_seed(seed, epoch)
    labels = _check_labels(labels)
    rng = np.random.default_rng([int(seed), int(epoch)])
    n = len(labels)
    if not balanced:
        return rng.permutation(n)
    weights = sampling_weights(labels)
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


# -------------------------------------------------------------------------- iterators

def _augment_key(seed: int, epoch: int) -> np.ndarray:
    """A well-mixed stateless key for (seed, epoch); batches fold their index into it."""
    words = np.random.SeedSequence([int(seed), int(epoch), _AUGMENT_STREAM]).generate_state(2, np.uint32)
    return words.astype(np.int64)


def _dataset_options(threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Autotuning off: dropping an iterator waits for autotune's optimization thread, which
    # on the 2-core machine, with the training step on both cores, took 12-15 s in most
    # epochs (0.3 s without it), and the pipeline is as fast without it (BUILD_NOTES,
    # "Epoch boundaries").
    options.autotune.enabled = False
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        options.threading.private_threadpool_size = int(threads)
    return options


def train_batches(images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> Iterator[dict]:
    """train_dataset(images, labels, **kwargs) as an iterator of numpy batches."""
    return train_dataset(images, labels, **kwargs).as_numpy_iterator()


def train_dataset(images: np.ndarray, labels: np.ndarray, *, global_batch_size: int, seed: int,
                  epoch: int, augment: AugmentConfig, balanced: bool, norm: Mapping[str, float],
                  start_batch: int = 0, process_index: int = 0, process_count: int = 1,
                  num_parallel_calls: int | None = None, threads: int | None = None,
                  prefetch: int | None = None, epochs: int = 1,
                  teacher: np.ndarray | None = None) -> tf.data.Dataset:
    """This process's share of batches start_batch, start_batch+1, ... of epoch EPOCH, and
    then of every batch of the EPOCHS - 1 epochs after it, in order: a training run reads
    one stream (dropping a tf.data iterator joins its threads, so one per run, not per epoch).

    Elements are {"image": float32 (b, 48, 48, 1) normalized, "label": int32 (b,)}, with
    b = global_batch_size / process_count. Arguments are checked before returning.
    num_parallel_calls defaults to the usable cores and prefetch to
    DEFAULT_PREFETCH_BATCHES (tf.data's autotuning is off); threads bounds tf.data's
    private thread pool (default: tf.data's shared pool). TEACHER: (N, classes) class
    probabilities, one row per example (distillation's targets): each batch then also has
    "teacher", float32 (b, classes), the rows of its examples.
    """
    labels = _check_pair(images, labels)
    if teacher is not None:
        teacher = check_teacher_probabilities(teacher, len(images))
    lo, hi = _shard_rows(global_batch_size, process_index, process_count)
    _check_seed(seed, epoch)
    if not isinstance(augment, AugmentConfig):
        raise UserError(f"augment must be an AugmentConfig, got {type(augment).__name__}")
    mean, std = check_norm(norm)
    steps = steps_per_epoch(len(images), global_batch_size)
    if steps == 0:
        raise UserError(f"global batch size {global_batch_size} exceeds the {len(images)} "
                        f"training examples: no full batch")
    if isinstance(start_batch, bool) or not 0 <= start_batch <= steps:
        raise UserError(f"start_batch must be in [0, {steps}], got {start_batch!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise UserError(f"epochs must be a whole number >= 1, got {epochs!r}")

    which = range(epoch, epoch + int(epochs))
    rows = np.concatenate([epoch_order(labels, seed=seed, epoch=e, balanced=balanced)
                           [: steps * global_batch_size].reshape(steps, global_batch_size)
                           for e in which])[start_batch:, lo:hi]
    flat_index = np.arange(start_batch, steps * len(which), dtype=np.int64)
    # Each batch's augmentation key: its epoch's key with its index in the epoch folded in.
    epoch_keys = tf.constant(np.stack([_augment_key(seed, e) for e in which]))
    all_images = tf.constant(images)
    all_labels = tf.constant(labels.astype(np.int32))
    all_teacher = None if teacher is None else tf.constant(teacher)

    def make_batch(epoch_offset: tf.Tensor, index: tf.Tensor, take: tf.Tensor) -> dict:
        key = tf.random.experimental.stateless_fold_in(tf.gather(epoch_keys, epoch_offset), index)
        x = to_unit_scale(tf.cast(tf.gather(all_images, take), tf.float32)[..., None])
        x = augment_batch(x, key, augment, erase_value=mean, global_batch_size=global_batch_size,
                          row_offset=lo)
        batch = {"image": standardize(x, mean, std), "label": tf.gather(all_labels, take)}
        if teacher is not None:
            batch["teacher"] = tf.gather(all_teacher, take)
        return batch

    parallel = usable_cores() if num_parallel_calls is None else num_parallel_calls
    dataset = (tf.data.Dataset.from_tensor_slices((flat_index // steps, flat_index % steps, rows))
               .map(make_batch, num_parallel_calls=parallel, deterministic=True)
               .prefetch(DEFAULT_PREFETCH_BATCHES if prefetch is None else prefetch)
               .with_options(_dataset_options(threads)))
    return dataset


def eval_batches(images: np.ndarray, labels: np.ndarray, *, global_batch_size: int,
                 norm: Mapping[str, float], process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
    """Every example exactly once, in order; the last global batch is zero-padded.

    Yields {"image": float32 (b, 48, 48, 1), "label": int32 (b,), "mask": bool (b,)};
    padded rows have image 0, label 0 and mask False.
    """
    labels = _check_pair(images, labels)
    lo, hi = _shard_rows(global_batch_size, process_index, process_count)
    mean, std = check_norm(norm)
    count = num_eval_batches(len(images), global_batch_size)

    def batches() -> Iterator[dict]:
        for step in range(count):
            start = step * global_batch_size
            first, last = min(start + lo, len(images)), min(start + hi, len(images))
            real = last - first
            image = np.zeros((hi - lo, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
            label = np.zeros((hi - lo,), np.int32)
            mask = np.zeros((hi - lo,), bool)
            image[:real, ..., 0] = standardize(to_unit_scale(images[first:last].astype(np.float32)),
                                               mean, std)
            label[:real] = labels[first:last]
            mask[:real] = True
            yield {"image": image, "label": label, "mask": mask}

    return batches()


# ------------------------------------------------------------------------- throughput

def measure_throughput(*, num_images: int = 28_709, global_batch_size: int = 256,
                       augment: AugmentConfig | None = None, balanced: bool = True,
                       seconds: float = 5.0, seed: int = 0, **pipeline_kwargs: Any) -> dict:
    """Training-pipeline images/s on random 48x48 images (full augmentation by default).

    Runs whole epochs (at least one) until `seconds` have passed. Returns images/s over everything
    ("images_per_s") and over the steady state after the first batch
    ("steady_images_per_s": excludes tracing and start-up), plus counts.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_images, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=num_images).astype(np.int32)
    augment = AugmentConfig.full() if augment is None else augment
    norm = normalization_stats(images)
    start = time.perf_counter()
    first_batch_at = None
    total = steady = 0
    epoch = 0
    while epoch == 0 or time.perf_counter() - start < seconds:
        for batch in train_batches(images, labels, global_batch_size=global_batch_size, seed=seed,
                                   epoch=epoch, augment=augment, balanced=balanced, norm=norm,
                                   **pipeline_kwargs):
            size = len(batch["label"])
            total += size
            if first_batch_at is None:
                first_batch_at = time.perf_counter()
            else:
                steady += size
        epoch += 1
    end = time.perf_counter()
    return {"images_per_s": total / (end - start),
            "steady_images_per_s": steady / max(end - first_batch_at, 1e-9),
            "images": total, "epochs": epoch, "seconds": end - start,
            "global_batch_size": global_batch_size}
