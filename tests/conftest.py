"""Shared fixtures: the real FER2013 files from ../shared when present, else generated ones."""
from __future__ import annotations

import atexit
import gzip
import os
import pathlib
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
import pytest

# Eight CPU devices in the test process, so that the multi-device tests run here on meshes
# of 1, 2 and 8 of them instead of in new interpreters; a run in this process uses the
# devices it asks for (RunOptions.cpu_devices; the auto count by default). JAX's own
# setting, not XLA_FLAGS: the processes tests start get the count they or their command ask for.
jax.config.update("jax_num_cpu_devices", 8)

# Many tests compile the same computations (a small CNN's train and eval steps at the same
# shapes, in runs of their own): XLA's persistent cache, in a folder of this run's own,
# compiles each once per run. A cache folder the caller set is kept.
if not jax.config.jax_compilation_cache_dir:
    _XLA_CACHE = tempfile.mkdtemp(prefix="fer_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_FER_DIR = pathlib.Path(
    os.environ.get("FER_JAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "fer2013"))
SHARED_SAMPLE = SHARED_FER_DIR / "fer2013_sample.csv.gz"
SHARED_PUBLIC = SHARED_FER_DIR / "fer2013_public.csv.gz"

# TensorFlow must never grab memory or threads that tests do not ask for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The caller's environment must not change what a test does: W&B settings (WANDB_MODE
# wins over the command's --wandb flag) and the data-set path the data source reads.
# Cleared here, before any fixture runs, so session fixtures and subprocesses see the
# same; a test that needs W&B sets WANDB_MODE itself.
for _name in list(os.environ):
    if _name.startswith("WANDB_") or _name == "FER2013_PATH":
        del os.environ[_name]
os.environ["WANDB_MODE"] = "disabled"


def write_kaggle_csv(path: pathlib.Path, images: np.ndarray, labels: np.ndarray,
                     usage: np.ndarray) -> pathlib.Path:
    """Writes rows in Kaggle's fer2013.csv format (gzip when the name ends in .gz)."""
    lines = ["emotion,pixels,Usage"]
    for image, label, split in zip(images, labels, usage):
        lines.append(f"{int(label)},{' '.join(map(str, image.reshape(-1).tolist()))},{split}")
    text = "\n".join(lines) + "\n"
    path = pathlib.Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def generated_fer_arrays(n_per_class_split: int = 6, seed: int = 0):
    """Random uint8 faces covering every class in Training, PublicTest and PrivateTest."""
    rng = np.random.default_rng(seed)
    labels, usage = [], []
    for split in ("Training", "PublicTest", "PrivateTest"):
        for label in range(7):
            labels += [label] * n_per_class_split
            usage += [split] * n_per_class_split
    labels = np.array(labels, dtype=np.int32)
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    return images, labels, np.array(usage)


# The shared sample's shape: 1,152 Training and 303 PublicTest rows, no PrivateTest.
SAMPLE_SPLIT_SIZES = (1152, 303)


def generated_sample(path: pathlib.Path) -> pathlib.Path:
    """A stand-in for the shared sample when ../shared is absent: the same size and splits,
    with learnable synthetic faces (so training tests still learn) in FER's proportions."""
    from fer_jax.data.synthetic import make_synthetic
    n = sum(SAMPLE_SPLIT_SIZES)
    data = make_synthetic(n, seed=0, usage_fractions=(SAMPLE_SPLIT_SIZES[0] / n, SAMPLE_SPLIT_SIZES[1] / n, 0.0))
    return write_kaggle_csv(path, data.images, data.labels, data.usage)


@pytest.fixture(scope="session")
def fer_sample_path(tmp_path_factory) -> pathlib.Path:
    """The shared stratified sample, or a generated file of the same format and shape."""
    if SHARED_SAMPLE.exists():
        return SHARED_SAMPLE
    return generated_sample(tmp_path_factory.mktemp("fer") / "fer2013_sample.csv.gz")


@pytest.fixture(scope="session")
def fer_public_path() -> pathlib.Path:
    """The full shared Training + PublicTest file; tests that need it skip without it."""
    if not SHARED_PUBLIC.exists():
        pytest.skip(f"{SHARED_PUBLIC} is not present")
    return SHARED_PUBLIC


def tiny_checkpoint(tmp_path_factory, data_path, experiment: str, model_kwargs: dict,
                    random_crop: int = 0, compute_dtype: str = "float32") -> pathlib.Path:
    """A run of two training steps, trained once per session (test_visualize.py and test_ensemble.py share them);
    random_crop > 0: on random crops of that size (the model built for them)."""
    from fer_jax.config import load_experiment
    from fer_jax.data.source import prepare_data
    from fer_jax.engine.run_options import RunOptions
    from fer_jax.engine.trainer import train_and_evaluate

    suffix = (f"_crop{random_crop}" if random_crop else "") + ("" if compute_dtype == "float32" else f"_{compute_dtype}")
    workdir = tmp_path_factory.getbasetemp() / f"fer_jax_tiny_{experiment}{suffix}"
    if not (workdir / "summary.json").exists():
        config = load_experiment(experiment)
        config.max_train_steps = 2
        config.batch_size = 32
        config.model_kwargs = ml_collections.ConfigDict(model_kwargs)
        config.augment.random_crop = random_crop
        config.compute_dtype = compute_dtype
        train_and_evaluate(config, workdir, prepared=prepare_data(config.data, str(data_path)),
                           options=RunOptions(wandb_mode="disabled", progress=False))
    return workdir


@pytest.fixture(scope="session")
def cbam_run(tmp_path_factory, fer_sample_path):
    return tiny_checkpoint(tmp_path_factory, fer_sample_path, "cbam", {"widths": (8, 16, 16), "dense_width": 32})


@pytest.fixture(scope="session")
def simple_run(tmp_path_factory, fer_sample_path):
    return tiny_checkpoint(tmp_path_factory, fer_sample_path, "simple_cnn_v1",
                           {"widths": (8, 16), "dense_width": 32})
