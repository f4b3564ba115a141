"""Ensemble averaging, test-time augmentation and the ensemble command on tiny checkpoints."""
from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from conftest import write_kaggle_csv
from fer_jax.cli import ensemble as ensemble_cli
from fer_jax.cli import evaluate
from fer_jax.config import base_config, load_experiment
from fer_jax.data.cache import load_fer_cached
from fer_jax.data.source import prepare_data
from fer_jax.data.splits import make_splits
from fer_jax import ensemble_runs
from fer_jax.engine.checkpoint import resolve_checkpoint
from fer_jax.engine.run_options import RunOptions
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError, run_cli
from fer_jax.inference import ensemble, ensemble_file, ensemble_selection
from fer_jax.inference.scoring import score
from fer_jax.data.tta import shifted, tta_views


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
    assert "best subsets of the 2 members (1 scored on PublicTest" in out
    assert out.split("best subsets")[1].splitlines()[1].startswith(first_line.split()[1])


# --- the ensemble file (release/ensemble.json) --------------------------------------

RELEASE = pathlib.Path(__file__).resolve().parents[1] / "release"


def test_released_ensemble_file_names_its_members_weights_and_how_they_were_chosen():
    spec = ensemble_file.read_ensemble_file()
    assert spec.path == RELEASE / "ensemble.json"
    assert spec.names == ("final", "cbam") and spec.checkpoints == (RELEASE / "final", RELEASE / "cbam")
    assert spec.weights == (1.0, 1.0) and spec.tta == "flip_crops"
    assert spec.selection == "equal: no selection"
    assert spec.record["measured"]["split"] == "PublicTest"


def _write_spec(folder: pathlib.Path, runs: dict, **record) -> pathlib.Path:
    """An ensemble file in FOLDER whose members are links to the runs' best step folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        link = folder / name
        if not link.exists():
            link.symlink_to(resolve_checkpoint(run), target_is_directory=True)
    path = folder / "ensemble.json"
    path.write_text(json.dumps({"members": list(runs), "weights": [1] * len(runs), "tta": "none",
                                "selection": "equal: no selection", **record}))
    return path


@pytest.mark.parametrize("change, message", [
    ({"members": []}, "members: expected a non-empty list"),
    ({"members": ["/etc"]}, "no absolute path"),
    ({"members": ["../simple"]}, "no absolute path, no '..'"),
    ({"members": ["nowhere"]}, "'nowhere' is not a released model"),
    ({"members": ["simple", "simple"]}, "names a member twice"),
    ({"weights": [1, 2, 3]}, "weights: expected a list of 1 numbers"),
    ({"weights": [True]}, "weights: expected a list of 1 numbers"),
    ({"weights": [0]}, "non-negative with a positive sum"),
    ({"tta": "mirror"}, "tta: 'mirror' is not one of none, flip, flip_crops"),
    ({"selection": ""}, "selection: say how the weights were chosen"),
    ({"weights_chosen_on": "x"}, "unknown keys weights_chosen_on"),
])
def test_a_bad_ensemble_file_is_one_line_naming_the_file(change, message, simple_run, fer_sample_path,
                                                         tmp_path, capsys):
    path = _write_spec(tmp_path / "bad", {"simple": simple_run})
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError, match=message) as err:
        ensemble_file.read_ensemble_file(path)
    assert str(err.value).startswith(f"{path}: ")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ensemble_cli.main, ["--ensemble-file", str(path), "--data", str(fer_sample_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]


@pytest.mark.parametrize("text, message", [("{", "not JSON"), ("[1, 2]", "expected a JSON object"),
                                           ('{"members": ["simple"]}', "missing weights, tta, selection")])
def test_an_unreadable_ensemble_file_is_named(text, message, tmp_path):
    path = tmp_path / "ensemble.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        ensemble_file.read_ensemble_file(path)
    with pytest.raises(UserError, match="no such ensemble file"):
        ensemble_file.read_ensemble_file(tmp_path / "missing.json")


def test_without_checkpoints_the_command_scores_the_file_s_ensemble(simple_run, cbam_run, fer_sample_path,
                                                                    tmp_path, capsys):
    path = _write_spec(tmp_path / "spec", {"simple": simple_run, "cbam": cbam_run})
    path.write_text(json.dumps({**json.loads(path.read_text()), "weights": [3, 1], "tta": "flip"}))
    assert ensemble_cli.main(["--ensemble-file", str(path), "--data", str(fer_sample_path),
                              "--out", str(tmp_path / "out")]) == 0
    from_file = capsys.readouterr().out.splitlines()
    assert ensemble_cli.main(["--checkpoints", str(simple_run), str(cbam_run), "--weights", "3", "1",
                              "--tta", "flip", "--data", str(fer_sample_path)]) == 0
    given = capsys.readouterr().out.splitlines()
    assert from_file[:3] == given[:3]  # accuracy, macro-F1, examples
    assert f"ensemble file: {path} (weights: equal: no selection)" in from_file
    assert any(line.startswith("simple (simple_cnn_v1)") for line in from_file)
    assert any(line.startswith("ensemble of 2 (tta=flip, weights 3 1)") for line in from_file)
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["ensemble_file"]["members"] == ["simple", "cbam"] and report["weights"] == [3.0, 1.0]
    with pytest.raises(UserError, match="not both"):
        ensemble_cli.main(["--ensemble-file", str(path), "--checkpoints", str(simple_run),
                           "--data", str(fer_sample_path)])


def test_without_checkpoints_the_released_pair_is_scored(fer_sample_path, capsys):
    assert ensemble_cli.main(["--data", str(fer_sample_path), "--tta", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"ensemble file: {RELEASE / 'ensemble.json'} (weights: equal: no selection)" in lines
    assert [line.split()[0] for line in lines if "(resnet18)" in line or "(cbam_cnn)" in line] == ["final", "cbam"]
    assert any(line.startswith("ensemble of 2 (tta=none, weights 1 1)") for line in lines)


# --- choosing on held-out Training rows ----------------------------------------------

def _stratified_run(tmp_path_factory, data_path, name: str, model: str, model_kwargs: dict, seed: int):

    workdir = tmp_path_factory.getbasetemp() / f"fer_jax_stratified_{name}"
    if not (workdir / "summary.json").exists():
        config = load_experiment(model)
        config.max_train_steps, config.batch_size, config.seed = 3, 32, seed
        config.model_kwargs = ml_collections.ConfigDict(model_kwargs)
        config.data.split_scheme = "stratified"
        train_and_evaluate(config, workdir, prepared=prepare_data(config.data, str(data_path)),
                           options=RunOptions(wandb_mode="disabled", progress=False))
    return workdir


@pytest.fixture(scope="module")
def stratified_runs(tmp_path_factory, fer_sample_path):
    return [_stratified_run(tmp_path_factory, fer_sample_path, "a", "simple_cnn_v1",
                            {"widths": (8, 16), "dense_width": 32}, 0),
            _stratified_run(tmp_path_factory, fer_sample_path, "b", "simple_cnn_v1",
                            {"widths": (8, 16), "dense_width": 32}, 1)]


def _with_shuffled_public_labels(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    data = load_fer_cached(source)
    labels = data.labels.copy()
    public = np.flatnonzero(data.usage == "PublicTest")
    labels[public] = np.random.default_rng(0).permutation(labels[public])
    assert not np.array_equal(labels, data.labels)
    return write_kaggle_csv(out, data.images, labels, data.usage)


def test_selection_on_held_out_rows_never_reads_public_test_labels(stratified_runs, fer_sample_path, tmp_path,
                                                                   capsys, monkeypatch):
    shuffled = _with_shuffled_public_labels(fer_sample_path, tmp_path / "shuffled.csv")
    runs = [str(r) for r in stratified_runs]
    reports = {}
    for name, data in (("real", fer_sample_path), ("shuffled", shuffled)):
        out = tmp_path / name
        assert ensemble_cli.main(["--checkpoints", *runs, "--data", str(data), "--select-on", "stratified-val",
                                  "--tta", "flip", "--out", str(out), "--search"]) == 0
        reports[name] = json.loads((out / "metrics.json").read_text())
        printed = capsys.readouterr().out
        assert "held-out Training rows (stratified 20%, seed 42)" in printed
        assert "PublicTest scored once with that choice" in printed
    real, shuffled_report = reports["real"]["selection"], reports["shuffled"]["selection"]
    for key in ("members", "weights", "accuracy", "macro_f1", "rows"):
        assert real[key] == shuffled_report[key]
    assert reports["real"]["subsets"] == reports["shuffled"]["subsets"]
    assert real["rows"] == len(make_splits(load_fer_cached(fer_sample_path), "stratified").validation)
    assert reports["real"]["weights"] == real["weights"]
    # ... while the report on PublicTest does read the (shuffled) labels.
    assert reports["real"]["ensemble"]["confusion_matrix"] != reports["shuffled"]["ensemble"]["confusion_matrix"]


def test_selection_scores_public_test_once(stratified_runs, fer_sample_path, public_test, monkeypatch, capsys):
    """Members are each scored on PublicTest for the table, the ensemble once: no choice
    among several ensembles is made there."""
    calls = []
    real_score = ensemble.score

    def counting(labels, probs):
        calls.append("PublicTest" if np.array_equal(labels, public_test.labels) else "other")
        return real_score(labels, probs)

    monkeypatch.setattr(ensemble, "score", counting)
    assert ensemble_cli.main(["--checkpoints", *map(str, stratified_runs), "--data", str(fer_sample_path),
                              "--select-on", "stratified-val"]) == 0
    assert calls.count("PublicTest") == len(stratified_runs) + 1
    assert calls.count("other") == 2 ** len(stratified_runs) - 1  # every subset, on the held-out rows


def test_choose_subset_takes_the_best_on_the_given_rows_and_ties_go_to_fewer_members():
    labels = np.array([0, 1, 2, 3])
    right = np.eye(7)[labels]
    wrong = np.eye(7)[(labels + 1) % 7]
    choice = ensemble_selection.choose_subset([wrong, right, right], labels, ["a", "b", "b"])
    assert choice["members"] == ["b"] and choice["weights"] == [0.0, 1.0, 0.0]
    assert choice["accuracy"] == 1.0 and choice["candidates"] == 7


@pytest.mark.parametrize("value", ["PublicTest", "PrivateTest", "public-test", "privatetest", "test"])
def test_selecting_on_a_test_split_is_refused_in_one_line(value, stratified_runs, fer_sample_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ensemble_cli.main, ["--checkpoints", str(stratified_runs[0]), "--data", str(fer_sample_path),
                                    "--select-on", value])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"--select-on {value}: refused" in lines[0]


@pytest.mark.parametrize("flags, message", [
    (["--select-on", "training"], "unknown; valid: stratified-val"),
    (["--select-on", "stratified-val", "--weights", "1"], "--weights and --select-on"),
    (["--select-on", "stratified-val", "--split", "Training"], "the held-out rows are part of Training"),
])
def test_selection_flag_mistakes(flags, message, stratified_runs, fer_sample_path):
    with pytest.raises(UserError, match=message):
        ensemble_cli.main(["--checkpoints", str(stratified_runs[0]), "--data", str(fer_sample_path), *flags])


def test_selection_refuses_members_that_trained_on_every_training_row(simple_run, stratified_runs,
                                                                      fer_sample_path):
    with pytest.raises(UserError, match="data.split_scheme=official, so it trained on every Training row"):
        ensemble_cli.main(["--checkpoints", str(stratified_runs[0]), str(simple_run), "--data",
                           str(fer_sample_path), "--select-on", "stratified-val"])


def test_the_held_out_slice_is_the_members_validation_split(stratified_runs, fer_sample_path):
    data = load_fer_cached(fer_sample_path)
    member = ensemble.load_member(stratified_runs[0])
    held = ensemble_selection.held_out_slice(data, [member.info])
    validation = make_splits(data, "stratified", val_fraction=0.2, seed=42).validation
    np.testing.assert_array_equal(held.data.images, validation.images)
    assert set(held.data.usage.tolist()) == {"Training"} and held.notes == ()


def test_an_ensemble_experiment_on_the_stratified_split_records_its_choice(stratified_runs, fer_sample_path,
                                                                           tmp_path, monkeypatch):

    def stratified(*_):
        config = base_config()
        config.data.split_scheme = "stratified"
        return config

    # The members are the runs trained above; the training loop itself is test_engine's.
    runs = dict(zip(("a", "b"), stratified_runs))
    monkeypatch.setattr(ensemble_runs, "member_config", stratified)
    monkeypatch.setattr(ensemble_runs, "train_and_evaluate",
                        lambda member, workdir, **_: {"best_checkpoint": str(runs[workdir.name])})
    config = stratified()
    config.experiment = "ensemble"
    config.ensemble.members = ("a", "b")
    summary = ensemble_runs.train_ensemble(config, tmp_path / "ens", overrides=[],
                                               data_path=str(fer_sample_path), progress=False)
    written = json.loads((tmp_path / "ens" / "summary.json").read_text())
    selection = written["selection"]
    assert selection["on"] == "validation" and selection["test_split"] == "PublicTest"
    assert set(selection["members"]) <= {"a", "b"} and selection["rows"] > 0
    assert written["test"]["weights"] == selection["weights"]
    assert written["test"]["ensemble"]["count"] == len(load_fer_cached(fer_sample_path).split("PublicTest"))
    assert summary["selection"] == selection
