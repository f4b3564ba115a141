"""python -m fer_jax.release: runs the command fer_jax.cli.release."""
import sys

from fer_jax.cli.release import main
from fer_jax.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
