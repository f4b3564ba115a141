"""The training engine end to end on real data (the shared sample): smoke, resume, NaN, CLI, W&B."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fer_jax import config as config_lib
from fer_jax import kernels
from fer_jax.cli import evaluate as evaluate_cli
from fer_jax.cli import train as train_cli
from fer_jax.data.source import prepare_data
from fer_jax.engine.checkpoint import resolve_checkpoint, restore_variables
from fer_jax.engine.run_options import RunOptions
from fer_jax.engine.trainer import TrainingDiverged, train_and_evaluate
from fer_jax.errors import UserError, run_cli

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", WANDB_MODE="disabled", JAX_PLATFORMS="cpu")


def small_config(**overrides):
    config = config_lib.load_experiment("simple_cnn_v1")
    config.model = "simple_cnn_v2"
    config.batch_size = 32
    config.epochs = 2
    config.augment.rotation_deg = 10.0
    config.augment.hflip_prob = 0.5
    config.augment.translate_frac = 0.1
    config.plateau.factor = 0.5  # on (simple_cnn_v1 turns it off)
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


@pytest.fixture(scope="module")
def prepared(fer_sample_path):
    return prepare_data(config_lib.base_config().data, str(fer_sample_path))


@pytest.fixture(scope="module")
def unbroken_run(prepared, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unbroken")
    summary = train_and_evaluate(small_config(), workdir, prepared=prepared, progress=False)
    return workdir, summary


def _final_variables(workdir):
    """The variables of the run's newest resumable checkpoint."""
    steps = [p for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit()]
    return restore_variables(max(steps, key=lambda p: int(p.name)))


def _assert_same_variables(a, b, atol=1e-6):
    import jax
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_one_step_smoke(prepared, tmp_path):
    summary = train_and_evaluate(small_config(max_train_steps=1), tmp_path, prepared=prepared, progress=False)
    assert summary["steps"] == 1 and summary["capped"]
    assert 0.0 <= summary["best_val_accuracy"] <= 1.0
    assert (tmp_path / "summary.json").exists()
    step_dir = resolve_checkpoint(tmp_path)
    assert step_dir.name == "1" and step_dir.parent.name == "best"


def test_unbroken_run_learns_and_keeps_history(unbroken_run):
    workdir, summary = unbroken_run
    assert summary["epochs_completed"] == 2 and len(summary["history"]) == 2
    assert summary["steps"] == 2 * (1152 // 32) or summary["data"]["name"] == "fer2013"
    losses = [h["train_loss"] for h in summary["history"]]
    assert all(np.isfinite(losses))
    best = max(h["val_accuracy"] for h in summary["history"])
    assert summary["best_val_accuracy"] == best


def test_resume_after_stop_mid_epoch_matches_unbroken_run(prepared, unbroken_run, tmp_path):
    reference_dir, reference = unbroken_run
    first = train_and_evaluate(small_config(max_train_steps=13), tmp_path, prepared=prepared, progress=False)
    assert first["steps"] == 13 and first["capped"]
    second = train_and_evaluate(small_config(), tmp_path, prepared=prepared, progress=False)
    assert second["steps"] == reference["steps"]
    _assert_same_variables(_final_variables(tmp_path), _final_variables(reference_dir))
    assert second["history"][-1]["val_accuracy"] == pytest.approx(reference["history"][-1]["val_accuracy"])
    # The first run's partial epoch is recorded as such; the epoch's train_loss after
    # the resumption averages all its steps (the running sums travel in the checkpoint).
    partial, *epochs = second["history"]
    assert partial["partial_epoch"] and partial["step"] == 13
    assert [h["step"] for h in epochs] == [h["step"] for h in reference["history"]]
    for resumed, unbroken in zip(epochs, reference["history"]):
        assert resumed["train_loss"] == pytest.approx(unbroken["train_loss"], rel=1e-5)
        assert resumed["train_accuracy"] == pytest.approx(unbroken["train_accuracy"], rel=1e-5)


def test_two_runs_of_one_config_train_the_same_bits(prepared, tmp_path):
    # The study's reruns are read figure by figure against their first runs: one config on
    # one machine must give the same weights, not merely close ones (augmentation, dropout,
    # the data order and the default kernels included).
    summaries = [train_and_evaluate(small_config(max_train_steps=6), tmp_path / run, prepared=prepared,
                                    progress=False) for run in ("a", "b")]
    _assert_same_variables(_final_variables(tmp_path / "a"), _final_variables(tmp_path / "b"), atol=0)
    first, second = (s["history"][-1] for s in summaries)
    assert (first["train_loss"], first["val_loss"]) == (second["train_loss"], second["val_loss"])


@pytest.mark.slow  # a real process killed, then resumed: about 20 s
def test_killed_process_resumes_to_the_same_result(fer_sample_path, unbroken_run, tmp_path):
    reference_dir, reference = unbroken_run
    command = [sys.executable, "-m", "fer_jax.train", "--experiment=simple_cnn_v1", f"--data={fer_sample_path}",
               f"--workdir={tmp_path}", "--no-progress", "--set", "model=simple_cnn_v2", "--set", "batch_size=32",
               "--set", "epochs=2", "--log-every", "4", "--checkpoint-every", "10",
               "--set", "augment.rotation_deg=10.0", "--set", "augment.hflip_prob=0.5",
               "--set", "augment.translate_frac=0.1", "--set", "plateau.factor=0.5"]
    # Dropout masks depend on the device count: the command's auto count, as the
    # in-process reference's (RunOptions.cpu_devices=0).
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "latest" / "20").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from step" in done.stderr
    # Where oneDNN's kernels build and load they are what both runs used (kernels=auto).
    assert ("kernels: oneDNN convolutions" in done.stderr) == kernels._availability("cpu")[0], done.stderr[-2000:]
    _assert_same_variables(_final_variables(tmp_path), _final_variables(reference_dir))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    config = small_config(learning_rate=1e9, epochs=1)
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train_and_evaluate(config, tmp_path, prepared=prepared,
                           options=RunOptions(checkpoint_every_steps=1, log_every_steps=1, progress=False))
    variables = _final_variables(tmp_path)
    import jax
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables))


def test_evaluate_restores_the_best_checkpoint(fer_sample_path, unbroken_run, tmp_path, capsys):
    workdir, summary = unbroken_run
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--checkpoint", str(workdir), "--data", str(fer_sample_path),
                              "--out", str(out)]) == 0
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("accuracy: ")]
    assert len(first) == 1
    assert float(first[0].split()[1]) == pytest.approx(summary["best_val_accuracy"], abs=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1e-4)
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["count"]
    assert (out / "confusion_matrix.png").stat().st_size > 1000


@pytest.mark.parametrize("args, expected", [
    (["--experiment=nope"], "unknown experiment 'nope'; valid names:"),
    (["--experiment=cbam", "--set", "epochs=many"], "epochs=many: expected a value of type int"),
    (["--experiment=cbam", "--set", "nonsense=1"], "unknown config key 'nonsense'"),
    (["--experiment=cbam", "--data=/no/such/file.csv"], "/no/such/file.csv"),
    # Named choices are checked before the data is read (the data path is wrong too).
    (["--experiment=cbam", "--set", "eval_tta=crops", "--data=/no/such/file.csv"],
     "eval_tta must be one of none, flip, flip_crops, got 'crops'"),
    (["--experiment=cbam", "--set", "augment.rotation_deg=500", "--data=/no/such/file.csv"],
     "augment.rotation_deg must be in [0, 180], got 500.0"),
    (["--experiment=cbam", "--set", "lr_schedule=step", "--data=/no/such/file.csv"],
     "lr_schedule must be one of constant, cosine, got 'step'"),
])
def test_user_mistakes_get_one_clear_line_and_exit_2(args, expected, capsys):
    # In-process through run_cli, as `python -m fer_jax.train` runs main: anything but a
    # UserError would escape as an exception, not exit 2.
    with pytest.raises(SystemExit) as exited:
        run_cli(train_cli.main, args)
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]


def test_evaluate_without_a_checkpoint_or_release_says_so(fer_sample_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        run_cli(evaluate_cli.main, ["--checkpoint", str(tmp_path), "--data", str(fer_sample_path)])
    assert exited.value.code == 2
    assert "not a fer_jax checkpoint" in capsys.readouterr().err


def test_wandb_offline_run_records_config_metrics_tables_and_artifact(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # No login here: "online" must fall back to offline without waiting.
    train_and_evaluate(small_config(max_train_steps=3), tmp_path, prepared=prepared,
                       options=RunOptions(wandb_mode="online", progress=False))
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    record = open(glob.glob(os.path.join(runs[0], "run-*.wandb"))[0], "rb").read()
    for expected in [b"facial-expression-recognition", b"simple_cnn_v2", b"fer2013", b"val/accuracy",
                     b"val/recall_disgust", b"train/lr_scale", b"train/learning_rate", b"-best"]:
        assert expected in record, expected
    tables = {os.path.basename(p).split("_3_")[0] for p in glob.glob(os.path.join(runs[0], "files", "media", "table", "*.json"))}
    assert {"sample_predictions", "confusion_matrix_table"} <= tables


def test_a_workdir_of_another_run_is_refused_not_overwritten(prepared, tmp_path):
    train_and_evaluate(small_config(max_train_steps=1), tmp_path, prepared=prepared, progress=False)
    other = small_config(max_train_steps=2)
    other.model = "simple_cnn_v1"
    with pytest.raises(UserError, match="different config .*model"):
        train_and_evaluate(other, tmp_path, prepared=prepared, progress=False)


def test_a_damaged_checkpoint_gets_a_clear_error(prepared, tmp_path):
    train_and_evaluate(small_config(max_train_steps=1), tmp_path, prepared=prepared, progress=False)
    for path in (tmp_path / "checkpoints" / "latest" / "1" / "variables").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot resume from this checkpoint"):
        train_and_evaluate(small_config(max_train_steps=2), tmp_path, prepared=prepared, progress=False)


def test_a_few_hundred_steps_on_real_data_learn_more_than_the_majority_class(prepared, tmp_path):
    """CI's real training: simple_cnn_v1 on the shared sample, a few hundred steps."""
    config = config_lib.load_experiment("simple_cnn_v1")
    config.update({"batch_size": 32, "epochs": 100, "max_train_steps": 300, "early_stopping_patience": 0})
    summary = train_and_evaluate(config, tmp_path, prepared=prepared, progress=False)
    assert summary["steps"] == 300
    validation = prepared.splits.validation
    majority = np.bincount(validation.labels).max() / len(validation)
    assert summary["best_val_accuracy"] > majority + 0.05, (summary["best_val_accuracy"], majority)


def test_ensemble_experiment_trains_members_in_turn_and_resumes_them(fer_sample_path, tmp_path, capsys):
    command = ["--experiment=ensemble", f"--data={fer_sample_path}",
               f"--workdir={tmp_path}", "--no-progress", "--set", "ensemble.members=('simple_cnn_v1','simple_cnn_v2')",
               "--set", "ensemble.weights=()",
               "--set", "max_train_steps=2", "--set", "batch_size=32",
               "--set", "eval_tta=none"]
    assert train_cli.main(command) == 0
    assert "ensemble validation accuracy:" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [m["model"] for m in summary["member_results"]] == ["simple_cnn_v1", "simple_cnn_v2"]
    assert 0 <= summary["ensemble"]["accuracy"] <= 1
    assert train_cli.main(command) == 0
    # Members already trained are resumed (nothing left to do), not trained again.
    assert capsys.readouterr().err.count("resuming from step 2") == 2


@pytest.mark.slow  # two member runs trained in turn: about 20 s
def test_a_second_stage_member_starts_from_the_member_trained_before_it(fer_sample_path, tmp_path, capsys):
    """`final` starts from runs/resnet; inside an ensemble, from the ensemble's own resnet
    member. A weight of 0 trains a member without averaging it in."""
    command = ["--experiment=ensemble", f"--data={fer_sample_path}",
               f"--workdir={tmp_path}", "--no-progress", "--set", "ensemble.members=('resnet','final')",
               "--set", "ensemble.weights=(0,1)", "--set", "eval_tta=none", "--set", "model_kwargs.width=4",
               "--set", "max_train_steps=2", "--set", "batch_size=32"]
    assert train_cli.main(command) == 0
    err = capsys.readouterr().err
    assert f"initialized from {tmp_path / 'members' / 'resnet' / 'checkpoints' / 'best'}" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["weights"] == [0.0, 1.0]
    resnet, final = summary["member_results"]
    assert summary["ensemble"]["accuracy"] == final["accuracy"]
    assert "ensemble of 2 (tta=none, weights 0 1)" in err


def test_ensemble_members_and_weights_are_checked(tmp_path):
    from fer_jax import ensemble_runs
    final = ensemble_runs.member_config("final", [])
    with pytest.raises(UserError, match="list resnet before final"):
        ensemble_runs._start_from_member(final, "final", ["final", "resnet"], tmp_path)
    ensemble_runs._start_from_member(final, "final", ["resnet", "final"], tmp_path)
    assert final.init_from == str(tmp_path / "members" / "resnet")
    config = config_lib.apply_overrides(config_lib.load_experiment("ensemble"), ["ensemble.weights=(1,1)"])
    with pytest.raises(UserError, match="2 values for 3 members"):
        ensemble_runs.train_ensemble(config, tmp_path, overrides=[])
    config = config_lib.apply_overrides(config_lib.load_experiment("ensemble"), ["ensemble.weights=(0,0,0)"])
    with pytest.raises(UserError, match="non-negative with a positive sum"):
        ensemble_runs.train_ensemble(config, tmp_path, overrides=[])
    assert not (tmp_path / "members").exists()  # refused before any member trained


def test_an_ensembles_eval_tta_scores_the_average_and_leaves_the_members_own():
    from fer_jax import ensemble_runs
    ensemble = config_lib.apply_overrides(config_lib.load_experiment("ensemble"), ["eval_tta=flip_crops"])
    config_lib.validate(ensemble)  # flip_crops: for an ensemble, scored once
    member = ensemble_runs.member_config("cbam", ["eval_tta=flip_crops", "epochs=2"])
    assert member.eval_tta == config_lib.load_experiment("cbam").eval_tta and member.epochs == 2
    config_lib.validate(member)


def test_rerunning_a_finished_run_says_it_has_finished(prepared, tmp_path, capsys):
    first = train_and_evaluate(small_config(epochs=1), tmp_path, prepared=prepared, progress=False)
    capsys.readouterr()
    again = train_and_evaluate(small_config(epochs=1), tmp_path, prepared=prepared, progress=False)
    err = capsys.readouterr().err
    assert f"resuming from step {first['steps']}: the run has finished (all 1 epochs done)" in err
    assert "(epoch 2," not in err and again["steps"] == first["steps"]


def test_each_epochs_line_gives_its_training_accuracy_and_rate_scale(prepared, tmp_path, capsys):
    """A long plateau run is watched through these lines: the fit and the rate's cuts."""
    summary = train_and_evaluate(small_config(epochs=1), tmp_path, prepared=prepared, progress=False)
    record = summary["history"][-1]
    line = next(l for l in capsys.readouterr().err.splitlines() if l.startswith("epoch 1: "))
    assert f"train_acc {record['train_accuracy']:.4f}, lr_scale {record['lr_scale']:.3g};" in line, line


def _rewrite_saved_config(workdir, step: int, change) -> None:
    """CHANGE(config) applied to the config stored with WORKDIR's latest checkpoint STEP."""
    import shutil

    import orbax.checkpoint as ocp
    meta_dir = workdir / "checkpoints" / "latest" / str(step) / "meta"
    meta = dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir))
    change(meta["config"])
    shutil.rmtree(meta_dir)
    ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(meta_dir, args=ocp.args.JsonSave(meta))


def test_a_run_saved_before_new_config_keys_existed_still_resumes(prepared, tmp_path):
    """Keys the project adds later (at their defaults) do not block resuming an older run."""
    train_and_evaluate(small_config(max_train_steps=1), tmp_path, prepared=prepared, progress=False)
    _rewrite_saved_config(tmp_path, 1, lambda config: config.pop("ensemble"))  # as if saved before it existed
    summary = train_and_evaluate(small_config(max_train_steps=2), tmp_path, prepared=prepared, progress=False)
    assert summary["steps"] == 2


def test_a_run_saved_under_the_former_keys_resumes_under_todays(prepared, tmp_path):
    """plateau.enabled=false is plateau.factor=1 now, nesterov is optimizer=nesterov, and the
    keys that became flags are dropped: a run stored with them resumes (config.upgrade)."""
    config = small_config(max_train_steps=1, optimizer="nesterov", **{"plateau.factor": 1.0})

    def as_stored_before(stored):
        stored["plateau"].update(enabled=False, factor=0.5)
        stored.update(optimizer="sgd", nesterov=True, parallel="jit", eval_batch_size=256,
                      log_every_steps=20)
        stored["augment"]["fill_mode"] = "nearest"
        stored["data"].update(path="", skip_bad_rows=False)
        stored["ensemble"]["tta"] = "flip"

    train_and_evaluate(config, tmp_path, prepared=prepared, progress=False)
    _rewrite_saved_config(tmp_path, 1, as_stored_before)
    config.max_train_steps = 2
    assert train_and_evaluate(config, tmp_path, prepared=prepared, progress=False)["steps"] == 2
    # An older run with plain SGD (nesterov false) is another run than optimizer=nesterov.
    _rewrite_saved_config(tmp_path, 2, lambda stored: stored.update(optimizer="sgd", nesterov=False))
    with pytest.raises(UserError, match="different config .*optimizer"):
        train_and_evaluate(small_config(max_train_steps=3, optimizer="nesterov", **{"plateau.factor": 1.0}),
                           tmp_path, prepared=prepared, progress=False)


def test_the_trainer_under_pmap_computes_what_it_computes_under_jit(prepared, tmp_path):
    results = {}
    for mode in ("jit", "pmap"):
        summary = train_and_evaluate(small_config(max_train_steps=6), tmp_path / mode, prepared=prepared,
                                     options=RunOptions(parallel=mode, progress=False))
        results[mode] = (summary, _final_variables(tmp_path / mode))
    _assert_same_variables(results["pmap"][1], results["jit"][1], atol=1e-5)
    assert results["pmap"][0]["history"][-1]["val_accuracy"] == results["jit"][0]["history"][-1]["val_accuracy"]


def _train_command(workdir, data, *extra):
    return [sys.executable, "-m", "fer_jax.train", "--experiment=simple_cnn_v1", f"--data={data}",
            f"--workdir={workdir}", "--no-progress", "--set", "model=simple_cnn_v2",
            "--set", "batch_size=32", "--set", "epochs=2", "--log-every", "4",
            "--set", "augment.rotation_deg=10.0", "--set", "augment.hflip_prob=0.5",
            "--set", "augment.translate_frac=0.1", "--set", "plateau.factor=0.5",
            "--checkpoint-every", "10", "--cpu-devices", "1", *extra]  # small_config's run


def _wait_for(condition, proc, seconds=300):
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
        time.sleep(0.2)


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_killed_runs_lock_is_not(
        fer_sample_path, prepared, tmp_path):
    first = subprocess.Popen(_train_command(tmp_path, fer_sample_path), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lock = tmp_path / "run.lock"
    try:
        _wait_for(lambda: lock.exists() and f"pid {first.pid}:" in lock.read_text(), first)
        second = subprocess.run(_train_command(tmp_path, fer_sample_path, "--set", "learning_rate=0.1"),
                                env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        refusal = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(refusal) == 1 and "Traceback" not in second.stderr
        assert f"is in use by another run (pid {first.pid}: " in refusal[0] and "fer_jax" in refusal[0]
        assert not (tmp_path / "summary.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed process's lock died with it: the folder is free to resume (or start) in.
    summary = train_and_evaluate(small_config(max_train_steps=2), tmp_path, prepared=prepared, progress=False)
    assert summary["steps"] >= 2


@pytest.mark.parametrize("sig, status", [
    (signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_saves_and_exits_with_the_shells_status(fer_sample_path, tmp_path, sig, status):
    proc = subprocess.Popen(_train_command(tmp_path, fer_sample_path), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: (tmp_path / "checkpoints" / "latest" / "10").exists(), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == status, err[-2000:]
    assert "run the same command to resume" in err and "Traceback" not in err


def test_a_full_disk_while_checkpointing_names_the_last_complete_step_and_cleans_up(
        prepared, tmp_path, monkeypatch):
    import errno
    import pathlib

    import orbax.checkpoint as ocp

    from fer_jax.engine.checkpoint import DiskFull
    save = ocp.CheckpointManager.save

    def save_until_the_disk_fills(self, step, *args, **kwargs):
        if step == 20:  # as Orbax fails: part of the step written under its temporary name
            (pathlib.Path(self.directory) / "20.orbax-checkpoint-tmp-1796").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_until_the_disk_fills)
    options = RunOptions(checkpoint_every_steps=10, progress=False)
    with pytest.raises(DiskFull) as refused:
        train_and_evaluate(small_config(epochs=1), tmp_path, prepared=prepared, options=options)
    assert str(refused.value) == (f"disk full in {tmp_path.absolute() / 'checkpoints'}, the last "
                                  "complete checkpoint is step 10, free space and rerun to resume")
    assert refused.value.exit_status == 2
    assert not list((tmp_path / "checkpoints").rglob("*orbax-checkpoint-tmp*"))
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    again = train_and_evaluate(small_config(epochs=1, max_train_steps=12), tmp_path, prepared=prepared,
                               options=options)
    assert again["steps"] == 12


def test_a_save_that_would_not_fit_is_refused_before_orbax_writes_any_of_it(prepared, tmp_path, monkeypatch):
    import collections

    from fer_jax.engine import checkpoint
    from fer_jax.engine.checkpoint import DiskFull
    real_usage, calls = checkpoint.shutil.disk_usage, []
    usage = collections.namedtuple("usage", "total used free")

    def filling_disk(path):
        calls.append(path)
        return usage(1 << 30, 1 << 30, 1 << 10) if len(calls) > 1 else real_usage(path)

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", filling_disk)
    with pytest.raises(DiskFull, match="the last complete checkpoint is step 10, free space and rerun"):
        train_and_evaluate(small_config(epochs=1), tmp_path, prepared=prepared,
                           options=RunOptions(checkpoint_every_steps=10, progress=False))
    latest = tmp_path / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["10"]
