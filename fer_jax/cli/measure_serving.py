"""python -m fer_jax.cli.measure_serving [--detector NAME] [--backend jax|onnx] [--requests N] [--concurrency C]

Measures the web app on this machine: a real uvicorn server on 127.0.0.1 (a free port)
answers a fixed number of POST /api/predict requests of one 640 x 480 single-face photo
(scikit-image's astronaut, enlarged and cropped), C at a time; prints requests/s and the
latency percentiles, then the webcam path's frames/s (one request at a time, as the page
sends them) and the end-to-end frames/s of detection to labels in-process. Stops by itself.
"""
from __future__ import annotations

import argparse
import io
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from fer_jax.inference.expressions import ExpressionPredictor


def frame_640x480() -> bytes:
    from skimage import data
    big = Image.fromarray(data.astronaut()).resize((640, 640), Image.Resampling.BILINEAR).crop((0, 0, 640, 480))
    out = io.BytesIO()
    big.save(out, format="JPEG", quality=90)
    return out.getvalue()


def percentiles(latencies: list[float]) -> str:
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.cli.measure_serving")
    parser.add_argument("--detector", default="blazeface")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    import httpx
    import uvicorn

    from fer_jax.serving.app import PredictionService, create_app

    predictor = ExpressionPredictor(None, batch_size=8, detector=args.detector, backend=args.backend)
    service = PredictionService(predictor)
    service.warm_up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    body = frame_640x480()
    url = f"http://127.0.0.1:{port}/api/predict"
    with httpx.Client(timeout=60) as http:
        labels = {f["label"] for f in http.post(url, content=body).json()}

        def one(_):
            started = time.perf_counter()
            answer = http.post(url, content=body)
            assert answer.status_code == 200 and len(answer.json()) == 1
            return time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - started
        print(f"API, {args.detector}/{args.backend}: {args.requests} requests, {args.concurrency} at a time: "
              f"{args.requests / elapsed:.1f} requests/s, {percentiles(latencies)}; labels {sorted(labels)}")
        sequential = [one(i) for i in range(min(50, args.requests))]
        print(f"webcam path (one request at a time): {len(sequential) / sum(sequential):.1f} frames/s, "
              f"{percentiles(sequential)}")
    server.should_exit = True
    thread.join()
    pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < 5:
        predictor.predict_image(pixels)
        count += 1
    print(f"in-process detection to labels: {count / (time.perf_counter() - started):.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
