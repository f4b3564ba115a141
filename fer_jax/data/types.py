"""The in-memory form every reader produces, and the label and split vocabulary."""
from __future__ import annotations

import dataclasses

import numpy as np

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE

TRAINING = "Training"
PUBLIC_TEST = "PublicTest"
PRIVATE_TEST = "PrivateTest"
# Test rows whose public/private half is unknown (the competition's test.csv, or a
# folder copy whose file names do not say).
TEST = "Test"
USAGES = (TRAINING, PUBLIC_TEST, PRIVATE_TEST, TEST)

UNLABELLED = -1


@dataclasses.dataclass(frozen=True, eq=False)
class FerData:
    """Images, labels and the split of each row, as read from one source.

    images: uint8 (N, 48, 48); labels: int32 (N,), UNLABELLED where the source has
    no labels; usage: str (N,), one of USAGES; source: where it was read from;
    fingerprint: sha256 of the source's content (the data set's identity).
    """

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    source: str
    fingerprint: str

    def __post_init__(self):
        n = len(self.images)
        if self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, 48, 48), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,) or self.usage.shape != (n,):
            raise ValueError("images, labels and usage must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool(np.all(self.labels != UNLABELLED))

    def subset(self, index: np.ndarray) -> "FerData":
        """Rows selected by a boolean mask or an integer index array."""
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index],
                                   usage=self.usage[index])

    def split(self, usage: str) -> "FerData":
        return self.subset(self.usage == usage)

    def class_counts(self) -> np.ndarray:
        labelled = self.labels[self.labels != UNLABELLED]
        return np.bincount(labelled, minlength=NUM_CLASSES)[:NUM_CLASSES]
