"""Learning-rate schedules, the training wall-clock budget and the experiment-series runner."""
from __future__ import annotations

import json
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
    config.log_every_steps = 1
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
    return RunOptions(checkpoint_every_steps=0, progress=False, clock=clock)


def test_a_budget_stops_training_and_a_rerun_does_not_train_past_it(prepared, tmp_path):
    config = tiny_config(budget_minutes=0.1, epochs=50)
    clock = FakeClock(seconds_per_read=0.05)
    summary = train_and_evaluate(config, tmp_path, prepared=prepared, options=_options(clock))
    steps_per_epoch = summary["steps_per_epoch"]
    assert summary["capped"] and steps_per_epoch < summary["steps"] < 50 * steps_per_epoch
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
        assert f"[study] {row['experiment']}: best validation accuracy {row['val_accuracy']:.4f}" in captured.err
    assert [r["experiment"] for r in rows] == ["simple_cnn_v1", "simple_cnn_v2"]
    for row in rows:
        best = json.loads((tmp_path / "official" / row["experiment"] / "summary.json").read_text())
        assert row["val_accuracy"] == pytest.approx(best["best_val_accuracy"])
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


def test_study_checks_every_name_before_training(fer_sample_path, tmp_path):
    with pytest.raises(UserError, match="unknown experiment 'simple_cnn_v9'"):
        study.main(["--experiments", "simple_cnn_v1,simple_cnn_v9", "--budget-minutes", "1",
                    "--data", str(fer_sample_path), "--root", str(tmp_path)])
    assert not (tmp_path / "official" / "simple_cnn_v1").exists()
    with pytest.raises(UserError, match="is an ensemble"):
        study.main(["--experiments", "ensemble", "--budget-minutes", "1", "--root", str(tmp_path)])


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
