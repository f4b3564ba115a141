"""python -m fer_jax.serve: runs the command fer_jax.cli.serve."""
import sys

from fer_jax.cli.serve import main
from fer_jax.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
