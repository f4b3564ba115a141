"""The fer2013 and fer_synthetic TFDS builders: same rows as read_fer + make_splits, offline."""
from __future__ import annotations

import importlib.util
import shutil
import socket
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
from tensorflow_datasets.core.utils import gcs_utils  # noqa: E402

from conftest import generated_fer_arrays, write_kaggle_csv  # noqa: E402
from fer_jax.data import tfds_builders  # noqa: E402
from fer_jax.data.readers import read_fer  # noqa: E402
from fer_jax.data.splits import make_splits  # noqa: E402
from fer_jax.data.synthetic import make_synthetic  # noqa: E402
from fer_jax.data.types import CLASS_NAMES, PRIVATE_TEST, PUBLIC_TEST, TRAINING  # noqa: E402
from fer_jax.errors import UserError  # noqa: E402


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes every socket connection and GCS look-up fail, and records each attempt.

    GCS is switched on first, as in TFDS versions that have it enabled, so that only the
    builders' own safeguards keep it from being consulted.
    """
    attempts: list[str] = []

    def refuse_connect(sock, address, *args, **kwargs):
        attempts.append(f"socket.connect {address!r}")
        raise OSError("network access is forbidden in this test")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(f"getaddrinfo {host!r}")
        raise OSError("network access is forbidden in this test")

    def refuse_gcs(path):
        attempts.append(f"gcs {path}")
        return False

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(gcs_utils, "_is_gcs_disabled", False)
    monkeypatch.setattr(gcs_utils, "exists", refuse_gcs)
    return attempts


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory, fer_sample_path):
    """The shared sample, prepared once as fer2013 with the network forbidden."""
    root = tmp_path_factory.mktemp("tfds_fer2013")
    manual_dir = root / "manual"
    manual_dir.mkdir()
    shutil.copy(fer_sample_path, manual_dir / "fer2013.csv.gz")
    data_dir = root / "data"
    with pytest.MonkeyPatch.context() as monkeypatch:
        attempts = _forbid_network(monkeypatch)
        builder = tfds_builders.Fer2013(data_dir=str(data_dir))
        # A default DownloadConfig asks TFDS to try GCS: the builder must ignore that.
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return {"data_dir": data_dir, "manual_dir": manual_dir, "builder": builder,
            "network_attempts": attempts, "source": manual_dir / "fer2013.csv.gz"}


def _assert_same_rows(actual, expected):
    np.testing.assert_array_equal(actual.images, expected.images)
    np.testing.assert_array_equal(actual.labels, expected.labels)
    np.testing.assert_array_equal(actual.usage, expected.usage)
    assert actual.images.dtype == np.uint8 and actual.images.shape[1:] == (48, 48)


def test_preparing_fer2013_makes_no_network_access(sample_build):
    assert sample_build["builder"].is_prepared()
    assert sample_build["network_attempts"] == []


def test_fer2013_splits_equal_read_fer_and_official_make_splits(sample_build):
    expected = make_splits(read_fer(sample_build["source"]), "official")
    builder = sample_build["builder"]
    assert {name: info.num_examples for name, info in builder.info.splits.items()} == {
        "train": len(expected.train), "validation": len(expected.validation)}
    for split, rows in (("train", expected.train), ("validation", expected.validation)):
        loaded = tfds_builders.load_tfds_split("fer2013", split, data_dir=sample_build["data_dir"],
                                               manual_dir=sample_build["manual_dir"])
        _assert_same_rows(loaded, rows)
        assert loaded.fingerprint == rows.fingerprint
    assert builder.info.metadata["split_description"] == expected.description


def test_fer2013_without_private_test_rows_has_no_test_split(sample_build):
    with pytest.raises(UserError, match="has no 'test' split; it has train, validation"):
        tfds_builders.load_tfds_split("fer2013", "test", data_dir=sample_build["data_dir"],
                                      manual_dir=sample_build["manual_dir"])


def test_fer2013_info_describes_the_features_and_version(sample_build):
    info = sample_build["builder"].info
    assert info.features["image"].shape == (48, 48, 1)
    assert info.features["image"].np_dtype == np.uint8
    assert info.features["label"].names == list(CLASS_NAMES)
    assert str(info.version) == "1.0.0" and "1.0.0" in tfds_builders.Fer2013.RELEASE_NOTES
    instructions = tfds_builders.Fer2013.MANUAL_DOWNLOAD_INSTRUCTIONS
    for needed in ("kaggle.com", "Facial Expression Recognition Challenge", "fer2013.csv",
                   "icml_face_data.csv", "~/tensorflow_datasets/downloads/manual/", "--manual_dir"):
        assert needed in instructions


def test_builders_are_registered_with_tfds(sample_build):
    builder = tfds.builder("fer2013", data_dir=str(sample_build["data_dir"]), try_gcs=False)
    assert isinstance(builder, tfds_builders.Fer2013)
    prepared = sample_build["builder"].info.splits["train"].num_examples
    assert builder.info.splits["train"].num_examples == prepared
    assert tfds.builder_cls("fer_synthetic") is tfds_builders.FerSynthetic


def test_importing_the_module_again_keeps_the_first_registration(monkeypatch):
    # `tfds build path/to/tfds_builders.py` imports the file under another module name.
    spec = importlib.util.spec_from_file_location("fer_jax_tfds_builders_again", tfds_builders.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert module.Fer2013 is not tfds_builders.Fer2013
    assert tfds.builder_cls("fer2013") is tfds_builders.Fer2013
    assert tfds.builder_cls("fer_synthetic") is tfds_builders.FerSynthetic


def test_private_test_rows_become_the_test_split(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    images, labels, usage = generated_fer_arrays(n_per_class_split=2, seed=5)
    source = write_kaggle_csv(manual_dir / "fer2013.csv", images, labels, usage)
    expected = make_splits(read_fer(source), "official")
    loaded = tfds_builders.load_tfds_split("fer2013", "test", data_dir=tmp_path / "data",
                                           manual_dir=manual_dir)
    _assert_same_rows(loaded, expected.test)
    assert set(loaded.usage) == {PRIVATE_TEST}


def test_default_manual_dir_is_under_data_dir(tmp_path):
    manual_dir = tmp_path / "data" / "downloads" / "manual"
    manual_dir.mkdir(parents=True)
    images, labels, usage = generated_fer_arrays(n_per_class_split=1, seed=6)
    source = write_kaggle_csv(manual_dir / "fer2013.csv", images, labels, usage)
    loaded = tfds_builders.load_tfds_split("fer2013", "validation", data_dir=tmp_path / "data")
    _assert_same_rows(loaded, make_splits(read_fer(source), "official").validation)


def test_missing_manual_dir_names_where_to_put_the_file(tmp_path):
    missing = tmp_path / "no_such_manual_dir"
    with pytest.raises(UserError) as caught:
        tfds_builders.prepare_tfds("fer2013", data_dir=tmp_path / "data", manual_dir=missing)
    message = str(caught.value)
    assert str(missing) in message and "fer2013.csv" in message and "kaggle.com" in message
    assert not tfds_builders.Fer2013(data_dir=str(tmp_path / "data")).is_prepared()


def test_manual_dir_without_fer_data_lists_what_it_holds(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    (manual_dir / "fer2013.zip").write_bytes(b"PK\x03\x04")
    expected = r"no FER2013 data in the manual folder .*manual \(it holds: fer2013\.zip\)"
    with pytest.raises(UserError, match=expected):
        tfds_builders.prepare_tfds("fer2013", data_dir=tmp_path / "data", manual_dir=manual_dir)


def test_find_manual_source_accepts_each_published_form(tmp_path):
    assert tfds_builders.find_manual_source(tmp_path) is None
    (tmp_path / "train" / "happy").mkdir(parents=True)
    assert tfds_builders.find_manual_source(tmp_path) == tmp_path  # image folders in place
    (tmp_path / "icml_face_data.csv").write_text("emotion, Usage, pixels\n")
    assert tfds_builders.find_manual_source(tmp_path) == tmp_path / "icml_face_data.csv"
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n")
    assert tfds_builders.manual_sources(tmp_path) == [
        tmp_path / "fer2013.csv", tmp_path / "icml_face_data.csv", tmp_path]
    assert tfds_builders.find_manual_source(tmp_path) == tmp_path / "fer2013.csv"


def test_changed_manual_file_is_prepared_again(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    source = manual_dir / "fer2013.csv"
    write_kaggle_csv(source, *generated_fer_arrays(n_per_class_split=1, seed=1))
    first = tfds_builders.load_tfds_split("fer2013", "train", data_dir=tmp_path / "data",
                                          manual_dir=manual_dir)
    write_kaggle_csv(source, *generated_fer_arrays(n_per_class_split=1, seed=2))
    second = tfds_builders.load_tfds_split("fer2013", "train", data_dir=tmp_path / "data",
                                           manual_dir=manual_dir)
    assert not np.array_equal(first.images, second.images)
    _assert_same_rows(second, make_splits(read_fer(source), "official").train)
    assert second.fingerprint == read_fer(source).fingerprint


def test_fer_synthetic_small_config_matches_make_synthetic(tmp_path, monkeypatch):
    attempts = _forbid_network(monkeypatch)
    builder = tfds_builders.prepare_tfds("fer_synthetic/n140_seed3", data_dir=tmp_path)
    expected = make_splits(make_synthetic(140, seed=3), "official")
    counts = {name: info.num_examples for name, info in builder.info.splits.items()}
    assert counts == {"train": len(expected.train), "validation": len(expected.validation),
                      "test": len(expected.test)}
    for split, rows, usage in (("train", expected.train, TRAINING),
                               ("validation", expected.validation, PUBLIC_TEST),
                               ("test", expected.test, PRIVATE_TEST)):
        loaded = tfds_builders.read_prepared_split(builder, split)
        _assert_same_rows(loaded, rows)
        assert set(loaded.usage) == {usage}
    assert attempts == []
    assert builder.info.description.startswith("SYNTHETIC DATA, NOT FER2013")
    assert "for trying the system only" in builder.info.description


def test_fer_synthetic_default_config_is_12000_faces():
    builder_configs = tfds_builders.FerSynthetic.builder_configs
    default = builder_configs[tfds_builders.FerSynthetic.DEFAULT_CONFIG_NAME]
    assert (default.num_examples, default.seed) == (12000, 0)


@pytest.mark.parametrize("name", ["mnist", "fer2013/extra", "fer_synthetic/huge"])
def test_unknown_dataset_name_is_a_user_error(tmp_path, name):
    with pytest.raises(UserError, match="unknown TFDS dataset"):
        tfds_builders.make_builder(name, data_dir=tmp_path)
