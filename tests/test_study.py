"""Learning-rate schedules, the training wall-clock budget and the experiment-series runner."""
from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from fer_jax import config as config_lib
from fer_jax import study, study_runs
from fer_jax.data.source import prepare_data
from fer_jax.engine import optim
from fer_jax.engine.checkpoint import RunCheckpoints, restore_variables
from fer_jax.engine.run_options import RunOptions
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError


def tiny_config(**values):
    config = config_lib.load_experiment("simple_cnn_v2")
    config.model_kwargs.widths = (8, 16)
    config.model_kwargs.dense_width = 32
    config.batch_size = 32
    for key, value in values.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def prepared(fer_sample_path):
    return prepare_data(config_lib.base_config().data, str(fer_sample_path))


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    config = config_lib.base_config()
    config.update(dict(lr_schedule="cosine", learning_rate=1e-2, epochs=4, warmup_epochs=1.0,
                       final_lr_fraction=0.1))
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
    values = np.array([float(schedule(i)) for i in range(41)])
    assert values[0] == 0.0
    assert values[10] == pytest.approx(1e-2)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)
    assert values[40] == pytest.approx(1e-3)
    assert values[25] == pytest.approx(1e-3 + 0.5 * 9e-3, rel=1e-5)  # half way down the cosine


def test_constant_schedule_and_unknown_names():
    config = config_lib.base_config()
    assert float(optim.learning_rate_schedule(config, 10)(123)) == config.learning_rate
    config.lr_schedule = "linear"
    with pytest.raises(UserError, match="lr_schedule must be one of constant, cosine"):
        config_lib.validate(config)


def test_the_schedule_changes_training(prepared, tmp_path):
    constant = train_and_evaluate(tiny_config(max_train_steps=3), tmp_path / "constant",
                                  prepared=prepared, progress=False)
    cosine = train_and_evaluate(tiny_config(max_train_steps=3, lr_schedule="cosine", warmup_epochs=1.0),
                                tmp_path / "cosine", prepared=prepared, progress=False)
    # Warm-up from zero: the first steps barely move the weights, so the losses differ.
    assert constant["last_train_loss"] != cosine["last_train_loss"]


class FakeClock:
    """The training clock of a test: time passes only as the test says (SECONDS_PER_READ
    at every reading, plus any jump), never with the machine's load."""

    def __init__(self, seconds_per_read: float = 0.0):
        self.now, self.seconds_per_read = 0.0, seconds_per_read

    def __call__(self) -> float:
        self.now += self.seconds_per_read
        return self.now


def _options(clock) -> RunOptions:
    # The budget is checked at every logged step: here every step.
    return RunOptions(checkpoint_every_steps=0, progress=False, clock=clock, log_every_steps=1)


def test_a_budget_stops_training_and_a_rerun_does_not_train_past_it(prepared, tmp_path):
    config = tiny_config(budget_minutes=0.1, epochs=50)
    clock = FakeClock(seconds_per_read=0.05)
    summary = train_and_evaluate(config, tmp_path, prepared=prepared, options=_options(clock))
    steps_per_epoch = summary["steps_per_epoch"]
    assert summary["capped"] and steps_per_epoch < summary["steps"] < 50 * steps_per_epoch
    assert summary["stopped_by"] == "budget"
    assert summary["train_seconds"] >= 6.0
    again = train_and_evaluate(config, tmp_path, prepared=prepared, options=_options(clock))
    assert again["steps"] == summary["steps"] and len(again["history"]) == len(summary["history"])
    # A larger budget is a resumable change: the run carries on from where it stopped.
    config.budget_minutes = summary["train_seconds"] / 60 + 0.1
    longer = train_and_evaluate(config, tmp_path, prepared=prepared, options=_options(clock))
    assert longer["steps"] > summary["steps"]


def test_a_budget_that_runs_out_between_epochs_is_recorded_as_spent(prepared, tmp_path, monkeypatch):
    # The first epoch's checkpoint save is made to outlast the budget, so the budget runs out
    # after the epoch's record and before the next epoch: the saved count must still reach it,
    # or a rerun of the same command would train on.
    budget_seconds = 8.0
    clock = FakeClock(seconds_per_read=1e-3)
    save_latest = RunCheckpoints.save_latest

    def slow_first_epoch_save(self, step, variables, train, meta):
        save_latest(self, step, variables, train, meta)
        if meta["epoch"] == 1 and meta["batch_in_epoch"] == 0:
            clock.now += budget_seconds + 0.3 - meta["train_seconds"]

    monkeypatch.setattr(RunCheckpoints, "save_latest", slow_first_epoch_save)
    config = tiny_config(budget_minutes=budget_seconds / 60, epochs=50)
    summary = train_and_evaluate(config, tmp_path, prepared=prepared, options=_options(clock))
    assert summary["history"][0]["elapsed_seconds"] < budget_seconds  # the case under test
    assert summary["capped"] and summary["train_seconds"] >= budget_seconds
    monkeypatch.setattr(RunCheckpoints, "save_latest", save_latest)
    again = train_and_evaluate(config, tmp_path, prepared=prepared, options=_options(clock))
    assert again["steps"] == summary["steps"] and len(again["history"]) == len(summary["history"])


def test_study_trains_each_experiment_once_and_tabulates_the_best_checkpoints(fer_sample_path, tmp_path, capsys):
    args = ["--experiments", "simple_cnn_v1,simple_cnn_v2", "--budget-minutes", "0.02",
            "--data", str(fer_sample_path), "--root", str(tmp_path), "--no-progress",
            "--set", "batch_size=32", "--set", "model_kwargs.widths=(8,16)",
            "--set", "model_kwargs.dense_width=32"]
    assert study.main(args) == 0
    captured = capsys.readouterr()
    table = captured.out
    rows = json.loads((tmp_path / "official" / "results.json").read_text())
    for row in rows:
        assert f"[study] {row['experiment']}: best validation accuracy {row['best_val_accuracy']:.4f}" in captured.err
    assert [r["experiment"] for r in rows] == ["simple_cnn_v1", "simple_cnn_v2"]
    for row in rows:
        best = json.loads((tmp_path / "official" / row["experiment"] / "summary.json").read_text())
        assert row["best_val_accuracy"] == pytest.approx(best["best_val_accuracy"])
        assert row["stopped_by"] == "budget" and row["split"] == "official"
        assert 0 <= row["recall_disgust"] <= 1 and 0 <= row["recall_fear"] <= 1
        assert row["params"] > 1000 and row["wall_seconds"] >= row["train_seconds"]
        # The trainer's own count is the one the checkpoint holds (older runs are counted from it).
        best_variables = restore_variables(pathlib.Path(best["best_checkpoint"]))
        assert row["params"] == best["params"] == study_runs.parameter_count(best_variables)
        assert f"| {row['experiment']} |" in table
    assert "59.11%" in table  # the seed's own figure sits beside ours
    assert (tmp_path / "official" / "curves.png").stat().st_size > 10_000
    mtimes = {r["experiment"]: (tmp_path / "official" / r["experiment"] / "summary.json").stat().st_mtime
              for r in rows}
    assert study.main(args) == 0
    assert "finished earlier, skipped" in capsys.readouterr().err
    for name, mtime in mtimes.items():
        assert (tmp_path / "official" / name / "summary.json").stat().st_mtime == mtime


def test_a_killed_stretch_of_training_still_counts_in_the_wall_time(fer_sample_path, tmp_path):
    """A study process killed mid-run has no chance to add its time: its stretch stays
    marked open, counts up to the run's last write, and the next stretch adds to it."""
    workdir = tmp_path / "official" / "simple_cnn_v1"
    workdir.mkdir(parents=True)
    wall_file = workdir / study_runs.WALL_FILE
    wall_file.write_text(json.dumps({"seconds": 100.0, "open_since": 1_000.0}))
    for name, mtime in (("written_by_the_killed_stretch", 1_250.0), ("written_before_it", 900.0)):
        (workdir / name).write_text("x")
        os.utime(workdir / name, (mtime, mtime))
    assert study_runs.wall_seconds(workdir) == pytest.approx(350.0)
    assert study_runs.wall_seconds(tmp_path / "never_started") is None

    args = ["--experiments", "simple_cnn_v1", "--budget-minutes", "0.02", "--data", str(fer_sample_path),
            "--root", str(tmp_path), "--no-progress", "--set", "batch_size=32",
            "--set", "model_kwargs.widths=(8,16)", "--set", "model_kwargs.dense_width=32"]
    assert study.main(args) == 0
    record = json.loads(wall_file.read_text())
    assert "open_since" not in record
    row, = json.loads((tmp_path / "official" / "results.json").read_text())
    assert row["wall_seconds"] == pytest.approx(record["seconds"])
    assert row["wall_seconds"] >= 350.0 + row["train_seconds"]


def test_a_study_refused_by_a_live_run_leaves_that_runs_wall_time_alone(fer_sample_path, tmp_path):
    """A second study pointed at a folder a live run trains in is refused by the run's lock,
    and the live run's open stretch stays open (it would be lost were that run then killed)."""
    from fer_jax.engine.run_lock import WorkdirInUse, locked_workdir
    workdir = tmp_path / "official" / "simple_cnn_v1"
    workdir.mkdir(parents=True)
    wall_file = workdir / study_runs.WALL_FILE
    live = json.dumps({"seconds": 100.0, "open_since": 1_000.0})
    wall_file.write_text(live)
    args = ["--experiments", "simple_cnn_v1", "--budget-minutes", "0.02", "--data", str(fer_sample_path),
            "--root", str(tmp_path), "--no-progress"]
    with locked_workdir(workdir), pytest.raises(WorkdirInUse, match="in use by another run"):
        study.main(args)
    assert wall_file.read_text() == live
    fresh = tmp_path / "other"
    with locked_workdir(fresh / "official" / "simple_cnn_v1"), pytest.raises(WorkdirInUse):
        study.main([*args[:-3], "--root", str(fresh), "--no-progress"])
    assert not (fresh / "official" / "simple_cnn_v1" / study_runs.WALL_FILE).exists()


def test_study_checks_every_name_before_training(fer_sample_path, tmp_path):
    with pytest.raises(UserError, match="unknown experiment 'simple_cnn_v9'"):
        study.main(["--experiments", "simple_cnn_v1,simple_cnn_v9", "--budget-minutes", "1",
                    "--data", str(fer_sample_path), "--root", str(tmp_path)])
    assert not (tmp_path / "official" / "simple_cnn_v1").exists()
    with pytest.raises(UserError, match="is an ensemble"):
        study.main(["--experiments", "ensemble", "--budget-minutes", "1", "--root", str(tmp_path)])


TINY = ["--set", "batch_size=32", "--set", "model_kwargs.widths=(8,16)", "--set", "model_kwargs.dense_width=32"]
RECORD_TYPES = {"experiment": str, "split": str, "best_val_accuracy": float, "epochs": (int, float),
                "stopped_by": str, "seed_figure": (float, type(None)), "params": int,
                "wall_seconds": float, "train_seconds": float, "macro_f1": float, "recall_disgust": float,
                "recall_fear": float, "last_train_accuracy": float, "target": (float, type(None)),
                "below_target": (bool, type(None))}


class RecordedLoggers:
    """Stands in for the trainer's W&B logger: keeps what each run asked it for."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir, *, mode, project, tags, name, enabled=True):
        self.calls.append({"workdir": pathlib.Path(workdir), "project": project, "tags": list(tags)})
        return _NoLogger()


class _NoLogger:
    active = False

    def log(self, *a, **k):
        pass

    def finish(self):
        pass


def test_own_schedule_runs_each_experiment_on_both_splits_and_resumes(fer_sample_path, tmp_path, capsys,
                                                                      monkeypatch):
    from fer_jax.engine import trainer
    from fer_jax.engine.checkpoint import read_meta
    loggers = RecordedLoggers()
    monkeypatch.setattr(trainer, "RunLogger", loggers)
    args = ["--schedule", "own", "--experiments", "simple_cnn_v1,simple_cnn_v2",
            "--splits", "stratified", "official", "--data", str(fer_sample_path), "--root", str(tmp_path),
            "--no-progress", "--set", "max_train_steps=2", *TINY]
    assert study.main(args) == 0
    for split in ("stratified", "official"):
        rows = json.loads((tmp_path / split / "results.json").read_text())
        assert [(r["experiment"], r["split"]) for r in rows] == [("simple_cnn_v1", split), ("simple_cnn_v2", split)]
        for row in rows:
            for key, kind in RECORD_TYPES.items():
                assert isinstance(row[key], kind), (key, row[key])
            assert row["stopped_by"] == "max_train_steps" and 0 <= row["best_val_accuracy"] <= 1
            summary = json.loads((tmp_path / split / row["experiment"] / "summary.json").read_text())
            # The experiment's own schedule, not a common budget.
            config = read_meta(pathlib.Path(summary["best_checkpoint"]))["config"]
            own = config_lib.load_experiment(row["experiment"])
            assert (config["epochs"], config["early_stopping_patience"], config["budget_minutes"]) == \
                (own.epochs, own.early_stopping_patience, 0.0)
            assert config["data"]["split_scheme"] == split
        assert [r["seed_figure"] for r in rows] == [0.5766, 0.5911]
        table = (tmp_path / split / "results.md").read_text()
        assert "own schedule" in table and "59.11%" in table and "(step cap)" in table
        assert (tmp_path / split / "curves.png").exists()
    # W&B: the project and the study's tags, the offline runs inside each run's folder.
    assert len(loggers.calls) == 4
    for call in loggers.calls:
        split = call["workdir"].parent.name
        assert call["project"] == "facial-expression-recognition"
        assert {"study", "own-schedule", split} <= set(call["tags"])
    mtimes = {p: p.stat().st_mtime for p in tmp_path.glob("*/*/summary.json")}
    assert len(mtimes) == 4
    capsys.readouterr()
    assert study.main(args) == 0
    assert capsys.readouterr().err.count("finished earlier, skipped") == 4
    assert len(loggers.calls) == 4  # nothing trained again
    assert {p: p.stat().st_mtime for p in tmp_path.glob("*/*/summary.json")} == mtimes


def test_records_say_whether_early_stopping_or_the_schedule_ended_a_run(fer_sample_path, tmp_path):
    def tiny(name, **values):
        config = config_lib.apply_overrides(config_lib.load_experiment(name), [
            "batch_size=32", "model_kwargs.widths=(8,16)", "model_kwargs.dense_width=32",
            "data.split_scheme=stratified"])
        config.update(values)
        return config_lib.validate(config)

    # No learning (rate 0, no BatchNorm): epoch 2 is no better than epoch 1, so patience 1 stops it.
    configs = {"simple_cnn_v1": tiny("simple_cnn_v1", learning_rate=0.0, early_stopping_patience=1, epochs=3),
               "simple_cnn_v2": tiny("simple_cnn_v2", epochs=1)}
    options = RunOptions(checkpoint_every_steps=0, progress=False, wandb_mode="disabled")
    study_runs.train_series(configs, tmp_path, data_path=str(fer_sample_path), options=options,
                            split="stratified", budget_minutes=None)
    early, full = json.loads((tmp_path / "results.json").read_text())
    assert (early["stopped_by"], early["epochs"], early["epochs_completed"]) == ("early_stopping", 2, 2)
    assert (full["stopped_by"], full["epochs"]) == ("schedule_end", 1)
    assert early["below_target"] is True and early["target"] == early["seed_figure"] == 0.5766
    table = (tmp_path / "results.md").read_text()
    assert "2.0 (early stop)" in table and "1.0 (schedule end)" in table
    assert "**below** 57.66%" in table


def test_init_from_starts_a_second_stage_from_another_runs_best_weights(prepared, tmp_path):
    from fer_jax.engine.checkpoint import resolve_checkpoint, restore_variables
    first = tmp_path / "stage1"
    train_and_evaluate(tiny_config(max_train_steps=2), first, prepared=prepared, progress=False)
    stage1 = restore_variables(resolve_checkpoint(first))
    second = tiny_config(max_train_steps=1, init_from=str(first), learning_rate=0.0)
    train_and_evaluate(second, tmp_path / "stage2", prepared=prepared, progress=False)
    stage2 = restore_variables(resolve_checkpoint(tmp_path / "stage2"))
    # lr 0: the weights are stage 1's exactly (batch statistics move with the new batch).
    for a, b in zip(jax.tree.leaves(stage1["params"]), jax.tree.leaves(stage2["params"])):
        np.testing.assert_array_equal(a, b)
    other = tiny_config(max_train_steps=1, init_from=str(first))
    other.model_kwargs.dense_width = 16
    with pytest.raises(UserError, match="holds another network"):
        train_and_evaluate(other, tmp_path / "stage2b", prepared=prepared, progress=False)


def test_a_cap_on_a_checkpoint_step_saves_that_step_once(prepared, tmp_path):
    config = tiny_config(max_train_steps=4)
    summary = train_and_evaluate(config, tmp_path, prepared=prepared,
                                 options=RunOptions(checkpoint_every_steps=4, progress=False))
    assert summary["steps"] == 4 and summary["capped"]


def test_a_finished_runs_record_keeps_its_row_and_curve_after_its_files_are_gone(fer_sample_path, tmp_path,
                                                                                capsys):
    """Deleting a finished run's checkpoints and summary (or copying only its record.json
    elsewhere) keeps its row and curve in the table, and the study does not train it again."""
    args = ["--schedule", "own", "--experiments", "simple_cnn_v1", "--splits", "stratified",
            "--data", str(fer_sample_path), "--root", str(tmp_path / "runs"), "--no-progress",
            "--set", "epochs=2", "--set", "batch_size=32", "--set", "model_kwargs.widths=(8,16)",
            "--set", "model_kwargs.dense_width=32"]
    assert study.main(args) == 0
    run = tmp_path / "runs" / "stratified" / "simple_cnn_v1"
    row, = json.loads((run.parent / "results.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    record = json.loads((run / study_runs.RECORD_FILE).read_text())
    assert record["result"] == row and record["history"] == summary["history"]
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    curve = study_runs.learning_curves(run.parent, ["simple_cnn_v1"])

    kept = tmp_path / "kept" / "stratified" / "simple_cnn_v1"
    kept.mkdir(parents=True)
    (kept / study_runs.RECORD_FILE).write_text((run / study_runs.RECORD_FILE).read_text())
    for path in sorted(run.rglob("*"), reverse=True):
        if path.name != study_runs.RECORD_FILE:
            path.unlink() if path.is_file() else path.rmdir()
    assert [p.name for p in run.iterdir()] == [study_runs.RECORD_FILE]
    for root in (tmp_path / "runs", tmp_path / "kept"):
        assert study.main([*args[:8], "--root", str(root), "--report-only"]) == 0
        assert json.loads((root / "stratified" / "results.json").read_text()) == [row]
        assert study_runs.learning_curves(root / "stratified", ["simple_cnn_v1"]) == curve
        assert (root / "stratified" / "curves.png").exists()
        assert f"{row['best_val_accuracy']:.2%}" in (root / "stratified" / "results.md").read_text()
    # Training again skips the run the record stands for instead of retraining it from scratch.
    capsys.readouterr()
    assert study.main(args) == 0
    assert "simple_cnn_v1: finished earlier, skipped" in capsys.readouterr().err
    assert not (run / "checkpoints").exists()
