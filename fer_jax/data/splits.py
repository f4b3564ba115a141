"""Train / validation / test splits of a FerData.

Schemes:
- "official": Training / PublicTest / PrivateTest (when present). A source without
  PublicTest rows (train.csv, or a folder whose test file names do not say) falls
  back to a stratified hold-out of Training, and the description says so.
- "stratified" (the original study's): a seeded, stratified 80/20 split of Training in
  which identical images stay on one side; it validates on part of Training, and
  tests on PublicTest when present.
Unlabelled rows (the competition's test.csv) are never validated or tested on.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fer_jax.data.types import (NUM_CLASSES, PRIVATE_TEST, PUBLIC_TEST, TEST, TRAINING,
                                UNLABELLED, FerData)
from fer_jax.errors import UserError

SCHEMES = ("official", "stratified")


@dataclasses.dataclass(frozen=True)
class DataSplits:
    train: FerData
    validation: FerData
    test: FerData | None
    description: str


def make_splits(data: FerData, scheme: str = "official", *, val_fraction: float = 0.2,
                seed: int = 42) -> DataSplits:
    """Splits DATA by SCHEME (see the module docstring)."""
    if scheme not in SCHEMES:
        raise UserError(f"unknown split scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    training = data.split(TRAINING)
    if not len(training):
        found = ", ".join(f"{usage} {count}" for usage, count in _usage_counts(data).items()) or "no rows"
        raise UserError(f"{data.source}: nothing to train on: no Training rows (found {found})")
    _require_labels(training, TRAINING, data.source)

    public = data.split(PUBLIC_TEST)
    if scheme == "official" and len(public):
        _require_labels(public, PUBLIC_TEST, data.source)
        train, validation = training, public
        how = f"official: train = Training ({len(train):,}), validation = PublicTest ({len(validation):,})"
        test, test_note = _official_test(data)
    else:
        in_val = stratified_group_split(training.labels, duplicate_groups(training.images),
                                        val_fraction=val_fraction, seed=seed)
        train, validation = training.subset(~in_val), training.subset(in_val)
        if not len(train) or not len(validation):
            raise UserError(f"{data.source}: {len(training)} Training rows are too few to hold out "
                            f"{val_fraction:.0%} for validation")
        held_out = (f"a stratified {val_fraction:.0%} of Training (seed {seed}; identical images kept "
                    f"on one side): train {len(train):,}, validation {len(validation):,}")
        if scheme == "official":
            how = f"official, but the source has no PublicTest rows, so validation is {held_out}"
            test, test_note = _official_test(data)
        else:
            how = f"stratified: validation is {held_out} (this scheme validates on part of Training)"
            test, test_note = _stratified_test(data)
    unused = _unused_note(data, test)
    description = "; ".join(part for part in (how, test_note, unused) if part)
    return DataSplits(train=train, validation=validation, test=test, description=description)


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """Group id per row (int64); rows with identical image bytes share one.

    Ids are numbered by first occurrence, so they do not depend on anything but the rows' order.
    """
    n = len(images)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.ascontiguousarray(images).reshape(n, -1)
    keys = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    # np.unique numbers groups in byte order; renumber them by first appearance.
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def stratified_group_split(labels: np.ndarray, groups: np.ndarray, *, val_fraction: float,
                           seed: int) -> np.ndarray:
    """Boolean mask of the validation rows: whole groups, about VAL_FRACTION of each class.

    A group counts for its majority label (ties: the lower label); per class, groups are
    shuffled (seeded) and taken until their rows come closest to the class's share.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) == 0:
        return np.zeros(0, dtype=bool)
    if np.any((labels < 0) | (labels >= NUM_CLASSES)):
        raise UserError("a stratified split needs labels 0-6 on every row")
    n_groups = int(groups.max()) + 1
    votes = np.bincount(groups * NUM_CLASSES + labels,
                        minlength=n_groups * NUM_CLASSES).reshape(n_groups, NUM_CLASSES)
    majority = votes.argmax(axis=1)
    sizes = votes.sum(axis=1)
    rng = np.random.default_rng(seed)
    in_val = np.zeros(n_groups, dtype=bool)
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero((majority == label) & (sizes > 0)))
        if not len(members):
            continue
        taken = np.cumsum(sizes[members])
        target = val_fraction * taken[-1]
        count = int(np.searchsorted(taken, target, side="right"))
        # Take one more group when that lands closer to the target.
        below = taken[count - 1] if count else 0
        if count < len(members) and taken[count] - target < target - below:
            count += 1
        in_val[members[:count]] = True
    return in_val[groups]


def _official_test(data: FerData) -> tuple[FerData | None, str]:
    private = data.split(PRIVATE_TEST)
    if len(private):
        _require_labels(private, PRIVATE_TEST, data.source)
        return private, f"test = PrivateTest ({len(private):,})"
    return _labelled_test(data, "no PrivateTest rows")


def _stratified_test(data: FerData) -> tuple[FerData | None, str]:
    public = data.split(PUBLIC_TEST)
    if len(public):
        _require_labels(public, PUBLIC_TEST, data.source)
        return public, f"test = PublicTest ({len(public):,})"
    return _labelled_test(data, "no PublicTest rows")


def _labelled_test(data: FerData, why: str) -> tuple[FerData | None, str]:
    """The labelled Test rows (a folder's test/ whose names do not say public/private), if any."""
    rows = data.split(TEST)
    rows = rows.subset(rows.labels != UNLABELLED)
    if len(rows):
        return rows, f"test = the labelled Test rows ({len(rows):,}; {why})"
    return None, f"no test split ({why})"


def _unused_note(data: FerData, test: FerData | None) -> str:
    """Says which rows no split uses, so that nothing is dropped silently."""
    notes = []
    if test is None or not np.all(test.usage == PRIVATE_TEST):
        if (count := int(np.sum(data.usage == PRIVATE_TEST))):
            notes.append(f"{count:,} PrivateTest rows")
    test_is_test_rows = test is not None and np.all(test.usage == TEST)
    test_rows = data.usage == TEST
    unlabelled = int(np.sum(test_rows & (data.labels == UNLABELLED)))
    if unlabelled:
        notes.append(f"{unlabelled:,} unlabelled Test rows")
    if not test_is_test_rows and (labelled := int(np.sum(test_rows)) - unlabelled):
        notes.append(f"{labelled:,} labelled Test rows")
    return f"not used: {', '.join(notes)}" if notes else ""


def _require_labels(rows: FerData, usage: str, source: str) -> None:
    if np.any(rows.labels == UNLABELLED):
        raise UserError(f"{source}: {usage} rows without labels cannot be trained or validated on")


def _usage_counts(data: FerData) -> dict[str, int]:
    values, counts = np.unique(data.usage, return_counts=True)
    return {str(value): int(count) for value, count in zip(values, counts)}

