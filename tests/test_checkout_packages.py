"""experiments/ and release/ are found from a checkout that was never installed, too."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

from fer_jax import checkout_packages
from fer_jax.errors import UserError

CHECKOUT = pathlib.Path(__file__).resolve().parent.parent


def test_a_bare_checkout_finds_its_experiments_and_releases(tmp_path):
    # A fresh interpreter without the install's finder, the checkout on sys.path only:
    # what `PYTHONPATH=. python -m fer_jax.train` sees on a machine where nothing is installed.
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, {str(CHECKOUT)!r})
        assert importlib.util.find_spec("fer_jax.experiments") is None, "not a bare checkout"
        from fer_jax.config import load_experiment
        from fer_jax.checkout_packages import release_root
        config = load_experiment("fast_15min")  # imports fer_jax.experiments.fast_5min itself
        print(tuple(config.model_kwargs.widths), release_root())
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == str(CHECKOUT / "release")
    assert "(32, 64, 128, 256)" in result.stdout


def test_a_missing_folder_is_a_user_error(monkeypatch):
    monkeypatch.setitem(checkout_packages.CHECKOUT_FOLDERS, "fer_jax.no_such_package", "no_such_folder")
    with pytest.raises(UserError, match="no_such_folder/ beside the fer_jax package"):
        checkout_packages.import_mapped("fer_jax.no_such_package")
