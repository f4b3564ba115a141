"""python -m fer_jax.release: a checkpoint without optimizer state, its scores and model card; the default model."""
from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from conftest import write_kaggle_csv
from fer_jax import checkout_packages
from fer_jax import model_release as release
from fer_jax.checkout_packages import released_checkpoint
from fer_jax.cli import evaluate
from fer_jax.data.cache import load_fer_cached
from fer_jax.data.synthetic import make_synthetic
from fer_jax.data.types import CLASS_NAMES
from fer_jax.engine.checkpoint import resolve_checkpoint
from fer_jax.errors import UserError
from fer_jax.inference.ensemble import member_probabilities
from fer_jax.inference.loading import load_model
from fer_jax.onnx_model.runtime import OnnxClassifier


@pytest.fixture(scope="module")
def released(simple_run, fer_sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    metrics = release.make_release(simple_run, fer_sample_path, name="final", tta="flip", out=out)
    return out / "final", metrics


def test_release_holds_variables_and_meta_only(released):
    path, metrics = released
    assert sorted(p.name for p in path.iterdir()) == [
        "MODEL_CARD.md", "confusion_matrix.png", "meta", "metrics.json", "model.onnx", "variables"]
    assert metrics["bytes"] < release.MAX_RELEASE_BYTES
    _, _, _, norm, step_dir, meta = load_model(path)
    assert step_dir == path and set(norm) == {"mean", "std"}
    assert set(meta) <= set(release.META_KEYS)


def test_released_model_predicts_what_its_checkpoint_predicts(released, simple_run, fer_sample_path):
    images = load_fer_cached(fer_sample_path).split("PublicTest").images[:64]
    np.testing.assert_allclose(member_probabilities(released[0], images),
                               member_probabilities(simple_run, images), rtol=1e-6, atol=1e-7)


def test_model_card_reports_the_measured_scores(released, simple_run, fer_sample_path, capsys):
    path, metrics = released
    card = (path / "MODEL_CARD.md").read_text()
    assert f"| none | {metrics['no_tta']['accuracy']:.2%} |" in card
    assert f"| flip | {metrics['tta']['accuracy']:.2%} |" in card
    assert "PrivateTest` was never read" in card and "## Limits" in card
    assert evaluate.main(["--checkpoint", str(simple_run), "--data", str(fer_sample_path)]) == 0
    assert capsys.readouterr().out.startswith(f"accuracy: {metrics['no_tta']['accuracy']:.4f}")
    assert evaluate.main(["--checkpoint", str(path), "--data", str(fer_sample_path), "--tta", "flip"]) == 0
    assert capsys.readouterr().out.startswith(f"accuracy: {metrics['tta']['accuracy']:.4f}")
    saved = json.loads((path / "metrics.json").read_text())
    assert saved["tta"]["mode"] == "flip" and saved["split"] == "PublicTest"


def test_the_release_ships_its_onnx_file_with_its_card_section(released, fer_sample_path):
    """model.onnx computes the released model's probabilities; the card names its sha256."""
    path, _ = released
    card = (path / "MODEL_CARD.md").read_text()
    section = card.split("## ONNX", 1)[1]
    digest = re.search(r"`model.onnx` \([0-9.]+ MB, sha256 `([0-9a-f]{64})`\)", section).group(1)
    assert hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest() == digest
    assert "argmax the same on" in section and "`model.onnx`." in card.split("## Files", 1)[1]
    images = load_fer_cached(fer_sample_path).split("PublicTest").images[:32]
    np.testing.assert_allclose(OnnxClassifier(path / "model.onnx").probabilities(images),
                               load_model(path).classifier(32).probabilities(images), atol=1e-5)


def test_a_release_remade_without_onnx_keeps_the_file_while_the_model_is_the_same(
        released, simple_run, fer_sample_path, tmp_path, monkeypatch):
    out = tmp_path / "rel"
    shutil.copytree(released[0], out / "final")
    before = (out / "final" / "model.onnx").read_bytes()
    section = (out / "final" / "MODEL_CARD.md").read_text().split("## ONNX", 1)[1]
    monkeypatch.setattr(release, "onnx_export_available", lambda: False)
    # A new label does not change the network.
    release.make_release(simple_run, fer_sample_path, name="final", tta="flip", out=out,
                         description="relabelled")
    card = (out / "final" / "MODEL_CARD.md").read_text()
    assert (out / "final" / "model.onnx").read_bytes() == before
    assert card.split("## ONNX", 1)[1] == section and "relabelled" in card
    # Another network (here: other normalization) cannot keep it, and the release stays.
    metadata = out / "final" / "meta" / "metadata"
    meta = json.loads(metadata.read_text())
    meta["normalization"]["mean"] += 0.01
    metadata.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"model.onnx.*pip install 'fer_jax\[onnx\]'"):
        release.make_release(simple_run, fer_sample_path, name="final", tta="flip", out=out)
    assert (out / "final" / "model.onnx").read_bytes() == before
    assert not (out / "final.tmp").exists()


def test_commands_use_the_release_when_no_checkpoint_is_given(released, fer_sample_path, monkeypatch, capsys):
    monkeypatch.setattr(checkout_packages, "release_root", lambda: released[0].parent)
    assert evaluate.main(["--data", str(fer_sample_path)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {released[0]}" in out


def test_no_release_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(checkout_packages, "release_root", lambda: tmp_path)
    with pytest.raises(UserError, match="no released model at"):
        load_model(None)


def test_a_release_must_be_scored_on_the_data_it_was_trained_on(simple_run, tmp_path):
    data = make_synthetic(400, seed=123, usage_fractions=(0.5, 0.5, 0.0))
    other = write_kaggle_csv(tmp_path / "other.csv", data.images, data.labels, data.usage)
    with pytest.raises(UserError, match="not the data set this model was trained on"):
        release.make_release(simple_run, other, out=tmp_path / "rel")


def test_a_second_stage_card_names_the_run_it_started_from(simple_run, tmp_path):
    first = release.stage_one({"init_from": str(simple_run)})
    assert first["experiment"] == "simple_cnn_v1" and 0 <= first["val_accuracy"] <= 1
    _, _, _, _, _, meta = load_model(simple_run)
    lines = release._recipe_lines({**meta["config"], "init_from": str(simple_run)}, first)
    assert lines[-1].startswith(f"- started from the best checkpoint of `{simple_run}` (experiment `simple_cnn_v1`")
    assert release.stage_one({"init_from": ""}) is None
    assert release.stage_one({"init_from": str(tmp_path / "gone")}) == {"path": str(tmp_path / "gone")}


def test_the_card_names_the_optimizer_the_run_trained_with():
    from fer_jax.config import base_config
    config = base_config().to_dict()
    assert "- optimizer: AdamW, learning rate" in "\n".join(release._recipe_lines(config))
    config.update(optimizer="nesterov", momentum=0.9)
    assert "- optimizer: SGD with Nesterov momentum (momentum 0.9), learning rate" in "\n".join(
        release._recipe_lines(config))


def test_the_card_says_what_a_bfloat16_or_crop_trained_model_computes_and_reads():
    from fer_jax.config import base_config
    config = base_config().to_dict()
    assert "computes in" not in "\n".join(release._recipe_lines(config))
    config.update(compute_dtype="float32", trained_compute_dtype="bfloat16")
    assert ("- trained with bfloat16 compute (float32 weights); this release computes in float32, "
            "in JAX and in `model.onnx` alike" in release._recipe_lines(config))
    config["augment"] = {**config["augment"], "random_crop": 40}
    plain = {"accuracy": 0.5, "macro_f1": 0.5, "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                                                 "support": 1} for c in CLASS_NAMES},
             "count": 7, "confusion_matrix": np.eye(7, dtype=int).tolist()}
    meta = {"config": config, "normalization": {"mean": 0.5, "std": 0.25}}
    card = release.model_card("x", meta, 10, 10, plain, plain, "flip_crops", "f.csv", "ckpt")
    assert "framed as in FER2013 (the model reads their centre 40x40 window);" in card


def test_a_bfloat16_run_is_released_computing_in_float32(tmp_path_factory, fer_sample_path):
    """JAX and the shipped model.onnx then agree as closely as for any float32 model."""
    from conftest import tiny_checkpoint
    from fer_jax.inference.loading import in_float32
    run = tiny_checkpoint(tmp_path_factory, fer_sample_path, "simple_cnn_v1",
                          {"widths": (8, 16), "dense_width": 32}, random_crop=40, compute_dtype="bfloat16")
    out = tmp_path_factory.mktemp("release_bf16")
    release.make_release(run, fer_sample_path, name="final", tta="flip_crops", out=out)
    shipped = load_model(out / "final")
    assert shipped.config.compute_dtype == "float32"
    meta = json.loads((out / "final" / "meta" / "metadata").read_text())
    assert meta["config"]["trained_compute_dtype"] == "bfloat16"
    faces = load_fer_cached(fer_sample_path).images[:64]
    jax_answers = shipped.classifier(16).probabilities(faces)
    np.testing.assert_allclose(jax_answers, in_float32(load_model(run)).classifier(16).probabilities(faces),
                               atol=1e-6)
    np.testing.assert_allclose(OnnxClassifier(out / "final" / "model.onnx").probabilities(faces), jax_answers,
                               atol=1e-5)
    assert "trained with bfloat16 compute" in (out / "final" / "MODEL_CARD.md").read_text()


def test_only_the_default_release_is_used_without_a_checkpoint_argument(released, simple_run,
                                                                         fer_sample_path, tmp_path):
    default_card = (released[0] / "MODEL_CARD.md").read_text()
    assert "ExpressionPredictor()` (no argument: this model)" in default_card
    release.make_release(simple_run, fer_sample_path, name="second", tta="none", out=tmp_path)
    card = (tmp_path / "second" / "MODEL_CARD.md").read_text()
    assert "python -m fer_jax.predict photo.jpg --checkpoint release/second" in card
    assert 'ExpressionPredictor("release/second")' in card and "no argument" not in card


def test_a_new_label_replaces_the_runs_own_and_names_it(simple_run, fer_sample_path, tmp_path):
    _, _, _, _, _, meta = load_model(simple_run)
    ran = meta["config"]["description"]
    release.make_release(simple_run, fer_sample_path, name="relabelled", tta="none", out=tmp_path,
                         description="a relabelled run")
    card = (tmp_path / "relabelled" / "MODEL_CARD.md").read_text()
    assert f'Experiment `simple_cnn_v1`: a relabelled run (the run\'s own label: "{ran}")' in card
    _, _, _, _, _, released_meta = load_model(tmp_path / "relabelled")
    assert released_meta["config"]["description"] == "a relabelled run"
    assert released_meta["config"]["run_description"] == ran


def test_release_paths_find_the_shipped_models_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no release/ folder here
    assert resolve_checkpoint("release/final") == released_checkpoint("final")
    with pytest.raises(UserError, match="release/nothing: checkpoint folder not found"):
        resolve_checkpoint("release/nothing")
    with pytest.raises(UserError, match="elsewhere: checkpoint folder not found"):
        resolve_checkpoint("elsewhere")
