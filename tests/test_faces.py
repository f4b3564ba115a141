"""Reading photos and videos, finding faces with MTCNN and framing them as FER2013 does.

The photos are real ones that ship inside scikit-image: the astronaut (Eileen Collins,
frontal), the cameraman (a man seen partly from the side), a coffee cup and a cat.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

from fer_jax.data.types import CLASS_NAMES
from fer_jax.errors import DataError
from fer_jax.faces import align, annotate, io, sampling
from fer_jax.faces.detect import DetectedFace, FaceDetector

skimage_data = pytest.importorskip("skimage.data")
av = pytest.importorskip("av")


def rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def write_video(path, frames, codec="mpeg4", rate=5):
    """A real encoded video file, as a user's camera would give one."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


def to_crop(matrix: np.ndarray, point) -> np.ndarray:
    """Image point to crop coordinates (inverse of crop_to_image)."""
    full = np.vstack([matrix, [0, 0, 1]])
    return (np.linalg.inv(full) @ np.array([point[0], point[1], 1.0]))[:2]


# ----------------------------------------------------------------------------- paths and files

def test_expand_paths_files_folders_and_problems(tmp_path):
    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    Image.new("RGB", (8, 8)).save(folder / "day2" / "a.JPG")
    (folder / "clip.MP4").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "empty").mkdir()
    single = tmp_path / "single.webp"
    single.write_bytes(b"x")

    found = io.expand_paths([str(folder), str(single), str(tmp_path / "gone.jpg"), str(tmp_path / "empty")])

    assert [(f.relative, f.kind) for f in found.files] == [
        ("holiday/b.png", io.IMAGE), ("holiday/clip.MP4", io.VIDEO),
        ("holiday/day2/a.JPG", io.IMAGE), ("single.webp", io.IMAGE)]
    assert found.files[0].name == str(folder / "b.png")
    assert len(found.notes) == 1 and "notes.txt" in found.notes[0] and "1 file" in found.notes[0]
    assert [str(p) for p in found.problems] == [f"{tmp_path / 'gone.jpg'}: no such file or folder",
                                                f"{tmp_path / 'empty'}: folder holds no image or video files "
                                                f"({io._extension_hint()})"]


def test_read_image_converts_to_upright_rgb(tmp_path):
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    pixels = io.read_image(tmp_path / "gray.png")
    assert pixels.shape == (12, 20, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 1], gray)

    # 16-bit grayscale (scientific cameras, scans) keeps its contrast.
    deep = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "deep.png")[..., 0], (deep // 257).astype(np.uint8))

    # A phone photo stored sideways with EXIF orientation 6 ("rotate 90 clockwise").
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb(gray)).save(tmp_path / "phone.jpg", exif=exif)
    assert io.read_image(tmp_path / "phone.jpg").shape == (20, 12, 3)


def test_read_image_reports_bad_files(tmp_path, astronaut):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not an image that Pillow can read"):
        io.read_image(tmp_path / "notes.txt")
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(DataError, match="notes.jpg: not a readable image: unknown format or damaged header"):
        io.read_image(tmp_path / "notes.jpg")
    Image.fromarray(astronaut).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    with pytest.raises(DataError, match="cut.jpg: corrupt or truncated image"):
        io.read_image(tmp_path / "cut.jpg")
    Image.fromarray(astronaut).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="cut.png: corrupt or truncated image"):
        io.read_image(tmp_path / "cut.png")


def test_video_frames_every_n(tmp_path):
    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(5)]
    path = write_video(tmp_path / "ramp.mp4", frames)
    got = list(io.iter_video_frames(path, every=2))
    assert [index for index, _ in got] == [0, 2, 4]
    assert all(pixels.shape == (32, 48, 3) and pixels.dtype == np.uint8 for _, pixels in got)
    # Lossy, but each kept frame is the one at its index.
    assert [int(round(pixels.mean() / 40)) for _, pixels in got] == [0, 2, 4]


def test_unreadable_videos(tmp_path):
    (tmp_path / "junk.mp4").write_text("not a video")
    with pytest.raises(DataError, match="junk.mp4: unreadable video"):
        list(io.iter_video_frames(tmp_path / "junk.mp4"))
    whole = write_video(tmp_path / "whole.mp4", [np.zeros((32, 32, 3), np.uint8)] * 4).read_bytes()
    (tmp_path / "half.mp4").write_bytes(whole[: len(whole) // 2])  # the index comes last: unopenable
    with pytest.raises(DataError, match="half.mp4: unreadable video"):
        list(io.iter_video_frames(tmp_path / "half.mp4"))


# ----------------------------------------------------------------------------- framing

def square_face(cx, cy, side, left_eye, right_eye) -> DetectedFace:
    """A face whose FER frame is the given square."""
    box_side = side / align.FRAME_PER_BOX
    return DetectedFace(box=(cx - box_side / 2, cy - box_side / 2, box_side, box_side), confidence=1.0,
                        left_eye=left_eye, right_eye=right_eye)


def test_align_face_pixel_convention_and_rotation_direction():
    image = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    level = square_face(23.5, 23.5, 48.0, left_eye=(10.0, 20.0), right_eye=(30.0, 20.0))
    np.testing.assert_array_equal(align.align_face(image, level), image)
    # Eyes one above the other (the head lies on its side): levelling turns the picture
    # so that the direction from the left to the right eye becomes +x.
    sideways = square_face(23.5, 23.5, 48.0, left_eye=(20.0, 10.0), right_eye=(20.0, 30.0))
    np.testing.assert_array_equal(align.align_face(image, sideways), np.rot90(image))


def test_align_face_shrinks_without_aliasing():
    # Stripes one pixel wide, framed four times larger than the crop: area averaging
    # gives flat gray, point sampling would give stripes back.
    stripes = np.tile(np.array([0, 255], np.uint8), (192, 96))
    face = square_face(95.5, 95.5, 192.0, left_eye=(60.0, 80.0), right_eye=(130.0, 80.0))
    crop = align.align_face(stripes, face)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    assert np.abs(crop.astype(int) - 128).max() <= 1


def test_to_gray_matches_pillow(astronaut):
    ours = np.rint(sampling.to_gray(astronaut))
    pillow = np.asarray(Image.fromarray(astronaut).convert("L"), np.float32)
    assert np.abs(ours - pillow).max() <= 1


def test_whole_image_face_converts_any_size_and_colour():
    fer_face = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    np.testing.assert_array_equal(align.whole_image_face(fer_face), fer_face)
    colour = np.zeros((120, 90, 4), np.uint8)
    colour[..., 0] = 255  # pure red: luma 0.299 * 255
    crop = align.whole_image_face(colour)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    assert np.all(np.abs(crop.astype(int) - 76) <= 1)
    with pytest.raises(ValueError, match="uint8"):
        align.whole_image_face(fer_face.astype(np.float32))


# ----------------------------------------------------------------------------- real photographs

def test_faces_found_where_the_people_are(detector, astronaut_face):
    x, y, w, h = astronaut_face.box
    # Eileen Collins' face spans about x 180-265, y 60-175 in the 512 x 512 photo.
    assert 170 < x < 195 and 50 < y < 80 and 70 < w < 100 and 90 < h < 125
    assert astronaut_face.confidence > 0.99
    assert x < astronaut_face.left_eye[0] < astronaut_face.right_eye[0] < x + w

    # The cameraman looks to the left, partly in profile: MTCNN still finds his face,
    # above the camera, at about x 195-255, y 115-200.
    camera = detector.detect(rgb(skimage_data.camera()))
    assert len(camera) == 1
    cx, cy, cw, ch = camera[0].box
    assert 185 < cx < 210 and 105 < cy < 130 and 45 < cw < 75 and 65 < ch < 100


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_face_without_a_person(detector, name):
    assert detector.detect(getattr(skimage_data, name)()) == []


def test_mtcnn_numpy_columns_are_read_as_documented(detector, astronaut, astronaut_face):
    # We read MTCNN's numpy output by column; its JSON output names them.
    named = detector._mtcnn.detect_faces(astronaut, fit_to_image=False)
    assert len(named) == 1
    assert np.allclose(named[0]["box"], astronaut_face.box, atol=1.0)
    assert np.allclose(named[0]["keypoints"]["left_eye"], astronaut_face.left_eye, atol=1.0)
    assert np.allclose(named[0]["keypoints"]["right_eye"], astronaut_face.right_eye, atol=1.0)


def test_large_photos_are_searched_downscaled(astronaut, astronaut_face):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    faces = FaceDetector(max_side=512).detect(big)
    assert len(faces) == 1
    # Coordinates come back in the big photo's pixels.
    np.testing.assert_allclose(faces[0].box, np.array(astronaut_face.box) * 4, rtol=0.08, atol=8)


def test_aligned_face_has_levelled_eyes_where_fer_has_them(astronaut_face):
    matrix = align.crop_to_image(astronaut_face)
    left, right = to_crop(matrix, astronaut_face.left_eye), to_crop(matrix, astronaut_face.right_eye)
    assert abs(left[1] - right[1]) < 1e-6  # levelled
    # FER2013's median eyes (same detector): x 15.25 and 32.75, y 18.75, 17.4 px apart
    # (interquartile range 15.7 to 18.8).
    assert abs(left[0] - 15.25) < 3 and abs(right[0] - 32.75) < 3
    assert abs(left[1] - 18.75) < 3
    assert abs((right[0] - left[0]) - 17.4) < 2.5


def test_tilted_head_is_levelled_and_framed_as_if_upright(detector, astronaut, astronaut_face):
    upright = align.align_face(astronaut, astronaut_face).astype(float)
    tilted_image = np.asarray(Image.fromarray(astronaut).rotate(25, resample=Image.Resampling.BILINEAR, expand=True))
    tilted = detector.detect(tilted_image)
    assert len(tilted) == 1
    face = tilted[0]
    native = math.degrees(astronaut_face.eye_angle())  # her eyes are not quite level (about 3 degrees)
    assert math.degrees(face.eye_angle()) == pytest.approx(native - 25, abs=3)  # PIL turns counter-clockwise
    assert face.upright_box is not None  # measured again on the levelled face
    # The levelled box is about the upright photo's; the image's own box is ~9% larger.
    upright_size = math.sqrt(astronaut_face.box[2] * astronaut_face.box[3])
    assert math.sqrt(face.upright_box[2] * face.upright_box[3]) == pytest.approx(upright_size, rel=0.06)
    assert math.sqrt(face.box[2] * face.box[3]) > 1.05 * upright_size

    levelled = align.align_face(tilted_image, face).astype(float)
    first_box_only = align.align_face(tilted_image, dataclasses.replace(face, upright_box=None)).astype(float)
    not_turned = align.align_face(tilted_image, dataclasses.replace(face, left_eye=(0, 0), right_eye=(1, 0)))
    similarity = lambda crop: np.corrcoef(upright.ravel(), np.asarray(crop, float).ravel())[0, 1]  # noqa: E731
    assert similarity(levelled) > 0.95
    assert similarity(levelled) > similarity(first_box_only) + 0.05
    assert similarity(levelled) > similarity(not_turned) + 0.2


def test_small_tilts_keep_the_first_box(detector, astronaut, astronaut_face):
    turned = np.asarray(Image.fromarray(astronaut).rotate(8, resample=Image.Resampling.BILINEAR, expand=True))
    faces = detector.detect(turned)
    assert len(faces) == 1 and faces[0].upright_box is None
    assert math.degrees(faces[0].eye_angle()) == pytest.approx(math.degrees(astronaut_face.eye_angle()) - 8, abs=3)


def test_fer_faces_set_in_a_photo_are_framed_back_as_fer_frames_them(detector, fer_sample_path, monkeypatch):
    # FER2013 faces enlarged 4x inside a larger picture: detecting and aligning them
    # should give back (about) the original 48 x 48 frame.
    from fer_jax.data.readers import read_fer
    cases = []
    for face in read_fer(fer_sample_path).images[400:430]:
        photo = np.pad(np.asarray(Image.fromarray(face).resize((192, 192), Image.Resampling.BICUBIC)), 96, mode="edge")
        found = detector.detect(rgb(photo))
        if len(found) == 1:
            cases.append((face.astype(float), photo, found[0]))
    if len(cases) < 10:
        pytest.skip("the FER sample here is generated noise, without faces")

    def median_similarity(frame_per_box: float) -> float:
        monkeypatch.setattr(align, "FRAME_PER_BOX", frame_per_box)
        return float(np.median([np.corrcoef(align.align_face(photo, found).ravel(), face.ravel())[0, 1]
                                for face, photo, found in cases]))

    ours = median_similarity(1.12)
    assert ours > 0.55
    assert ours > median_similarity(0.85) + 0.05 and ours > median_similarity(1.5) + 0.05


# ----------------------------------------------------------------------------- annotation

def test_annotated_picture_keeps_size_and_draws_the_box(astronaut):
    class Face:
        box, label, score = (100, 120, 80, 90), "happy", 0.87

    picture = annotate.annotate(astronaut, [Face()])
    assert picture.size == (512, 512)
    pixels = np.asarray(picture)
    green = np.array(annotate.CLASS_COLOURS["happy"])
    assert np.array_equal(pixels[160, 100], green) and np.array_equal(pixels[160, 179], green)
    assert np.array_equal(pixels[300, 300], astronaut[300, 300])  # untouched away from the face
    assert set(annotate.CLASS_COLOURS) == set(CLASS_NAMES)


def test_annotated_names_keep_writable_formats():
    assert annotate.annotated_name("a/b.JPG") == "a/b.JPG"
    assert annotate.annotated_name("c.gif") == "c.png"
    assert annotate.annotated_name("d.pgm") == "d.png"
