"""An ensemble described by a JSON file: the released one is release/ensemble.json.

The file names its members (released models' folders, relative to the file's own
folder), one averaging weight per member, the test-time augmentation each member's
probabilities are taken with, and how the weights were chosen:

    {"members": ["final", "cbam"], "weights": [1, 1], "tta": "flip_crops",
     "selection": "equal: no selection", "note": "...", "measured": {...}}

`note` and `measured` (the figure the command printed, with its command and data) are
free-form records; every other key is checked, and a bad file is one line naming it.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import pathlib

from fer_jax.checkout_packages import release_root
from fer_jax.errors import UserError
from fer_jax.data.tta import TTA_MODES

ENSEMBLE_FILE = "ensemble.json"
REQUIRED_KEYS = ("members", "weights", "tta", "selection")
RECORD_KEYS = ("note", "measured")
# A description of a few members; anything larger is not one.
MAX_FILE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class EnsembleSpec:
    """A checked ensemble file: member names as written, their folders, weights, TTA and
    how the weights were chosen; `record` is the whole file as read."""

    path: pathlib.Path
    names: tuple[str, ...]
    checkpoints: tuple[pathlib.Path, ...]
    weights: tuple[float, ...]
    tta: str
    selection: str
    record: dict


def released_ensemble_path() -> pathlib.Path:
    """release/ensemble.json of the checkout or of the installed package."""
    return release_root() / ENSEMBLE_FILE


def _read_json(path: pathlib.Path) -> dict:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"{path}: {path.stat().st_size:,} bytes is too large for an ensemble file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such ensemble file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the ensemble file: {getattr(err, 'strerror', None) or err}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object with {', '.join(REQUIRED_KEYS)}")
    return record


def _member_folder(path: pathlib.Path, name) -> pathlib.Path:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{path}: members: each member is a folder name (a string), got {name!r}")
    relative = pathlib.PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise UserError(f"{path}: members: {name!r} must be a folder inside {path.parent} (no absolute "
                        "path, no '..')")
    folder = path.parent / relative
    if not (folder / "variables").is_dir():
        raise UserError(f"{path}: members: {name!r} is not a released model ({folder} has no variables/)")
    return folder


def _weights(path: pathlib.Path, weights, count: int) -> tuple[float, ...]:
    if (not isinstance(weights, list) or len(weights) != count
            or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights)):
        raise UserError(f"{path}: weights: expected a list of {count} numbers, one per member, got {weights!r}")
    if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
        raise UserError(f"{path}: weights must be non-negative with a positive sum, got {weights!r}")
    return tuple(float(w) for w in weights)


def read_ensemble_file(path: str | pathlib.Path | None = None) -> EnsembleSpec:
    """The checked ensemble file PATH (default: release/ensemble.json); UserError naming
    the file and the fault for anything wrong with it."""
    path = pathlib.Path(path) if path is not None else released_ensemble_path()
    record = _read_json(path)
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)} (an ensemble file has {', '.join(REQUIRED_KEYS)})")
    unknown = sorted(set(record) - set(REQUIRED_KEYS) - set(RECORD_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown keys {', '.join(unknown)} (known: "
                        f"{', '.join(REQUIRED_KEYS + RECORD_KEYS)})")
    members = record["members"]
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: members: expected a non-empty list of folder names, got {members!r}")
    if len(set(map(str, members))) != len(members):
        raise UserError(f"{path}: members: {members!r} names a member twice")
    folders = tuple(_member_folder(path, m) for m in members)
    weights = _weights(path, record["weights"], len(members))
    if record["tta"] not in TTA_MODES:
        raise UserError(f"{path}: tta: {record['tta']!r} is not one of {', '.join(TTA_MODES)}")
    selection = record["selection"]
    if not isinstance(selection, str) or not selection.strip():
        raise UserError(f"{path}: selection: say how the weights were chosen (a non-empty string)")
    return EnsembleSpec(path, tuple(members), folders, weights, record["tta"], selection, record)
