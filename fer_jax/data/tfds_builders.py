"""TFDS builders: ``fer2013`` (the real data, from a manual download) and ``fer_synthetic``.

Importing this module registers both with TFDS. Importing it again, even under another
module name (a tool that imports the file by its path), keeps the first registration
instead of failing with "already registered".

``fer2013`` reads any form ``read_fer`` accepts from the TFDS manual folder
(``<data_dir>/downloads/manual/``, by default ``~/tensorflow_datasets/downloads/manual/``,
or ``--manual_dir`` / ``DownloadConfig(manual_dir=...)``) and splits it with
``make_splits(scheme="official")``. ``fer_synthetic`` draws the built-in synthetic faces.
Both write their examples in source order (``disable_shuffling``), so a split read back
holds the same rows, in the same order, as ``make_splits`` gives from the source.

Offline: preparing never touches the network. The builders force
``try_download_gcs=False`` whatever DownloadConfig is passed, and
``load_tfds_split`` constructs them directly (no registry or GCS look-up). Code that
goes through TFDS's own entry points must pass ``try_gcs=False`` as well::

    tfds.load("fer2013", data_dir=DATA_DIR, try_gcs=False, download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=MANUAL_DIR)})
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import shutil
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

from fer_jax.data.cache import source_signature
from fer_jax.data.readers import file_fingerprint, find_folder_root, read_fer
from fer_jax.data.source import MANUAL_NAMES
from fer_jax.data.splits import DataSplits, make_splits
from fer_jax.data.synthetic import GENERATOR_VERSION, make_synthetic
from fer_jax.data.types import CLASS_NAMES, IMAGE_SIZE, FerData
from fer_jax.errors import DataError, UserError

logger = logging.getLogger(__name__)

FER2013 = "fer2013"
FER_SYNTHETIC = "fer_synthetic"
SPLIT_NAMES = ("train", "validation", "test")

KAGGLE_URL = ("https://www.kaggle.com/c/"
              "challenges-in-representation-learning-facial-expression-recognition-challenge")

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FER2013 cannot be downloaded automatically. Get it from Kaggle: sign in, accept the rules of
the competition
  "Challenges in Representation Learning: Facial Expression Recognition Challenge"
at {KAGGLE_URL}/data and download its data; then put ONE of these into the manual folder
(`<data_dir>/downloads/manual/`, by default `~/tensorflow_datasets/downloads/manual/`,
or the folder given with `--manual_dir` / `DownloadConfig(manual_dir=...)`):
  - fer2013.csv (columns emotion,pixels,Usage; also accepted gzip-compressed as fer2013.csv.gz),
  - icml_face_data.csv (columns emotion, Usage, pixels),
  - train.csv (columns emotion,pixels: Training rows only; validation is then held out of them),
  - the image folders train/<emotion>/*.png and test/<emotion>/*.png, directly in the
    manual folder or inside a folder named fer2013/.
Extract zip archives first: the files inside are what is read."""

_CITATION = """\
@inproceedings{goodfellow2013challenges,
  title={Challenges in Representation Learning: A Report on Three Machine Learning Contests},
  author={Goodfellow, Ian J. and Erhan, Dumitru and Carrier, Pierre Luc and Courville, Aaron
          and Mirza, Mehdi and Hamner, Ben and Cukierski, Will and Tang, Yichuan and
          Thaler, David and Lee, Dong-Hyun and others},
  booktitle={Neural Information Processing (ICONIP 2013)},
  pages={117--124},
  year={2013}
}"""

_FER2013_DESCRIPTION = """\
FER2013: 48x48 grayscale faces, each labelled with one of 7 expressions (angry, disgust,
fear, happy, sad, surprise, neutral). Splits follow the competition: train = Training,
validation = PublicTest, test = PrivateTest (present only when the source has PrivateTest
rows). A source without PublicTest rows (train.csv) validates on a stratified hold-out of
Training; the dataset's metadata['split_description'] says which was used."""

_SYNTHETIC_DESCRIPTION = """\
SYNTHETIC DATA, NOT FER2013: procedurally drawn 48x48 grayscale faces carrying the 7
FER2013 expression labels, for trying the system only (pipelines, training loop, exports)
without the real data. A model trained or evaluated on it says nothing about real faces.
Splits come from the generator's usage column: train = Training, validation = PublicTest,
test = PrivateTest."""

# What each builder records in DatasetInfo.metadata (written to metadata.json).
_META_SOURCE = "source"
_META_FINGERPRINT = "source_fingerprint"
_META_SIGNATURE = "source_signature"
_META_SPLIT_USAGE = "split_usage"
_META_SPLIT_DESCRIPTION = "split_description"
_META_GENERATOR = "generator_version"


def find_manual_source(manual_dir: str | os.PathLike) -> pathlib.Path | None:
    """The FER2013 source in MANUAL_DIR (the first of manual_sources), or None."""
    sources = manual_sources(manual_dir)
    return sources[0] if sources else None


def manual_sources(manual_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Every accepted FER2013 source in MANUAL_DIR, in order of preference."""
    manual_dir = pathlib.Path(manual_dir)
    found = [manual_dir / name for name in MANUAL_NAMES if (manual_dir / name).exists()]
    # train/ and test/ image folders placed directly in the manual folder.
    if manual_dir.is_dir() and find_folder_root(manual_dir) == manual_dir:
        found.append(manual_dir)
    return found


def default_manual_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    """TFDS's manual folder when none is given: <data_dir>/downloads/manual."""
    return pathlib.Path(data_dir).expanduser() / "downloads" / "manual"


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo that never fetches pre-computed info from GCS (TFDS does so for a builder
    not prepared yet, in TFDS versions where GCS is enabled)."""

    def initialize_from_bucket(self) -> None:
        pass


class _FerBuilderMixin:
    """What both builders share: no GCS look-up, and FerData rows as examples."""

    def download_and_prepare(self, **kwargs) -> None:
        config = kwargs.get("download_config") or tfds.download.DownloadConfig()
        kwargs["download_config"] = dataclasses.replace(config, try_download_gcs=False)
        super().download_and_prepare(**kwargs)

    def _generators_for(self, splits: DataSplits) -> dict[str, Iterator]:
        """One example generator per split, and what each split is in the builder's metadata."""
        chosen = {"train": splits.train, "validation": splits.validation, "test": splits.test}
        present = {name: rows for name, rows in chosen.items() if rows is not None}
        # Every split of make_splits comes from one usage (Training, PublicTest, ...).
        self.info.metadata[_META_SPLIT_USAGE] = {name: str(rows.usage[0]) for name, rows in present.items()}
        self.info.metadata[_META_SPLIT_DESCRIPTION] = splits.description
        return {name: self._generate_examples(rows) for name, rows in present.items()}

    def _generate_examples(self, rows: FerData) -> Iterator[tuple[int, dict]]:
        # Keys are row positions: with disable_shuffling they are written in this order.
        for index in range(len(rows)):
            yield index, {"image": rows.images[index][..., np.newaxis], "label": int(rows.labels[index])}


def _is_registered_elsewhere(name: str) -> bool:
    """True when NAME is already a registered TFDS builder (a second import of this module).

    The first registration stays; a foreign builder of that name is reported, since then
    tfds.builder(NAME) is not ours (load_tfds_split still is).
    """
    try:
        existing = registered.imported_builder_cls(name)
    except registered.DatasetNotFoundError:
        return False
    if not getattr(existing, "FER_JAX_BUILDER", False):
        logger.warning("TFDS already has a dataset named %r (%s.%s); tfds.builder(%r) gives that one, "
                       "fer_jax's load_tfds_split still uses its own.", name, existing.__module__,
                       existing.__qualname__, name)
    return True


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
    })


class Fer2013(_FerBuilderMixin, tfds.core.GeneratorBasedBuilder,
              skip_registration=_is_registered_elsewhere(FER2013)):
    """FER2013 from a manually downloaded Kaggle file (see MANUAL_DOWNLOAD_INSTRUCTIONS)."""

    name = FER2013
    FER_JAX_BUILDER = True
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: reads fer2013.csv (plain or gzip), icml_face_data.csv, "
                 "train.csv or the train/test image folders; official splits.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self, description=_FER2013_DESCRIPTION, features=_features(),
            supervised_keys=("image", "label"), homepage=KAGGLE_URL, citation=_CITATION,
            disable_shuffling=True, metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        try:
            manual_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as err:  # TFDS: the manual folder is missing or empty
            raise UserError(f"{FER2013}: no FER2013 data found. {err}") from None
        sources = manual_sources(manual_dir)
        if not sources:
            found = ", ".join(sorted(entry.name for entry in manual_dir.iterdir())) or "nothing"
            raise UserError(f"{FER2013}: no FER2013 data in the manual folder {manual_dir} "
                            f"(it holds: {found}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
        source = sources[0]
        if len(sources) > 1:
            logger.warning("%s: the manual folder holds %s; reading %s only", FER2013,
                           ", ".join(path.name for path in sources), source.name)
        logger.info("%s: reading %s", FER2013, source)
        data = read_fer(source)
        self.info.metadata.update({_META_SOURCE: str(source), _META_FINGERPRINT: data.fingerprint,
                                   _META_SIGNATURE: source_signature(source)})
        return self._generators_for(make_splits(data, "official"))

    def prepared_is_stale(self, manual_dir: str | os.PathLike) -> bool:
        """Whether the prepared data no longer matches the source now in MANUAL_DIR.

        False when MANUAL_DIR holds no source (the prepared copy is all there is).
        """
        source = find_manual_source(manual_dir)
        stored = self.info.metadata
        if source is None or _META_FINGERPRINT not in stored:
            return False
        if stored.get(_META_SIGNATURE) == source_signature(source):
            return False  # same path, sizes and mtimes: no need to hash
        if source.is_file():
            return file_fingerprint(source) != stored[_META_FINGERPRINT]
        return True  # a folder whose files changed: read it again


@dataclasses.dataclass(eq=False)
class FerSyntheticConfig(tfds.core.BuilderConfig):
    """How many synthetic faces to draw, and from which seed."""

    num_examples: int = 12000
    seed: int = 0


def synthetic_config(num_examples: int, seed: int = 0) -> FerSyntheticConfig:
    """The fer_synthetic config drawing NUM_EXAMPLES faces from SEED (named n<N>_seed<S>)."""
    return FerSyntheticConfig(name=f"n{num_examples}_seed{seed}", num_examples=num_examples, seed=seed,
                              description=f"{num_examples:,} synthetic faces, seed {seed}.")


class FerSynthetic(_FerBuilderMixin, tfds.core.GeneratorBasedBuilder,
                   skip_registration=_is_registered_elsewhere(FER_SYNTHETIC)):
    """The built-in synthetic faces (fer_jax.data.synthetic): for trying the system only."""

    name = FER_SYNTHETIC
    FER_JAX_BUILDER = True
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: synthetic faces split 80/10/10 (stratified)."}
    BUILDER_CONFIGS = [synthetic_config(12000), synthetic_config(1200)]
    DEFAULT_CONFIG_NAME = "n12000_seed0"

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self, description=_SYNTHETIC_DESCRIPTION, features=_features(),
            supervised_keys=("image", "label"), disable_shuffling=True,
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # nothing to download
        config = self.builder_config
        data = make_synthetic(config.num_examples, seed=config.seed)
        self.info.metadata.update({_META_SOURCE: data.source, _META_FINGERPRINT: data.fingerprint,
                                   _META_GENERATOR: GENERATOR_VERSION})
        return self._generators_for(make_splits(data, "official"))

    def prepared_is_stale(self, manual_dir: str | os.PathLike) -> bool:
        """Whether the generator has changed since the data was prepared."""
        del manual_dir  # unused: the data is generated
        stored = self.info.metadata.get(_META_GENERATOR)
        return stored is not None and stored != GENERATOR_VERSION


_SYNTHETIC_CONFIG_NAME = re.compile(r"n(?P<num>[0-9]+)(?:_seed(?P<seed>[0-9]+))?")


def make_builder(name: str, *, data_dir: str | os.PathLike) -> Fer2013 | FerSynthetic:
    """The builder NAME names: "fer2013", "fer_synthetic" or "fer_synthetic/n<N>[_seed<S>]".

    Built from this module's classes, so it never consults TFDS's registry or GCS.
    """
    base, _, config_name = name.partition("/")
    data_dir = os.fspath(pathlib.Path(data_dir).expanduser())
    if base == FER2013 and not config_name:
        return Fer2013(data_dir=data_dir)
    if base == FER_SYNTHETIC:
        if not config_name or config_name in FerSynthetic.builder_configs:
            return FerSynthetic(data_dir=data_dir, config=config_name or None)
        match = _SYNTHETIC_CONFIG_NAME.fullmatch(config_name)
        if match:
            return FerSynthetic(data_dir=data_dir, config=synthetic_config(
                int(match["num"]), int(match["seed"] or 0)))
    raise UserError(f"unknown TFDS dataset {name!r}; expected {FER2013!r}, {FER_SYNTHETIC!r} "
                    f"or '{FER_SYNTHETIC}/n<N>[_seed<S>]' (e.g. '{FER_SYNTHETIC}/n1200_seed0')")


def prepare_tfds(name: str, *, data_dir: str | os.PathLike,
                 manual_dir: str | os.PathLike | None = None) -> Fer2013 | FerSynthetic:
    """Prepares NAME into DATA_DIR unless already there and current; returns its builder.

    Prepared data is reused; it is prepared again when its source has changed since (the
    manual file's content, or the synthetic generator's version).
    """
    builder = make_builder(name, data_dir=data_dir)
    effective_manual_dir = manual_dir if manual_dir is not None else default_manual_dir(data_dir)
    if builder.is_prepared() and builder.prepared_is_stale(effective_manual_dir):
        logger.warning("%s in %s no longer matches its source; preparing it again",
                       builder.info.full_name, builder.data_dir)
        shutil.rmtree(builder.data_dir)
        builder = make_builder(name, data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None, try_download_gcs=False)
    builder.download_and_prepare(download_config=download_config)
    return builder


def read_prepared_split(builder: tfds.core.DatasetBuilder, split: str) -> FerData:
    """SPLIT of a prepared builder as FerData, rows in the order they were written."""
    available = list(builder.info.splits.keys())
    if split not in available:
        raise UserError(f"{builder.info.full_name} has no {split!r} split; it has "
                        f"{', '.join(available)}")
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    images = np.asarray(arrays["image"], dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.asarray(arrays["label"], dtype=np.int32)
    metadata = builder.info.metadata or {}
    usage = metadata.get(_META_SPLIT_USAGE, {}).get(split)
    if usage is None:
        raise DataError(builder.data_dir, f"metadata.json does not say which rows the {split!r} split "
                                          "holds: prepare the dataset again (delete this folder)")
    return FerData(images=images, labels=labels, usage=np.full(len(labels), usage),
                   source=f"{builder.data_dir} [{split}]",
                   fingerprint=str(metadata.get(_META_FINGERPRINT, "")))


def load_tfds_split(name: str, split: str, *, data_dir: str | os.PathLike,
                    manual_dir: str | os.PathLike | None = None) -> FerData:
    """Prepares NAME into DATA_DIR if needed and reads SPLIT back (see prepare_tfds).

    NAME as in make_builder; SPLIT one of "train", "validation", "test". MANUAL_DIR
    defaults to <data_dir>/downloads/manual. The result's fingerprint is the source's, as
    read_fer gives it.
    """
    return read_prepared_split(prepare_tfds(name, data_dir=data_dir, manual_dir=manual_dir), split)
