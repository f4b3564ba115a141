"""ONNX export: the jaxpr-to-ONNX converter, the released models' files, the onnx backend."""
from __future__ import annotations

import hashlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_checkpoint
from fer_jax.inference.loading import load_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fer_jax.onnx_model.convert import UnsupportedPrimitive, to_onnx  # noqa: E402
from fer_jax.onnx_model.export import export_onnx  # noqa: E402
from fer_jax.onnx_model.runtime import OnnxClassifier  # noqa: E402

RELEASE = pathlib.Path(__file__).resolve().parents[1] / "release"


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_converter_keeps_the_batch_axis_free_and_matches_jax():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 4)).astype(np.float32)
    dense = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)

    def fn(x):
        y = jax.lax.conv_general_dilated(x[..., None].astype(jnp.float32) / 255.0, kernel, (2, 2),
                                         ((1, 1), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.nn.relu(y).mean(axis=(1, 2))
        return jax.nn.softmax(jnp.concatenate([y @ dense, jax.nn.sigmoid(y.max(axis=1, keepdims=True))], axis=1))

    model = to_onnx(fn, jax.ShapeDtypeStruct((1, 9, 8), jnp.uint8))
    for batch in (1, 5):
        x = np.random.default_rng(batch).integers(0, 256, (batch, 9, 8), dtype=np.uint8)
        np.testing.assert_allclose(run(model, x), np.asarray(fn(x)), atol=1e-6)


def test_an_unknown_primitive_is_named():
    with pytest.raises(UnsupportedPrimitive, match="'cumsum'"):
        to_onnx(lambda x: jnp.cumsum(x, axis=1), jax.ShapeDtypeStruct((1, 4), jnp.float32))


@pytest.mark.parametrize("name", ["final", "cbam"])
def test_released_onnx_files_match_their_cards_and_the_flax_model(name, fer_sample_path):
    from fer_jax.data.readers import read_fer
    from fer_jax.inference.loading import load_model

    path = RELEASE / name / "model.onnx"
    card = (RELEASE / name / "MODEL_CARD.md").read_text()
    digest = re.search(r"`model.onnx` \([0-9.]+ MB, sha256 `([0-9a-f]{64})`\)", card).group(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    faces = read_fer(fer_sample_path).images[:128]
    loaded = load_model(RELEASE / name)
    expected = loaded.classifier(128).probabilities(faces)
    got = OnnxClassifier(path).probabilities(faces)
    assert np.abs(got - expected).max() < 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    # Exported again now, the graph is the file (nothing in it depends on the run).
    assert hashlib.sha256(export_onnx(loaded).SerializeToString()).hexdigest() == digest


def test_onnx_backend_of_the_predictor_gives_the_jax_answers():
    from fer_jax.inference.expressions import ExpressionPredictor
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()
    with_jax = ExpressionPredictor(None, batch_size=8, detector="blazeface", backend="jax").predict_image(photo)
    with_onnx = ExpressionPredictor(None, detector="blazeface", backend="onnx").predict_image(photo)
    assert [f.label for f in with_onnx] == [f.label for f in with_jax] == ["happy"]
    np.testing.assert_allclose(list(with_onnx[0].probabilities.values()),
                               list(with_jax[0].probabilities.values()), atol=1e-5)


def test_export_command_checks_and_writes(tmp_path, capsys):
    from fer_jax.cli import export
    out = tmp_path / "cbam.onnx"
    assert export.main(["--checkpoint", str(RELEASE / "cbam"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "argmax the same on 512 of 512" in err and "sha256" in err
    assert OnnxClassifier(out).probabilities(np.zeros((2, 48, 48), np.uint8)).shape == (2, 7)


def test_a_release_with_its_onnx_file_predicts_without_importing_jax():
    # JAX, Flax and Orbax are most of a one-photo predict's start-up: the released model's
    # shipped ONNX file needs none of them.
    import subprocess
    import sys
    code = ("import sys, numpy as np\n"
            "from fer_jax.inference.expressions import ExpressionPredictor\n"
            "p = ExpressionPredictor(None, detector='blazeface')\n"
            "faces = p.predict_faces([np.full((48, 48), 128, np.uint8)])\n"
            "print(p.backend, len(faces), 'jax' in sys.modules, 'orbax' in sys.modules, 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["onnx", "1", "False", "False", "False"]


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory, fer_sample_path):
    """A tiny model trained two steps on random 40x40 crops (built for 40x40 input)."""
    return tiny_checkpoint(tmp_path_factory, fer_sample_path, "simple_cnn_v1",
                           {"widths": (8, 16), "dense_width": 32}, random_crop=40)


def test_a_crop_trained_model_exports_48x48_input_cut_to_its_centre_window(crop_run):
    """The graph takes the same uint8 (N, 48, 48) faces as every export and reads their
    centre 40x40 window, as the JAX classifier does."""
    loaded = load_model(crop_run)
    assert loaded.config.augment.random_crop == 40
    model = export_onnx(loaded)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 48, 48]
    assert "centre 40x40 window" in model.doc_string
    faces = np.random.default_rng(3).integers(0, 256, (37, 48, 48), dtype=np.uint8)
    expected = loaded.classifier(16).probabilities(faces)
    got = OnnxClassifier(model.SerializeToString()).probabilities(faces)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Only the centre window counts: changing the border changes nothing.
    bordered = faces.copy()
    bordered[:, :4], bordered[:, :, -4:] = 0, 255
    np.testing.assert_allclose(OnnxClassifier(model.SerializeToString()).probabilities(bordered), got, atol=1e-6)


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory, fer_sample_path):
    """A tiny model trained two steps with bfloat16 compute, on 40x40 crops as resnet_crop."""
    return tiny_checkpoint(tmp_path_factory, fer_sample_path, "simple_cnn_v1",
                           {"widths": (8, 16), "dense_width": 32}, random_crop=40, compute_dtype="bfloat16")


def test_a_bfloat16_trained_model_exports_a_float32_graph_that_passes_its_check(bfloat16_run):
    """onnxruntime's CPU convolutions refuse bfloat16 tensors: the file computes the same
    float32 weights in float32, and the release check compares it with exactly that."""
    from fer_jax.inference.loading import in_float32
    from fer_jax.inference.onnx_check import check_onnx
    loaded = load_model(bfloat16_run)
    assert loaded.config.compute_dtype == "bfloat16"
    model = export_onnx(loaded).SerializeToString()
    faces = np.random.default_rng(5).integers(0, 256, (24, 48, 48), dtype=np.uint8)
    got = OnnxClassifier(model).probabilities(faces)  # raised INVALID_GRAPH for a bfloat16 graph
    np.testing.assert_allclose(got, in_float32(loaded).classifier(8).probabilities(faces), atol=1e-5)
    # The model as it is scored (bfloat16) computes the same network, only rounded.
    np.testing.assert_allclose(got, loaded.classifier(8).probabilities(faces), atol=5e-2)
    check = check_onnx(loaded, model, faces)
    assert check.passed and check.from_bfloat16 and "computed in float32" in check.summary()
    assert in_float32(loaded).config.compute_dtype == "float32" and loaded.config.compute_dtype == "bfloat16"


def test_the_converter_translates_static_slices():
    def fn(x):
        return jax.lax.slice(x, (0, 2, 1), (x.shape[0], 7, 8), (1, 2, 1)).astype(jnp.float32) * 2.0

    model = to_onnx(fn, jax.ShapeDtypeStruct((1, 9, 8), jnp.uint8))
    x = np.random.default_rng(0).integers(0, 256, (3, 9, 8), dtype=np.uint8)
    np.testing.assert_allclose(run(model, x), np.asarray(fn(x)))
