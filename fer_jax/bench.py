"""python -m fer_jax.bench: runs the command fer_jax.cli.bench."""
import sys

from fer_jax.cli.bench import main
from fer_jax.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
