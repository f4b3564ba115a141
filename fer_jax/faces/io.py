"""Which files the user's paths name, and their decoded frames as RGB uint8 arrays.

A path is an image, a video (known by its extension) or a folder, searched recursively
for both. Every problem with one file is a `DataError` naming that file, so that a
command can report it and go on with the others.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax.errors import DataError

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm",
})
# Videos are recognised by name only: FFmpeg would "decode" almost anything (even a text
# file, through its ANSI-art demuxer), so guessing from content would hide bad inputs.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
    ".3gp", ".ts", ".mts", ".m2ts",
})
IMAGE = "image"
VIDEO = "video"


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One file to predict on.

    path: where it is read from; name: how messages and JSON name it (the path as the
    user gave it, or joined to the folder they gave); relative: its name under an output
    folder (the file name, or the folder's name and the path inside it); kind: IMAGE or VIDEO.
    """

    path: pathlib.Path
    name: str
    relative: str
    kind: str


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded picture: the file it came from, its 0-based frame index in a video
    (None for a still image) and its pixels, uint8 (H, W, 3) RGB."""

    source: InputFile
    index: int | None
    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Expansion:
    """What the user's paths expand to: files in order, per-path problems (a missing
    path, a folder without images) and notes (files in a folder that were skipped)."""

    files: list[InputFile]
    problems: list[DataError]
    notes: list[str]


def kind_of(path: pathlib.Path) -> str:
    return VIDEO if path.suffix.lower() in VIDEO_EXTENSIONS else IMAGE


def expand_paths(paths: Sequence[str | os.PathLike]) -> Expansion:
    """Files named directly, and the images and videos inside folders (sorted, recursive)."""
    files: list[InputFile] = []
    problems: list[DataError] = []
    notes: list[str] = []
    for given in paths:
        path = pathlib.Path(given)
        if path.is_dir():
            inside, skipped = _folder_files(path, str(given))
            if not inside:
                problems.append(DataError(given, "folder holds no image or video files "
                                                 f"({_extension_hint()})"))
            files.extend(inside)
            if skipped:
                shown = ", ".join(str(p.relative_to(path)) for p in skipped[:3])
                more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
                notes.append(f"{given}: skipped {len(skipped)} file(s) that are not images or videos: "
                             f"{shown}{more}")
        elif path.exists():
            files.append(InputFile(path, str(given), path.name, kind_of(path)))
        else:
            problems.append(DataError(given, "no such file or folder"))
    return Expansion(files, problems, notes)


def _folder_files(folder: pathlib.Path, given: str) -> tuple[list[InputFile], list[pathlib.Path]]:
    found, skipped = [], []
    folder_name = folder.resolve().name or "root"
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue  # hidden files (.DS_Store, .git) are not the user's pictures
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS:
            found.append(InputFile(path, os.path.join(given, str(relative)),
                                   os.path.join(folder_name, str(relative)), kind_of(path)))
        else:
            skipped.append(path)
    return found, skipped


def _extension_hint() -> str:
    return "images: " + " ".join(sorted(IMAGE_EXTENSIONS)) + "; videos: " + " ".join(sorted(VIDEO_EXTENSIONS))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, turned upright by its EXIF orientation."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so that a truncated file fails here
            return _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        if pathlib.Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(path, "not a readable image: unknown format or damaged header") from None
        raise DataError(path, "not an image that Pillow can read (videos are recognised by "
                              f"extension: {' '.join(sorted(VIDEO_EXTENSIONS))})") from None
    except Image.DecompressionBombError as err:
        raise DataError(path, f"image too large to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports truncated and corrupt data as OSError (sometimes SyntaxError).
        raise DataError(path, f"corrupt or truncated image: {err}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB; 16-bit grayscale is scaled down (Pillow's convert would clip it)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        gray = np.clip(np.asarray(image, np.float64) / 257.0, 0, 255)
        return np.repeat(np.rint(gray).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def iter_video_frames(path: str | os.PathLike, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, uint8 (H, W, 3) RGB) for every `every`-th frame of the first video stream."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    import av  # FFmpeg's decoders; only videos need them

    decoded = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(path, "no video stream in this file")
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index % every == 0:
                    yield index, frame.to_ndarray(format="rgb24")
    except av.FFmpegError as err:
        where = f"after {decoded} frame(s)" if decoded else "cannot open or decode it"
        raise DataError(path, f"unreadable video ({where}): {err}") from None
    except OSError as err:
        raise DataError(path, f"unreadable video: {err}") from None
    if decoded == 0:
        raise DataError(path, "unreadable video: no frame could be decoded")


def iter_frames(source: InputFile, every: int = 1) -> Iterator[Frame]:
    """The frames of one input: an image's single frame, or a video's every n-th."""
    if source.kind == VIDEO:
        for index, pixels in iter_video_frames(source.path, every):
            yield Frame(source, index, pixels)
    else:
        yield Frame(source, None, read_image(source.path))
