"""Predicting expressions on photos, folders and videos: the Python API and the command.

The model is a tiny one trained for 2 steps (its accuracy does not matter: these
tests check faces, framing, normalization, outputs and error handling); the photos are
real ones that ship inside scikit-image.
"""
from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from fer_jax.cli.predict import main
from fer_jax.data.pipeline import eval_batches
from fer_jax.data.readers import read_fer
from fer_jax.data.types import CLASS_NAMES
from fer_jax.errors import UserError, run_cli
from fer_jax.faces.align import align_face, whole_image_face
from fer_jax.faces.annotate import CLASS_COLOURS
from fer_jax.inference.loading import load_model
from fer_jax.predictor import ExpressionPredictor

skimage_data = pytest.importorskip("skimage.data")
av = pytest.importorskip("av")

JSON_KEYS = ["file", "frame", "box", "label", "probabilities", "detection_confidence"]


def rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def checkpoint(simple_run) -> pathlib.Path:
    """conftest's two-step simple_cnn_v1 run, shared with the other command tests."""
    return simple_run


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return ExpressionPredictor(checkpoint, batch_size=8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> pathlib.Path:
    """A folder of real photographs: two people, a cup, a cat, and a stray text file."""
    folder = tmp_path_factory.mktemp("photos") / "album"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.camera()).save(folder / "camera.jpg", quality=95)
    Image.fromarray(skimage_data.coffee()).save(folder / "coffee.png")
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    (folder / "readme.txt").write_text("holiday pictures")
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> pathlib.Path:
    """Six frames of the astronaut panning slowly, encoded as MPEG-4."""
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    astronaut = skimage_data.astronaut()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 448, 448, "yuv420p"
        for i in range(6):
            frame = np.ascontiguousarray(astronaut[8 * i: 8 * i + 448, 4 * i: 4 * i + 448])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_main(capsys, *args) -> tuple[int, list[str], str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def check_record(record: dict) -> None:
    assert list(record) == JSON_KEYS
    assert set(record["probabilities"]) == set(CLASS_NAMES)
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    assert len(record["box"]) == 4 and all(isinstance(v, int) for v in record["box"])


# ----------------------------------------------------------------------------- Python API

def test_api_finds_and_classifies_faces(predictor):
    astronaut, coffee, camera = skimage_data.astronaut(), skimage_data.coffee(), skimage_data.camera()
    found = predictor.predict_images([astronaut, coffee, camera])
    assert [len(faces) for faces in found] == [1, 0, 1]
    face = found[0][0]
    x, y, w, h = face.box
    assert 170 < x < 195 and 50 < y < 80 and x + w <= 512 and y + h <= 512
    assert face.detection_confidence > 0.9  # BlazeFace's (the default detector's); MTCNN's is above 0.99
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    # The crop is the aligned face, and its probabilities are the classifier's on it.
    detected = predictor.detector.detect(astronaut)[0]
    np.testing.assert_array_equal(face.face, align_face(astronaut, detected))
    expected = predictor.classify(face.face[None])[0]
    np.testing.assert_allclose([face.probabilities[c] for c in CLASS_NAMES], expected, atol=1e-6)
    # A grayscale photo works as it is.
    assert found[2][0].box == predictor.predict_image(rgb(camera))[0].box


def test_faces_are_normalized_exactly_as_in_training(predictor, checkpoint, fer_sample_path):
    images = read_fer(fer_sample_path).images[:5]
    _, model, variables, norm, _, _ = load_model(checkpoint)
    assert norm == predictor.normalization and 0.3 < norm["mean"] < 0.7  # the data's, not 0/1
    batch = next(eval_batches(images, np.zeros(5, np.int32), global_batch_size=5, norm=norm))
    expected = np.asarray(jax.nn.softmax(model.apply(variables, batch["image"], train=False)))
    # Already-cropped FER faces pass unchanged, whether given as a stack or a list.
    got = predictor.predict_faces(images)
    np.testing.assert_allclose([[p.probabilities[c] for c in CLASS_NAMES] for p in got], expected, atol=1e-5)
    np.testing.assert_allclose(predictor.classify(images), expected, atol=1e-5)
    assert [p.box for p in predictor.predict_faces(list(images))] == [(0, 0, 48, 48)] * 5


def test_tta_averages_each_face_with_its_mirror(checkpoint, predictor, fer_sample_path):
    images = read_fer(fer_sample_path).images[:3]
    with_tta = ExpressionPredictor(checkpoint, batch_size=8, tta=True).classify(images)
    plain, mirrored = predictor.classify(images), predictor.classify(images[:, :, ::-1].copy())
    np.testing.assert_allclose(with_tta, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the mirror really is another input


def test_api_rejects_what_it_cannot_read(predictor):
    with pytest.raises(ValueError, match=r"uint8 \(N, 48, 48\)"):
        predictor.classify(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8 pixels"):
        predictor.predict_images([np.zeros((64, 64, 3), np.float32)])


# ----------------------------------------------------------------------------- the command

def test_folder_and_video_json_and_annotated_copies(capsys, checkpoint, photos, video, tmp_path):
    out = tmp_path / "out"
    status, lines, err = run_main(capsys, photos, video, "--checkpoint", checkpoint, "--json",
                                  "--out", out, "--every", "2")
    records = [json.loads(line) for line in lines]  # every line of stdout is one JSON object
    for record in records:
        check_record(record)
    by_file = {}
    for record in records:
        by_file.setdefault(record["file"], []).append(record)
    assert sorted(by_file) == sorted([str(photos / "astronaut.png"), str(photos / "camera.jpg"), str(video)])
    assert [r["frame"] for r in by_file[str(photos / "astronaut.png")]] == [None]
    assert len(by_file[str(photos / "camera.jpg")]) == 1
    assert [r["frame"] for r in by_file[str(video)]] == [0, 2, 4]
    # The astronaut pans left and up by (4, 8) px a frame: her box follows (within 7 px:
    # BlazeFace, the default detector, sees the frame at a quarter of its size).
    boxes = np.array([r["box"] for r in by_file[str(video)]])
    assert np.all(np.abs(boxes[1:, :2] - boxes[:-1, :2] + [8, 16]) <= 7)

    # The cup and the cat: read, but no face; so the status is 1.
    assert status == 1
    assert f"no face: {photos / 'coffee.png'}: no face found in this image" in err
    assert f"no face: {photos / 'chelsea.jpg'}: no face found in this image" in err
    assert "readme.txt" in err and "Traceback" not in err

    # One annotated copy per picture, named after it, the size of the input.
    for name, source in [("astronaut.png", skimage_data.astronaut()), ("camera.jpg", skimage_data.camera()),
                         ("coffee.png", skimage_data.coffee()), ("chelsea.jpg", skimage_data.chelsea())]:
        with Image.open(out / "album" / name) as annotated:
            assert annotated.size == (source.shape[1], source.shape[0])
    assert sorted(p.name for p in (out / "pan").iterdir()) == ["frame_000000.jpg", "frame_000002.jpg",
                                                               "frame_000004.jpg"]
    # The box is drawn in the label's colour.
    record = by_file[str(photos / "astronaut.png")][0]
    x, y, w, h = record["box"]
    annotated = np.asarray(Image.open(out / "album" / "astronaut.png"))
    assert tuple(annotated[y + h // 2, x]) == CLASS_COLOURS[record["label"]]


def test_every_input_with_a_face_gives_status_0(capsys, checkpoint, photos, video):
    status, lines, err = run_main(capsys, photos / "astronaut.png", photos / "camera.jpg", video,
                                  "--checkpoint", checkpoint, "--every", "3")
    assert status == 0
    assert len(lines) == 4  # readable lines without --json: 2 photos + frames 0 and 3
    assert lines[0].startswith(f"{photos / 'astronaut.png'}: ") and " at x=" in lines[0]
    assert lines[2].startswith(f"{video} frame 0: ") and lines[3].startswith(f"{video} frame 3: ")
    assert "0 input(s) with problems" in err


def test_bad_inputs_are_named_and_the_rest_processed(capsys, checkpoint, photos, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    data = (photos / "astronaut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "broken.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + os.urandom(2000))
    paths = [tmp_path / "notes.txt", tmp_path / "cut.png", tmp_path / "broken.mp4", tmp_path / "gone.jpg",
             photos / "coffee.png", photos / "astronaut.png"]
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [*map(str, paths), "--json", "--checkpoint", str(checkpoint)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in records] == [str(photos / "astronaut.png")]
    assert f"error: {tmp_path / 'notes.txt'}: not an image that Pillow can read" in err
    assert f"error: {tmp_path / 'cut.png'}: corrupt or truncated image" in err
    assert f"error: {tmp_path / 'broken.mp4'}: unreadable video" in err
    assert f"skipped: {tmp_path / 'gone.jpg'}: no such file or folder" in err
    assert f"no face: {photos / 'coffee.png'}: no face found in this image" in err


def test_no_detect_takes_each_image_as_a_face(capsys, checkpoint, predictor, photos, fer_sample_path, tmp_path):
    fer_face = read_fer(fer_sample_path).images[0]
    Image.fromarray(fer_face).save(tmp_path / "fer.png")
    coffee = skimage_data.coffee()
    status, lines, _ = run_main(capsys, tmp_path / "fer.png", photos / "coffee.png", "--no-detect", "--json",
                                "--checkpoint", checkpoint)
    assert status == 0  # every image is a face by declaration, even the cup
    fer_record, coffee_record = map(json.loads, lines)
    check_record(fer_record)
    assert fer_record["box"] == [0, 0, 48, 48] and fer_record["detection_confidence"] is None
    assert coffee_record["box"] == [0, 0, coffee.shape[1], coffee.shape[0]]
    expected = predictor.classify(np.stack([fer_face, whole_image_face(coffee)]))
    got = [[r["probabilities"][c] for c in CLASS_NAMES] for r in (fer_record, coffee_record)]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_outputs_never_overwrite_inputs_or_each_other(capsys, checkpoint, photos, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(skimage_data.astronaut()[:, ::-1].copy()).save(other / "astronaut.png")
    original = (other / "astronaut.png").read_bytes()
    status, _, _ = run_main(capsys, photos / "astronaut.png", other / "astronaut.png",
                            "--checkpoint", checkpoint, "--out", other)
    assert status == 0
    assert (other / "astronaut.png").read_bytes() == original
    assert sorted(p.name for p in other.iterdir()) == ["astronaut-2.png", "astronaut-3.png", "astronaut.png"]


def test_usage_errors(capsys, photos, tmp_path):
    with pytest.raises(UserError, match="no_run"):
        main([str(photos / "astronaut.png"), "--checkpoint", str(tmp_path / "no_run")])
    with pytest.raises(SystemExit) as exit_info:
        main(["x.jpg", "--every", "0"])
    assert exit_info.value.code == 2
    assert "--every: must be at least 1" in capsys.readouterr().err
    # Nothing readable at all: status 1, and no model is loaded for nothing.
    status, lines, err = run_main(capsys, tmp_path / "gone.jpg", "--checkpoint", tmp_path / "no_run")
    assert status == 1 and lines == [] and "gone.jpg: no such file or folder" in err
