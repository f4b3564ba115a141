"""python -m fer_jax.serve [--checkpoint DIR] [--host 127.0.0.1] [--port 8000] [--detector NAME] [--backend auto|jax|onnx]

A local web app: drop photos or turn on the webcam and see every face boxed with its
expression and the seven probabilities. Its JSON API: `POST /api/predict` with one image
(a multipart form field named `file`, or the raw request body) answers a JSON list of
per-face records, the same as `predict --json` prints ("file", "frame", "box",
"label", "probabilities", "detection_confidence"); `GET /health` answers 200 once the
model is loaded. It listens on 127.0.0.1 (this machine only) unless --host says otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from fer_jax.data.cache import default_cache_dir
from fer_jax.errors import UserError, run_cli
from fer_jax.faces.detectors import DEFAULT_DETECTOR, DETECTORS
from fer_jax.inference.expressions import ExpressionPredictor
from fer_jax.runtime import quiet_tensorflow
from fer_jax.serving.limits import MAX_PIXELS, MAX_UPLOAD_BYTES, Limits

BACKENDS = ("auto", "jax", "onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.serve", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None,
                        help="a run's workdir, a checkpoint folder, or a released model (default: release/final)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help=f"face detector (default: {DEFAULT_DETECTOR}: BlazeFace, then MTCNN where it finds none)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="run the model with JAX or onnxruntime; auto (default): a release's "
                             "shipped model.onnx when onnxruntime is installed, else JAX")
    parser.add_argument("--tta", action="store_true", help="average each face with its mirror image")
    parser.add_argument("--max-bytes", type=int, default=MAX_UPLOAD_BYTES,
                        help=f"largest upload accepted, in bytes (default: {MAX_UPLOAD_BYTES})")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"largest image accepted, in pixels (default: {MAX_PIXELS})")
    return parser


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache in the project's cache folder, unless one is set:
    a restarted server with the JAX backend reads its compiled model from disk."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(default_cache_dir() / "jax"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        import uvicorn
        from fer_jax.serving.app import PredictionService, create_app
    except ImportError as err:
        raise UserError(f"the web app needs its extra dependencies: pip install 'fer_jax[serve]' ({err})") from None
    quiet_tensorflow()
    use_compilation_cache()  # read when JAX is imported, i.e. only if the JAX backend is used

    started = time.perf_counter()
    # Eight faces a pass: a photo rarely holds more, and a smaller fixed batch is faster.
    predictor = ExpressionPredictor(args.checkpoint, batch_size=8, tta=args.tta, detector=args.detector,
                                    backend=args.backend)
    service = PredictionService(predictor, limits=Limits(args.max_bytes, args.max_pixels))
    warm = service.warm_up()
    print(f"model: {predictor.model_name} from {predictor.checkpoint}; detector {args.detector}, "
          f"backend {predictor.backend}; ready in {time.perf_counter() - started:.1f} s (warm-up {warm:.1f} s)",
          file=sys.stderr)
    app = create_app(service, model_info={"model": predictor.model_name, "checkpoint": str(predictor.checkpoint),
                                          "detector": args.detector, "backend": predictor.backend})
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
