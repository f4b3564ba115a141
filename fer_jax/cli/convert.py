"""python -m fer_jax.convert PATH --arch resnet18 --out DIR: torchvision weights -> an Orbax checkpoint."""
from __future__ import annotations

import argparse
import sys

from fer_jax.errors import run_cli
from fer_jax.transfer import convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.convert",
        description="Convert a torchvision ImageNet state dict (torch.save file, e.g. "
                    "resnet18-f37072fd.pth) to this project's Flax layout and write it as an "
                    "Orbax checkpoint. PyTorch is not needed. Train from it with "
                    "--set init_from=DIR (or give the .pth file there directly).")
    parser.add_argument("path", help="the .pth state dict")
    parser.add_argument("--arch", required=True, choices=convert.ARCHITECTURES,
                        help="the architecture the weights are for")
    parser.add_argument("--out", required=True, help="new (or empty) folder to write")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    variables = convert.read_pretrained(args.path, args.arch)
    out_dir = convert.save_converted(variables, args.out, args.arch, args.path)
    count = convert.num_values(variables)
    print(f"{args.arch}: {count / 1e6:.1f}M values from {args.path} written to {out_dir}")
    print(f"train from it with: --set init_from={out_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
