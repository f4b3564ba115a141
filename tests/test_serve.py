"""The web app's JSON API, in-process: good photos, bad requests, a concurrent burst."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
skimage_data = pytest.importorskip("skimage.data")

from starlette.testclient import TestClient  # noqa: E402

from fer_jax.serving.app import PredictionService, create_app  # noqa: E402
from fer_jax.serving.limits import Limits, RequestError, decode_image  # noqa: E402

RECORD_KEYS = {"file", "frame", "box", "label", "probabilities", "detection_confidence"}


def encoded(image: np.ndarray, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=format)
    return out.getvalue()


@pytest.fixture(scope="module")
def predictor():
    from fer_jax.inference.expressions import ExpressionPredictor
    return ExpressionPredictor(None, batch_size=8, detector="blazeface")  # the released model


@pytest.fixture(scope="module")
def service(predictor):
    return PredictionService(predictor, limits=Limits(max_bytes=2_000_000, max_pixels=1_000_000))


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service, model_info={"model": "resnet18"}))


@pytest.fixture(scope="module")
def astronaut_png():
    return encoded(skimage_data.astronaut())


def test_health_and_page(client):
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json()["status"] == "ok" and answer.json()["model"] == "resnet18"
    page = client.get("/")
    assert page.status_code == 200 and "/api/predict" in page.text and "getUserMedia" in page.text


def test_a_photo_as_a_form_field_or_as_the_body(client, predictor, astronaut_png):
    form = client.post("/api/predict", files={"file": ("astronaut.png", astronaut_png, "image/png")})
    assert form.status_code == 200
    (face,) = form.json()
    assert set(face) == RECORD_KEYS and face["file"] == "astronaut.png" and face["frame"] is None
    assert face["label"] == "happy"
    # The same record as predict --json gives (FacePrediction.to_json).
    expected = predictor.predict_image(skimage_data.astronaut())[0].to_json()
    assert {k: face[k] for k in expected} == expected
    raw = client.post("/api/predict", content=astronaut_png, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json() == [{**face, "file": None}]


def test_a_photo_without_a_face_is_an_empty_list(client):
    answer = client.post("/api/predict", content=encoded(skimage_data.coffee(), "JPEG"))
    assert answer.status_code == 200 and answer.json() == []


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "empty request"),
    (b"hello, not a picture", 400, "not an image"),
    ("truncated", 400, "corrupt or truncated image"),
    ("many_pixels", 413, "image too large: 1200 x 1000 pixels, at most 1000000 pixels"),
    ("many_bytes", 413, "too large"),
])
def test_bad_requests_get_a_4xx_and_a_message(client, astronaut_png, body, status, message):
    if body == "truncated":
        body = astronaut_png[: len(astronaut_png) // 2]
    elif body == "many_pixels":
        body = encoded(np.zeros((1000, 1200, 3), np.uint8))
    elif body == "many_bytes":
        body = np.random.default_rng(0).integers(0, 256, 2_100_000, dtype=np.uint8).tobytes()
    answer = client.post("/api/predict", content=body)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_form_without_the_file_field_and_wrong_method(client, astronaut_png):
    answer = client.post("/api/predict", files={"picture": ("a.png", astronaut_png, "image/png")})
    assert answer.status_code == 400 and "no file field named 'file'" in answer.json()["error"]
    assert client.get("/api/predict").status_code == 405


def test_decode_image_turns_by_exif_and_refuses_bombs():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    out = io.BytesIO()
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(out, format="JPEG", exif=exif)
    assert decode_image(out.getvalue()).shape == (40, 20, 3)
    with pytest.raises(RequestError, match="at most 100 pixels") as err:
        decode_image(out.getvalue(), Limits(max_pixels=100))
    assert err.value.status == 413


def test_a_concurrent_burst_of_good_and_bad_requests(service, astronaut_png):
    # 24 requests at once (16 photos: the astronaut and a grayscale cameraman; 8 bad),
    # in-process: every good one gets its right answer, every bad one a 4xx.
    camera_png = encoded(skimage_data.camera())
    bad = [b"", b"junk", astronaut_png[:500], b"\x89PNG\r\n\x1a\n"]
    bodies = [astronaut_png, camera_png] * 8 + bad * 2
    app = create_app(service)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*(http.post("/api/predict", content=body) for body in bodies))

    before = service.requests
    answers = asyncio.run(burst())
    good, refused = answers[:16], answers[16:]
    assert all(a.status_code == 200 for a in good)
    assert all(400 <= a.status_code < 500 and a.json()["error"] for a in refused)
    astronaut_answers = {repr(a.json()) for a in good[0::2]}
    camera_answers = {repr(a.json()) for a in good[1::2]}
    assert len(astronaut_answers) == 1 and len(camera_answers) == 1  # the same answer every time
    assert good[0].json()[0]["label"] == "happy" and len(good[1].json()) == 1
    assert service.requests == before + 16
