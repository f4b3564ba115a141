"""How often a 2x2 max-pool window after a ReLU holds a tied positive maximum on real faces.

A tie decides where the window's gradient goes (`fer_jax.models.layers.max_pool2` gives it
all to the first maximum, as PyTorch does), so its frequency says whether the tie rule can
change training at all (BUILD_NOTES, "Max-pool as reshape + max").

    python benchmarks/pool_ties.py FER2013_FILE [FACES]

Reads the first FACES faces (default 512), standardises them, applies one random 5x5
convolution of 32 filters (seed 0, 'SAME') and a ReLU, as a first layer does at
initialisation, and counts the windows.
"""
import sys

import jax
import numpy as np

from fer_jax.data.normalization import standardize, to_unit_scale
from fer_jax.data.readers import read_fer
from fer_jax.errors import UserError, run_cli


def windows(array: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N * H/2 * W/2 * C, 4): each 2x2 stride-2 window's four values."""
    n, h, w, c = array.shape
    return (array.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
            .reshape(-1, 4))


def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        raise UserError("usage: python benchmarks/pool_ties.py FER2013_FILE [FACES]")
    path, faces = argv[0], int(argv[1]) if len(argv) == 2 else 512
    pixels = np.asarray(read_fer(path).images[:faces], np.float32)[..., None]
    constant = windows(pixels)
    print(f"{len(pixels)} faces: {np.mean(constant.max(1) == constant.min(1)):.2%} of the "
          f"pixels' 2x2 windows are constant")
    x = to_unit_scale(pixels)
    x = standardize(x, x.mean(), x.std())
    kernel = jax.random.normal(jax.random.key(0), (5, 5, 1, 32)) * 0.2
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
    after = windows(np.asarray(y))
    top = after.max(1)
    tied = (after == top[:, None]).sum(1) > 1
    positive = top > 0
    print(f"after a random 5x5 convolution and a ReLU: {positive.mean():.2%} of the windows "
          f"have a positive maximum, and {tied[positive].mean():.2%} of those are tied")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
