"""Ensemble averaging, test-time augmentation and the ensemble command on tiny checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fer_jax.cli import ensemble as ensemble_cli
from fer_jax.cli import evaluate
from fer_jax.data.cache import load_fer_cached
from fer_jax.errors import run_cli
from fer_jax.inference import ensemble
from fer_jax.inference.scoring import score
from fer_jax.inference.tta import shifted, tta_views


@pytest.fixture(scope="module")
def public_test(fer_sample_path):
    data = load_fer_cached(fer_sample_path)
    return data.split("PublicTest")


def test_ensemble_probabilities_is_the_weighted_mean():
    a = np.array([[0.7, 0.3], [0.2, 0.8]])
    b = np.array([[0.1, 0.9], [0.6, 0.4]])
    np.testing.assert_allclose(ensemble.ensemble_probabilities([a, b]), [[0.4, 0.6], [0.4, 0.6]], atol=1e-7)
    np.testing.assert_allclose(ensemble.ensemble_probabilities([a, b], weights=[3, 1]),
                               [[0.55, 0.45], [0.3, 0.7]], atol=1e-7)
    np.testing.assert_allclose(ensemble.ensemble_probabilities([a]), a, atol=1e-7)
    for weights in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError):
            ensemble.ensemble_probabilities([a, b], weights=weights)
    with pytest.raises(ValueError):
        ensemble.ensemble_probabilities([a, b[:1]])
    with pytest.raises(ValueError):
        ensemble.ensemble_probabilities([])


def test_shifted_moves_the_image_and_repeats_the_edge():
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    down_right = shifted(image, 1, 1)[0]
    np.testing.assert_array_equal(down_right[1:, 1:], image[0, :3, :3])
    np.testing.assert_array_equal(down_right[0], [0, 0, 1, 2])  # the top row repeats row 0
    up_left = shifted(image, -1, -1)[0]
    np.testing.assert_array_equal(up_left[:3, :3], image[0, 1:, 1:])
    np.testing.assert_array_equal(up_left[3], [13, 14, 15, 15])


def test_tta_views():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 48), dtype=np.uint8)
    assert len(tta_views(images, "none")) == 1
    flip = tta_views(images, "flip")
    np.testing.assert_array_equal(flip[1], images[:, :, ::-1])
    crops = tta_views(images, "flip_crops")
    assert len(crops) == 10 and all(v.shape == images.shape and v.dtype == np.uint8 for v in crops)
    np.testing.assert_array_equal(crops[0], images)
    np.testing.assert_array_equal(crops[5], images[:, :, ::-1])
    assert len({v.tobytes() for v in crops}) == 10


def test_flip_tta_of_a_mirror_symmetric_face_changes_nothing(simple_run, public_test):
    faces = public_test.images[:16].astype(np.float32)
    symmetric = ((faces + faces[:, :, ::-1]) / 2).astype(np.uint8)
    plain = ensemble.member_probabilities(simple_run, symmetric, "none")
    flipped = ensemble.member_probabilities(simple_run, symmetric, "flip")
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    # ... while on ordinary faces the mirror image does change the model's output
    assert not np.allclose(ensemble.member_probabilities(simple_run, public_test.images[:16], "flip"),
                           ensemble.member_probabilities(simple_run, public_test.images[:16], "none"),
                           atol=1e-6)


def test_expression_predictor_speaks_the_tta_vocabulary(simple_run, public_test):
    from fer_jax.errors import UserError
    from fer_jax.predictor import ExpressionPredictor
    faces = public_test.images[:8]
    crops = ExpressionPredictor(simple_run, batch_size=8, tta="flip_crops", backend="jax").classify(faces)
    np.testing.assert_allclose(crops, ensemble.member_probabilities(simple_run, faces, "flip_crops"), atol=1e-6)
    # True and False stay the documented spellings of "flip" and "none".
    assert ExpressionPredictor(simple_run, tta=True, backend="jax").tta_mode == "flip"
    assert ExpressionPredictor(simple_run, backend="jax").tta_mode == "none"
    with pytest.raises(UserError, match="flip_crops"):
        ExpressionPredictor(simple_run, tta="mirror", backend="jax")


def test_command_reports_members_and_ensemble(simple_run, cbam_run, fer_sample_path, public_test,
                                              tmp_path, capsys):
    out = tmp_path / "report"
    assert ensemble_cli.main(["--checkpoints", str(simple_run), str(cbam_run), "--data", str(fer_sample_path),
                          "--tta", "flip", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("accuracy: ")
    members = [ensemble.member_probabilities(run, public_test.images, "flip") for run in (simple_run, cbam_run)]
    expected = (ensemble.ensemble_probabilities(members).argmax(-1) == public_test.labels).mean()
    assert lines[0] == f"accuracy: {expected:.4f}"
    for run, probs in zip((simple_run, cbam_run), members):
        row = next(line for line in lines if line.startswith(f"{run} ("))
        assert row.split()[-2] == f"{(probs.argmax(-1) == public_test.labels).mean():.4f}"
    assert any(line.startswith("ensemble of 2 (tta=flip)") for line in lines)

    report = json.loads((out / "metrics.json").read_text())
    assert [m["model"] for m in report["members"]] == ["simple_cnn_v1", "cbam_cnn"]
    assert report["ensemble"]["accuracy"] == pytest.approx(expected)
    assert np.array(report["ensemble"]["confusion_matrix"]).sum() == len(public_test)
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_one_member_ensemble_equals_evaluate(simple_run, fer_sample_path, capsys):
    assert evaluate.main(["--checkpoint", str(simple_run), "--data", str(fer_sample_path)]) == 0
    evaluated = capsys.readouterr().out.splitlines()
    assert ensemble_cli.main(["--checkpoints", str(simple_run), "--data", str(fer_sample_path)]) == 0
    ensembled = capsys.readouterr().out.splitlines()
    assert ensembled[:2] == evaluated[:2]  # accuracy and macro_f1 lines


def test_checkpoints_given_relative_to_the_working_directory(simple_run, fer_sample_path, capsys,
                                                              monkeypatch):
    """Orbax restores only from absolute paths; users type `runs/NAME`."""
    assert evaluate.main(["--checkpoint", str(simple_run), "--data", str(fer_sample_path)]) == 0
    absolute = capsys.readouterr().out.splitlines()[:2]
    monkeypatch.chdir(simple_run.parent)
    assert ensemble_cli.main(["--checkpoints", simple_run.name, "--data", str(fer_sample_path)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == absolute
    assert evaluate.main(["--checkpoint", simple_run.name, "--data", str(fer_sample_path)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == absolute


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, fer_sample_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ensemble_cli.main, ["--checkpoints", str(tmp_path / "nowhere"), "--data", str(fer_sample_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nowhere" in err[0]


def test_search_scores_every_subset_and_lists_the_best_first(simple_run, cbam_run, fer_sample_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 50)
    probs = [rng.dirichlet(np.ones(7), 50).astype(np.float32) for _ in range(3)]
    rows = ensemble.subset_search(probs, labels, ["a", "b", "c"])
    assert sorted(tuple(r["members"]) for r in rows) == [("a", "b"), ("a", "b", "c"), ("a", "c"), ("b", "c")]
    assert [r["accuracy"] for r in rows] == sorted((r["accuracy"] for r in rows), reverse=True)
    both = score(labels, ensemble.ensemble_probabilities(probs[:2]))
    assert next(r for r in rows if r["members"] == ["a", "b"])["accuracy"] == both["accuracy"]
    assert ensemble_cli.main(["--checkpoints", str(simple_run), str(cbam_run), "--data", str(fer_sample_path),
                          "--search"]) == 0
    out = capsys.readouterr().out
    first_line = out.splitlines()[0]  # the ensemble of all members: the only subset of two
    assert "best subsets of the 2 checkpoints (1 scored on PublicTest" in out
    assert out.split("best subsets")[1].splitlines()[1].startswith(first_line.split()[1])
