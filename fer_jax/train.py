"""python -m fer_jax.train: runs the command fer_jax.cli.train."""
import sys

from fer_jax.cli.train import main
from fer_jax.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
