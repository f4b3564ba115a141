"""python -m fer_jax.study: runs the command fer_jax.cli.study."""
import sys

from fer_jax.cli.study import main
from fer_jax.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
