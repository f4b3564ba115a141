"""Where the training data comes from: a given path, $FER2013_PATH, the TFDS manual folder,
or else the built-in synthetic set (and every output then says so)."""
from __future__ import annotations

import dataclasses
import os
import pathlib

from fer_jax.data.cache import load_fer_cached
from fer_jax.data.splits import DataSplits, make_splits
from fer_jax.data.synthetic import SYNTHETIC_NOTICE, make_synthetic
from fer_jax.data.types import FerData

ENV_VAR = "FER2013_PATH"
MANUAL_NAMES = ("fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv", "train.csv", "fer2013")


@dataclasses.dataclass(frozen=True)
class PreparedData:
    splits: DataSplits
    identity: dict  # name, source and content fingerprint: stored with every checkpoint
    synthetic: bool
    notice: str  # what the user must be told about this data ("" when nothing)


def tfds_manual_dir() -> pathlib.Path:
    root = os.environ.get("TFDS_DATA_DIR", str(pathlib.Path.home() / "tensorflow_datasets"))
    return pathlib.Path(root) / "downloads" / "manual"


def locate_data(path: str | None = None) -> str | None:
    """The FER2013 source to use, or None when there is none (then: synthetic)."""
    if path:
        return path
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    manual = tfds_manual_dir()
    for name in MANUAL_NAMES:
        if (manual / name).exists():
            return str(manual / name)
    return None


def prepare_data(data_config, path: str | None = None, *, skip_bad_rows: bool = False) -> PreparedData:
    """Reads (through the parsed cache) and splits the data PATH points to (else the usual
    places, else synthetic) as the config's data.* keys say; SKIP_BAD_ROWS leaves the
    file's unreadable rows out (listed) instead of stopping at the first."""
    source = locate_data(path)
    if source is None:
        data: FerData = make_synthetic(data_config.synthetic_size, seed=data_config.split_seed)
        name, notice = "fer_synthetic", SYNTHETIC_NOTICE
    else:
        data = load_fer_cached(source, skip_bad_rows=skip_bad_rows)
        name, notice = "fer2013", ""
    splits = make_splits(data, data_config.split_scheme, val_fraction=data_config.val_fraction,
                         seed=data_config.split_seed)
    identity = {"name": name, "source": data.source, "fingerprint": data.fingerprint,
                "split_scheme": data_config.split_scheme}
    return PreparedData(splits=splits, identity=identity, synthetic=source is None, notice=notice)
