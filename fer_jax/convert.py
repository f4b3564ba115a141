"""python -m fer_jax.convert: runs the command fer_jax.cli.convert."""
import sys

from fer_jax.cli.convert import main
from fer_jax.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
