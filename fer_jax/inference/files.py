"""Predictions over image and video files: every file's frames in order, runs of them
for one batched pass, and where the annotated copies go."""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterable, Iterator

from fer_jax.errors import DataError
from fer_jax.faces.annotate import annotated_name
from fer_jax.faces.io import VIDEO, Frame, InputFile, iter_frames

# Pictures decoded and searched before their faces are classified in one batched pass;
# bounds the memory held (16 4K video frames are 400 MB).
PICTURES_PER_PASS = 16


@dataclasses.dataclass(frozen=True)
class FileDone:
    source: InputFile


@dataclasses.dataclass(frozen=True)
class FileFailed:
    source: InputFile
    error: DataError


def stream(files: Iterable[InputFile], every: int) -> Iterator[Frame | FileDone | FileFailed]:
    """Each file's frames, then FileDone, or FileFailed where reading it stopped."""
    for source in files:
        try:
            yield from iter_frames(source, every)
        except DataError as err:
            yield FileFailed(source, err)
        else:
            yield FileDone(source)


def passes(items: Iterable, pictures: int) -> Iterator[list]:
    """Runs of items holding at most `pictures` frames each, in order."""
    run, frames = [], 0
    for item in items:
        run.append(item)
        frames += isinstance(item, Frame)
        if frames == pictures:
            yield run
            run, frames = [], 0
    if run:
        yield run


class OutputNames:
    """Where each annotated picture goes under --out: named after its input, never
    over an input file, and unique within the run (a clash gets "-2", "-3", ...)."""

    def __init__(self, out: pathlib.Path, inputs: Iterable[InputFile]):
        self.out = out
        self._taken = {source.path.resolve() for source in inputs}
        self._video_folders: dict[pathlib.Path, pathlib.Path] = {}

    def _unique(self, path: pathlib.Path) -> pathlib.Path:
        candidate, number = path, 1
        while candidate.resolve() in self._taken:
            number += 1
            candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        self._taken.add(candidate.resolve())
        return candidate

    def for_frame(self, frame: Frame) -> pathlib.Path:
        source = frame.source
        if source.kind != VIDEO:
            return self._unique(self.out / annotated_name(source.relative))
        # A video's sampled frames go into a folder named after it, without its extension.
        folder = self._video_folders.get(source.path)
        if folder is None:
            folder = self._unique(self.out / os.path.splitext(source.relative)[0])
            self._video_folders[source.path] = folder
        return folder / f"frame_{frame.index:06d}.jpg"
