"""The web app: one page, `POST /api/predict` and `GET /health`, around one loaded predictor.

Starlette (the ASGI toolkit FastAPI is built on) serves it; uvicorn runs it. The model is
loaded once, before the app is made. Requests are decoded concurrently in Starlette's
thread pool and queue on one lock for the detector and the model (neither TensorFlow
Lite's interpreter nor MTCNN may be called from two threads at once; one CPU pass per
picture keeps the latency of each request steady).
"""
from __future__ import annotations

import json
import pathlib
import threading
import time

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from fer_jax.serving.limits import Limits, RequestError, decode_image

STATIC = pathlib.Path(__file__).resolve().parent / "static"


class PredictionService:
    """A predictor (fer_jax.inference.expressions.ExpressionPredictor or alike) behind a lock."""

    def __init__(self, predictor, *, limits: Limits = Limits()):
        self.predictor = predictor
        self.limits = limits
        self._lock = threading.Lock()
        self.requests = 0

    def records(self, image: np.ndarray, name: str | None) -> list[dict]:
        """The JSON records of every face in one RGB image, as `predict --json` prints them."""
        with self._lock:
            faces = self.predictor.predict_image(image)
            self.requests += 1
        return [{"file": name, "frame": None, **face.to_json()} for face in faces]

    def warm_up(self) -> float:
        """Seconds to compile the model and load the first detector, on blank pictures.

        A fallback detector (MTCNN behind BlazeFace in "auto") is left to load on the first
        picture that needs it: TensorFlow's import alone takes seconds.
        """
        started = time.perf_counter()
        detector = self.predictor.detector
        first = getattr(detector, "detectors", (detector,))[0]
        with self._lock:
            first.detect(np.zeros((96, 128, 3), np.uint8))
            self.predictor.classify(np.zeros((1, 48, 48), np.uint8))
        return time.perf_counter() - started


async def _read_upload(request: Request, limits: Limits) -> tuple[bytes, str | None]:
    """The image bytes of a request: its multipart field `file`, or the raw body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes + 64 * 1024:
        raise RequestError(413, f"request too large: {declared} bytes, at most {limits.max_bytes} for the file")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_bytes)
        except Exception as err:  # Starlette's MultiPartException and the parser's own errors
            raise RequestError(400, f"unreadable multipart form: {err}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "the multipart form has no file field named 'file'")
        data = await upload.read(limits.max_bytes + 1)
        return data, upload.filename
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_bytes:
            raise RequestError(413, f"file too large: more than {limits.max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks), None


def create_app(service: PredictionService, *, model_info: dict | None = None) -> Starlette:
    """The ASGI app serving `service`; model_info is shown by /health."""
    info = dict(model_info or {})

    async def predict(request: Request) -> Response:
        try:
            data, name = await _read_upload(request, service.limits)
            image = await run_in_threadpool(decode_image, data, service.limits)
        except RequestError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        records = await run_in_threadpool(service.records, image, name)
        return Response(json.dumps(records), media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "requests": service.requests, **info})

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/predict", predict, methods=["POST"]),
    ])
