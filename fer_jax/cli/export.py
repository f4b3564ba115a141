"""python -m fer_jax.export --checkpoint DIR --format onnx --out FILE [--check-data PATH]

Writes a checkpoint as one ONNX model: uint8 (N, 48, 48) grayscale faces framed as
FER2013 in (input "faces"), float32 (N, 7) probabilities out (output "probabilities",
columns angry, disgust, fear, happy, sad, surprise, neutral); the normalization and the
softmax are inside. The file is checked against the Flax model with onnxruntime on 512
faces (FER2013's when --check-data is given, else generated ones): the largest
difference of a probability and whether every argmax agrees are printed, and a
difference above 1e-4 or any other argmax is an error.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from fer_jax.data.readers import read_fer
from fer_jax.errors import UserError, run_cli
from fer_jax.inference.loading import load_model
from fer_jax.inference.onnx_check import CHECKED_FACES, check_onnx
from fer_jax.runtime import quiet_tensorflow

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.export", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None,
                        help="a run's workdir, a checkpoint folder, or a released model (default: release/final)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="the file format (default: onnx)")
    parser.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    parser.add_argument("--check-data", default=None,
                        help="a FER2013 file whose first 512 faces check the export (default: generated faces)")
    return parser


def check_faces(data: str | None) -> np.ndarray:
    if data is None:
        return np.random.default_rng(0).integers(0, 256, (CHECKED_FACES, 48, 48), dtype=np.uint8)
    return read_fer(data).images[:CHECKED_FACES]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    try:
        from fer_jax.onnx_model.export import export_onnx, write_onnx
    except ImportError as err:
        raise UserError(f"the ONNX export needs its extra dependencies: pip install 'fer_jax[onnx]' ({err})") from None

    loaded = load_model(args.checkpoint)
    out = pathlib.Path(args.out)
    if out.parent and not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    model = export_onnx(loaded)
    check = check_onnx(loaded, model.SerializeToString(), check_faces(args.check_data))
    print(check.summary(), file=sys.stderr)
    if not check.passed:
        raise UserError(f"the ONNX model differs from the Flax model ({check.summary()}): not written")
    try:
        digest = write_onnx(model, out)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write: {err.strerror or err}") from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), sha256 {digest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
