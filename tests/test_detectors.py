"""The fast face detector (BlazeFace), the detectors by name, and faces that fill their frame.

Real photographs ship inside scikit-image: the astronaut (frontal), the cameraman (partly
in profile), 100 LFW face crops, a coffee cup, a cat and a rocket.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fer_jax.errors import UserError
from fer_jax.faces import align, blazeface
from fer_jax.faces.blazeface import BlazeFaceDetector, letterbox, merge_overlapping, ssd_anchors
from fer_jax.faces.detect import DetectedFace
from fer_jax.faces.detectors import FirstFound, make_detector

skimage_data = pytest.importorskip("skimage.data")


def rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def filling_the_frame(face: np.ndarray, side: int = 256, border: int = 8) -> np.ndarray:
    """A face crop enlarged to fill a side x side picture, inside a thin edge border
    (a studio portrait, or a photo someone cropped to the face)."""
    inner = side - 2 * border
    big = np.asarray(Image.fromarray(face).resize((inner, inner), Image.Resampling.BICUBIC))
    return rgb(np.pad(big, ((border, border), (border, border)) + ((0, 0),) * (big.ndim - 2), mode="edge"))


@pytest.fixture(scope="module")
def detector():
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


def test_anchor_layout_matches_the_models_outputs():
    # MediaPipe's short-range layout: 16 x 16 cells of 2 anchors, then 8 x 8 of 6 (896);
    # full range: 48 x 48 of one (2304), the length of each network's output.
    short, full = ssd_anchors(blazeface.SHORT_RANGE), ssd_anchors(blazeface.FULL_RANGE)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[2], [1.5 / 16, 0.5 / 16])  # x runs fastest, two per cell
    np.testing.assert_allclose(short[512], [0.5 / 8, 0.5 / 8])


def test_letterbox_keeps_the_aspect_and_maps_points():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255
    square, scale, dx, dy = letterbox(image, 128)
    assert square.shape == (128, 128, 3) and scale == pytest.approx(0.64)
    assert (dx, dy) == (0.0, 32.0)
    ys, xs = np.nonzero(square[..., 0] > 128)
    assert abs(xs.mean() - (99.5 * scale + dx)) < 1 and abs(ys.mean() - (49.5 * scale + dy)) < 1


def test_overlapping_detections_merge_weighted_by_score():
    points = np.zeros((3, 8, 2), np.float32)
    points[:, 1] = 0.2  # 0.2 x 0.2 boxes
    points[0, 0], points[1, 0], points[2, 0] = (0.5, 0.5), (0.52, 0.5), (0.9, 0.9)
    merged = merge_overlapping(np.array([0.9, 0.6, 0.7]), points)
    assert [round(score, 2) for score, _ in merged] == [0.9, 0.7]
    np.testing.assert_allclose(merged[0][1][0], [(0.5 * 0.9 + 0.52 * 0.6) / 1.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(merged[1][1][0], [0.9, 0.9])


def test_astronaut_found_with_her_eyes_and_an_mtcnn_like_box(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    # MTCNN's box for her face is about (182, 64, 83, 107) (tests/test_faces.py).
    assert 170 < x < 195 and 50 < y < 80 and 70 < w < 100 and 90 < h < 125
    assert x < faces[0].left_eye[0] < faces[0].right_eye[0] < x + w
    assert faces[0].confidence > 0.8
    # Her eyes tilt about 3 degrees (MTCNN); BlazeFace's coarser eye points say 9.
    assert abs(np.degrees(faces[0].eye_angle())) < 12


def test_the_cameraman_is_found(detector):
    faces = detector.detect(rgb(skimage_data.camera()))
    assert len(faces) == 1
    cx, cy = faces[0].centre_box()[:2]
    assert 195 < cx < 255 and 115 < cy < 200


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_face_without_a_person(detector, name):
    assert detector.detect(getattr(skimage_data, name)()) == []


def test_a_photo_cropped_to_the_face_is_found(detector, astronaut):
    crop = astronaut[30:210, 150:300]
    big = np.asarray(Image.fromarray(crop).resize((256, 307), Image.Resampling.BICUBIC))
    faces = detector.detect(big)
    assert len(faces) == 1
    assert np.sqrt(faces[0].box[2] * faces[0].box[3]) > 0.5 * 256


def test_real_face_crops_filling_the_frame_are_found(detector):
    # 100 LFW faces (25 x 25 crops of news photographs), each enlarged to fill a 256 x 256
    # picture with an 8-pixel border: the kind of picture MTCNN missed 13% of.
    faces = (skimage_data.lfw_subset()[:100] * 255).round().astype(np.uint8)
    found = sum(len(detector.detect(filling_the_frame(face))) == 1 for face in faces)
    assert found >= 97


def test_a_second_search_inside_a_border_finds_more_faces_filling_the_frame(monkeypatch, detector,
                                                                          fer_sample_path):
    from fer_jax.data.readers import read_fer
    pictures = [filling_the_frame(face) for face in read_fer(fer_sample_path).images[400:500]]
    with_border = sum(len(detector.detect(p)) == 1 for p in pictures)
    if with_border < 30:
        pytest.skip("the FER sample here is generated noise, without faces")
    monkeypatch.setattr(BlazeFaceDetector, "_search_filled", lambda self, image: [])
    without = sum(len(BlazeFaceDetector().detect(p)) == 1 for p in pictures)
    assert with_border > without


def test_fer_faces_filling_the_frame_are_found(fer_sample_path):
    from fer_jax.data.readers import read_fer
    faces = read_fer(fer_sample_path).images[400:500]
    detector = make_detector("auto")
    found = sum(len(detector.detect(filling_the_frame(face))) == 1 for face in faces)
    if found < 30:
        pytest.skip("the FER sample here is generated noise, without faces")
    # Measured: BlazeFace alone finds 98 of these 100, MTCNN alone 83.
    assert found >= 95


def test_fer_faces_set_in_a_photo_are_found_and_framed_back(detector, fer_sample_path):
    from fer_jax.data.readers import read_fer
    faces = read_fer(fer_sample_path).images[400:430]
    cases = []
    for face in faces:
        photo = np.pad(np.asarray(Image.fromarray(face).resize((192, 192), Image.Resampling.BICUBIC)), 96, mode="edge")
        found = detector.detect(rgb(photo))
        if len(found) == 1:
            cases.append(np.corrcoef(align.align_face(photo, found[0]).ravel().astype(float),
                                     face.ravel().astype(float))[0, 1])
    if len(cases) < 10:
        pytest.skip("the FER sample here is generated noise, without faces")
    assert len(cases) >= 28  # MTCNN finds 25 of these 30
    assert np.median(cases) > 0.55  # the crop is the FER frame again, as with MTCNN's boxes


def test_detectors_by_name():
    assert isinstance(make_detector("blazeface"), BlazeFaceDetector)
    assert make_detector("blazeface", 0.7).min_confidence == 0.7
    auto = make_detector("auto")
    assert isinstance(auto, FirstFound) and isinstance(auto.detectors[0], BlazeFaceDetector)
    with pytest.raises(UserError, match="unknown face detector 'haar'; expected one of: auto, blazeface, mtcnn"):
        make_detector("haar")


def test_first_found_asks_the_next_detector_only_when_needed():
    face = DetectedFace(box=(1, 2, 3, 4), confidence=0.9, left_eye=(1, 1), right_eye=(2, 1))
    calls = []

    class Fixed:
        def __init__(self, name, faces):
            self.name, self.faces = name, faces

        def detect(self, image):
            calls.append(self.name)
            return self.faces

    image = np.zeros((8, 8, 3), np.uint8)
    assert FirstFound(Fixed("a", [face]), Fixed("b", [])).detect(image) == [face]
    assert calls == ["a"]
    assert FirstFound(Fixed("a", []), Fixed("b", [face])).detect(image) == [face]
    assert calls == ["a", "a", "b"]


def test_bad_input_is_refused(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((32, 32, 3), np.float32))
    assert detector.detect(np.zeros((4, 4, 3), np.uint8)) == []
