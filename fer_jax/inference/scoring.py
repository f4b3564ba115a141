"""Scores of a model on the labelled rows of a FER2013 split."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from fer_jax.data.types import PRIVATE_TEST, PUBLIC_TEST, TRAINING, UNLABELLED, FerData
from fer_jax.errors import UserError
from fer_jax.inference.loading import LoadedModel, load_model
from fer_jax.data.tta import check_tta, probabilities_with_tta
from fer_jax.metrics import confusion_matrix, summarize_confusion

ALL_LABELLED = "all"
# The --split choices of the commands that score a model.
SPLIT_CHOICES = (PUBLIC_TEST, PRIVATE_TEST, TRAINING, ALL_LABELLED)


def select_split(data: FerData, split: str) -> FerData:
    """The labelled rows of SPLIT (one of SPLIT_CHOICES); UserError when there are none."""
    if split == ALL_LABELLED:
        chosen = data.subset(data.labels != UNLABELLED)
    else:
        chosen = data.split(split)
        if len(chosen) == 0:
            present = sorted(set(data.usage.tolist()))
            raise UserError(f"{data.source}: no {split} rows (the file holds: {', '.join(present)}); "
                            "use --split all or another --split")
    if len(chosen) == 0 or not chosen.has_labels:
        raise UserError(f"{data.source}: the {split} rows carry no labels, so there is nothing to score")
    return chosen


def score(labels: np.ndarray, probs: np.ndarray) -> dict:
    """metrics.summarize_confusion of the argmax predictions."""
    return summarize_confusion(confusion_matrix(labels, np.asarray(probs).argmax(-1)))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A checkpoint's scores on some labelled faces, and its probabilities for them."""

    loaded: LoadedModel
    summary: dict
    probabilities: np.ndarray


def evaluate_checkpoint(checkpoint: str | pathlib.Path | None, data: FerData, tta: str = "none",
                        batch_size: int = 256) -> Evaluation:
    """The model of CHECKPOINT (None: the default release) scored on DATA's labelled faces."""
    check_tta(tta)
    loaded = load_model(checkpoint)
    probs = probabilities_with_tta(loaded.classifier(batch_size), data.images, tta)
    return Evaluation(loaded, score(data.labels, probs), probs)
