"""The packages an install maps from the checkout's own folders, found in a bare checkout too.

pyproject's package-dir installs experiments/ as fer_jax.experiments and release/ as
fer_jax.released. Run from a checkout that was never installed (PYTHONPATH=., as on a
machine without the dependencies to install it), those names do not exist; the
folders beside the package do, and are imported under the same names.

The released models (release/NAME) are looked up here, once, for every command and
for checkpoint paths that name one.
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType

from fer_jax.errors import UserError

CHECKOUT_FOLDERS = {"fer_jax.experiments": "experiments", "fer_jax.released": "release"}
# The released model that evaluate, visualize, predict and ExpressionPredictor() use by default.
DEFAULT_RELEASE = "final"


def import_mapped(name: str) -> ModuleType:
    """The package NAME (a key of CHECKOUT_FOLDERS), installed or from the checkout."""
    folder_name = CHECKOUT_FOLDERS[name]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
    folder = pathlib.Path(__file__).resolve().parent.parent / folder_name
    init = folder / "__init__.py"
    if not init.is_file():
        raise UserError(f"{name} is not installed and there is no {folder_name}/ beside the "
                        f"fer_jax package ({folder}); install fer_jax (pip install -e .)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def mapped_folder(name: str) -> pathlib.Path:
    """The folder the package NAME (a key of CHECKOUT_FOLDERS) is read from."""
    return pathlib.Path(import_mapped(name).__file__).parent


def release_root() -> pathlib.Path:
    """release/ of the checkout, installed as the package fer_jax.released."""
    return mapped_folder("fer_jax.released")


def released_checkpoint(name: str = DEFAULT_RELEASE) -> pathlib.Path:
    """The released model NAME's folder; UserError when there is none."""
    path = release_root() / name
    if not (path / "variables").is_dir():
        raise UserError(f"no --checkpoint given and there is no released model at {path}; "
                        "pass --checkpoint RUN_WORKDIR")
    return path


def installed_release(given: pathlib.Path) -> pathlib.Path | None:
    """The installed folder of a path `release/NAME` (a released model named from outside
    a checkout), or None when GIVEN is no such path or no such model is installed."""
    if len(given.parts) != 2 or given.parts[0] != "release":
        return None
    installed = release_root() / given.parts[1]
    return installed if installed.is_dir() else None
