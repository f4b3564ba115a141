"""Choosing an ensemble on held-out rows of Training, so that the test split is scored once.

A subset (or weights) picked by its PublicTest accuracy makes that accuracy optimistic.
Members trained with `data.split_scheme=stratified` never saw a seeded, stratified share
of Training (`data.val_fraction`, `data.split_seed`): that slice is rebuilt here from
the same file, the members' probabilities on it choose the ensemble, and only then is
the test split scored, with the choice fixed. Nothing here reads a test split's rows.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fer_jax.data.splits import make_splits
from fer_jax.data.types import PRIVATE_TEST, PUBLIC_TEST, TRAINING, FerData
from fer_jax.errors import UserError
from fer_jax.inference.ensemble import subset_search

STRATIFIED_VAL = "stratified-val"
SELECT_ON = (STRATIFIED_VAL,)
# Splits a choice must never be made on, and their usual spellings.
_TEST_NAMES = {name.lower().replace("-", "").replace("_", ""): name for name in (PUBLIC_TEST, PRIVATE_TEST)}
_TEST_NAMES.update({"test": "a test split", "val": PUBLIC_TEST, "validation": PUBLIC_TEST})


def check_select_on(value: str) -> str:
    """VALUE when it names held-out data; a one-line refusal for a test split or anything unknown."""
    key = value.lower().replace("-", "").replace("_", "")
    if value in SELECT_ON:
        return value
    if key in _TEST_NAMES:
        raise UserError(f"--select-on {value}: refused: a choice made on {_TEST_NAMES[key]} makes its score "
                        f"optimistic; choose on {STRATIFIED_VAL} (members trained with "
                        "data.split_scheme=stratified) and report the test split once")
    raise UserError(f"--select-on {value}: unknown; valid: {', '.join(SELECT_ON)}")


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The rows the members never trained on, and how they were drawn."""

    data: FerData
    split_seed: int
    val_fraction: float
    description: str
    notes: tuple[str, ...] = ()


def held_out_slice(data: FerData, members: Sequence[dict]) -> HeldOut:
    """The stratified validation slice of DATA's Training rows that every member (their
    `info` dicts) held out; UserError naming the member when one did not hold it out."""
    if not members:
        raise UserError("held-out selection needs at least one member")
    notes = []
    for info in members:
        name = info.get("name") or info["checkpoint"]
        if info.get("split_scheme") != "stratified":
            raise UserError(f"--select-on {STRATIFIED_VAL}: {name} was trained with data.split_scheme="
                            f"{info.get('split_scheme')}, so it trained on every Training row; train the "
                            "members with --set data.split_scheme=stratified")
        # Another file (a copy with PrivateTest rows, say) holds out the same rows when its
        # Training rows are the same ones in the same order; the slice depends on nothing else.
        if info.get("data_fingerprint") and info["data_fingerprint"] != data.fingerprint:
            notes.append(f"note: {name} was trained on another file than {data.source}; its held-out "
                         "rows are this file's only if the Training rows are the same, in the same order")
    drawn = {(info.get("split_seed"), info.get("val_fraction")) for info in members}
    if len(drawn) != 1:
        raise UserError(f"--select-on {STRATIFIED_VAL}: the members held out different slices "
                        f"(data.split_seed, data.val_fraction: {sorted(drawn, key=str)}); "
                        "train them with the same ones")
    ((seed, fraction),) = drawn
    # The held-out rows depend on Training alone: the split is made from those rows only.
    training = data.split(TRAINING)
    splits = make_splits(training, "stratified", val_fraction=float(fraction), seed=int(seed))
    return HeldOut(splits.validation, int(seed), float(fraction),
                   f"{len(splits.validation):,} held-out Training rows (stratified {float(fraction):.0%}, "
                   f"seed {int(seed)})", tuple(notes))


def choose_subset(probabilities: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str]) -> dict:
    """The subset of members (one or more, equal weights) with the best accuracy on the
    held-out rows whose probabilities and labels are given; ties go to fewer members,
    then to the members' order. Returns {"method", "members", "weights", "accuracy",
    "macro_f1", "candidates"}; weights are 1 for a chosen member, 0 otherwise."""
    # Searched by position: two members may carry the same name.
    rows = subset_search(probabilities, labels, [str(i) for i in range(len(names))], min_size=1)
    best = rows[0]
    chosen = sorted(int(i) for i in best["members"])
    return {"method": "subset", "members": [names[i] for i in chosen],
            "weights": [1.0 if i in chosen else 0.0 for i in range(len(names))],
            "accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "candidates": len(rows)}
