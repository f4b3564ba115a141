"""python -m fer_jax.predict PATH... [--checkpoint DIR] [--out DIR] [--json] [--no-detect] [--every N] [--tta]

Finds the faces in photos, folders of photos and videos and predicts each face's expression.

Standard output carries only results: with --json one JSON object per face and line
({"file", "frame", "box": [x, y, w, h], "label", "probabilities": {class: p},
"detection_confidence"}), else one readable line per face. Messages and the progress
bar go to standard error. Exit status: 0 when every input was read and showed at least
one face, 1 when some did not (each is named on standard error), 2 for a usage error
(bad option, unusable checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

from tqdm import tqdm

from fer_jax.errors import UserError, run_cli
from fer_jax.faces.annotate import annotate, save_picture
from fer_jax.faces.detectors import DEFAULT_DETECTOR, DETECTORS, make_detector
from fer_jax.faces.io import VIDEO, Expansion, Frame, InputFile, expand_paths
from fer_jax.inference.expressions import ExpressionPredictor
from fer_jax.inference.files import PICTURES_PER_PASS, FileDone, FileFailed, OutputNames, passes, stream
from fer_jax.runtime import quiet_tensorflow


@dataclasses.dataclass
class Tally:
    """What happened, for the final line and the exit status."""

    faces_per_file: dict[InputFile, int] = dataclasses.field(default_factory=dict)
    pictures: int = 0
    faces: int = 0
    problems: int = 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.predict", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, video files (by extension: .mp4, .mov, .avi, .mkv, .webm, ...) "
                             "or folders (every image and video inside, recursively)")
    parser.add_argument("--checkpoint", default=None,
                        help="a run's workdir (its best checkpoint), a checkpoint folder, "
                             "or a released model (default: release/final)")
    parser.add_argument("--out", default=None,
                        help="write an annotated copy of each picture here (a video's sampled "
                             "frames go into a folder named after it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per face and line")
    parser.add_argument("--no-detect", action="store_true",
                        help="each image already is a face crop (any size or colour); skip detection")
    parser.add_argument("--every", type=_positive_int, default=1, metavar="N",
                        help="in videos, use every N-th frame (default: 1, every frame)")
    parser.add_argument("--tta", action="store_true",
                        help="average each face's probabilities with those of its mirror image")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help="face detector: blazeface (fast), mtcnn, or auto: BlazeFace, then MTCNN "
                             f"where BlazeFace finds no face (default: {DEFAULT_DETECTOR})")
    parser.add_argument("--backend", choices=("auto", "jax", "onnx"), default="auto",
                        help="run the model with JAX or onnxruntime; auto (default): a release's "
                             "shipped model.onnx when onnxruntime is installed, else JAX")
    parser.add_argument("--min-confidence", type=_probability, default=None, metavar="P",
                        help="keep detections the detector is at least this sure of "
                             "(default: BlazeFace 0.55, MTCNN 0.95)")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="faces per forward pass (default: 64)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    try:
        return _predict(args)
    except BrokenPipeError:
        # The reader of standard output went away (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _predict(args: argparse.Namespace) -> int:
    expansion: Expansion = expand_paths(args.paths)

    def say(message: str) -> None:
        tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it

    tally = Tally()
    for note in expansion.notes:
        say(f"note: {note}")
    for problem in expansion.problems:
        say(f"skipped: {problem}")
        tally.problems += 1
    if not expansion.files:
        say("nothing to predict on")
        return 1

    predictor = ExpressionPredictor(args.checkpoint, batch_size=args.batch_size, tta=args.tta,
                                    detector=make_detector(args.detector, args.min_confidence),
                                    backend=args.backend)
    say(f"model: {predictor.model_name} from {predictor.checkpoint}")
    if predictor.meta.get("synthetic"):
        say(f"note: this model was trained on synthetic data. {predictor.meta.get('notice', '')}".rstrip())
    names = None
    if args.out:
        out = pathlib.Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
        names = OutputNames(out, expansion.files)

    files = expansion.files
    show_bar = len(files) > 1 or any(source.kind == VIDEO for source in files)
    started = time.perf_counter()
    with tqdm(total=len(files), unit="file", file=sys.stderr, disable=not show_bar, leave=False) as bar:
        for run in passes(stream(files, args.every), PICTURES_PER_PASS):
            frames = [item for item in run if isinstance(item, Frame)]
            pictures = [frame.pixels for frame in frames]
            if args.no_detect:
                found = [[prediction] for prediction in predictor.predict_faces(pictures)]
            else:
                found = predictor.predict_images(pictures)
            faces_in_order = iter(found)
            for item in run:
                if isinstance(item, Frame):
                    _report_frame(item, next(faces_in_order), args.json, names, tally, say)
                else:
                    _finish_file(item, tally, say)
                    bar.update(1)
    elapsed = time.perf_counter() - started
    rate = tally.pictures / elapsed if elapsed > 0 else float("inf")
    say(f"{len(files)} file(s), {tally.pictures} picture(s), {tally.faces} face(s) in {elapsed:.1f} s "
        f"({rate:.1f} pictures/s); {tally.problems} input(s) with problems")
    return 0 if tally.problems == 0 else 1


def _report_frame(frame: Frame, faces: list, as_json: bool, names: OutputNames | None,
                  tally: Tally, say) -> None:
    source = frame.source
    tally.pictures += 1
    tally.faces += len(faces)
    tally.faces_per_file[source] = tally.faces_per_file.get(source, 0) + len(faces)
    for face in faces:
        if as_json:
            record = {"file": source.name, "frame": frame.index, **face.to_json()}
            print(json.dumps(record))
        else:
            where = source.name if frame.index is None else f"{source.name} frame {frame.index}"
            x, y, w, h = face.box
            print(f"{where}: {face.label} {face.score:.2f} at x={x} y={y} w={w} h={h}")
    if names is not None:
        path = names.for_frame(frame)
        try:
            save_picture(annotate(frame.pixels, faces), path)
        except OSError as err:
            say(f"error: {source.name}: cannot write {path}: {err.strerror or err}")
            tally.problems += 1


def _finish_file(item: FileDone | FileFailed, tally: Tally, say) -> None:
    source = item.source
    if isinstance(item, FileFailed):
        say(f"error: {item.error}")
        tally.problems += 1
    elif tally.faces_per_file.get(source, 0) == 0:
        what = "in any sampled frame" if source.kind == VIDEO else "in this image"
        say(f"no face: {source.name}: no face found {what}")
        tally.problems += 1
    sys.stdout.flush()


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
