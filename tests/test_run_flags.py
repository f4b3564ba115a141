"""The run flags of train and study: those that stand for config keys (--kernels), the
machine knobs that were config keys (--parallel, --eval-batch-size, --log-every,
--skip-bad-rows) and the one line a removed key gets from --set, checked in-process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fer_jax import config as config_lib
from fer_jax.cli import study as study_cli
from fer_jax.cli import train as train_cli
from fer_jax.engine.run_options import RunOptions, flag_overrides, run_options
from fer_jax.engine.trainer import RESUMABLE_CHANGES
from fer_jax.errors import UserError

CLIS = [(train_cli, []), (study_cli, ["--schedule", "own"])]


@pytest.mark.parametrize("cli, required", CLIS)
def test_kernels_flag_becomes_the_config_key(cli, required):
    args = cli.build_parser().parse_args(required + ["--kernels", "xla"])
    assert flag_overrides(args) == ["kernels=xla"]
    assert flag_overrides(cli.build_parser().parse_args(required)) == []  # the experiment's own


def test_kernels_flag_reaches_the_experiment_config():
    args = train_cli.build_parser().parse_args(["--experiment", "simple_cnn_v1", "--kernels", "onednn"])
    config = config_lib.apply_overrides(config_lib.load_experiment(args.experiment),
                                        args.overrides + flag_overrides(args))
    assert config.kernels == "onednn"


def test_an_unknown_kernels_setting_is_refused_naming_the_key():
    config = config_lib.load_experiment("simple_cnn_v1")
    config.kernels = "cudnn"
    with pytest.raises(UserError, match="kernels"):
        config_lib.validate(config)


def test_a_run_may_resume_under_other_kernels():
    # They compute the same convolutions (to rounding).
    assert "kernels" in RESUMABLE_CHANGES


@pytest.mark.parametrize("cli, required", CLIS)
def test_machine_knobs_are_run_options_of_both_commands(cli, required):
    defaults = run_options(cli.build_parser().parse_args(required))
    assert (defaults.parallel, defaults.eval_batch_size, defaults.log_every_steps,
            defaults.skip_bad_rows) == ("jit", 256, 20, False)
    assert defaults == RunOptions(clock=defaults.clock)
    args = cli.build_parser().parse_args(required + [
        "--parallel", "pmap", "--eval-batch-size", "64", "--log-every", "5", "--skip-bad-rows"])
    options = run_options(args)
    assert (options.parallel, options.eval_batch_size, options.log_every_steps,
            options.skip_bad_rows) == ("pmap", 64, 5, True)
    assert flag_overrides(args) == []  # none of them is part of the experiment


@pytest.mark.parametrize("flags", [["--parallel", "threads"], ["--eval-batch-size", "0"],
                                   ["--log-every", "0"]])
def test_bad_machine_knobs_are_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as refused:
        train_cli.build_parser().parse_args(flags)
    assert refused.value.code == 2 and flags[0] in capsys.readouterr().err


def test_no_machine_knob_is_a_config_key():
    config = config_lib.base_config()
    for key in ("parallel", "eval_batch_size", "log_every_steps"):
        assert key not in config
    assert "path" not in config.data and "skip_bad_rows" not in config.data


@pytest.mark.parametrize("override, message", [
    ("parallel=pmap", "--set parallel=pmap: parallel is a flag now: --parallel pmap"),
    ("eval_batch_size=512", "--set eval_batch_size=512: eval_batch_size is a flag now: --eval-batch-size 512"),
    ("log_every_steps=5", "--set log_every_steps=5: log_every_steps is a flag now: --log-every 5"),
    ("data.path=faces.csv", "--set data.path=faces.csv: data.path is a flag now: --data faces.csv"),
    ("data.skip_bad_rows=true", "--set data.skip_bad_rows=true: data.skip_bad_rows is a flag now: "
                                "--skip-bad-rows"),
    ("plateau.enabled=false", "--set plateau.enabled=false: plateau.enabled is no longer a key: "
                              "plateau.factor=1.0 turns the plateau off"),
    ("nesterov=true", "--set nesterov=true: nesterov is no longer a key: optimizer=nesterov"),
    ("ensemble.tta=flip_crops", "--set ensemble.tta=flip_crops: ensemble.tta is no longer a key: an "
                                "ensemble is scored with eval_tta"),
    ("augment.fill_mode=constant", "--set augment.fill_mode=constant: augment.fill_mode is no longer a key"),
])
def test_a_removed_key_says_where_it_went(override, message):
    with pytest.raises(UserError) as refused:
        config_lib.apply_overrides(config_lib.load_experiment("cbam"), [override])
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_removed_key_on_the_command_line_is_one_line_and_exit_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fer_jax.train", "--experiment=simple_cnn_v1",
                           f"--workdir={tmp_path}", "--set", "parallel=pmap"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "parallel" in line]
    assert lines == ["error: --set parallel=pmap: parallel is a flag now: --parallel pmap"], done.stderr
    assert "Traceback" not in done.stderr


def test_upgrade_reads_a_config_stored_under_the_former_keys():
    stored = config_lib.base_config().to_dict()
    stored["plateau"].update(enabled=False, factor=0.5)
    stored.update(optimizer="sgd", nesterov=True, parallel="pmap", eval_batch_size=64, log_every_steps=4)
    stored["data"].update(path="faces.csv", skip_bad_rows=True)
    stored["augment"]["fill_mode"] = "nearest"
    stored["ensemble"] = {"members": ["cbam", "final"], "tta": "flip_crops", "weights": []}
    upgraded = config_lib.upgrade(stored)
    assert upgraded["plateau"]["factor"] == 1.0 and "enabled" not in upgraded["plateau"]
    assert upgraded["optimizer"] == "nesterov" and upgraded["eval_tta"] == "flip_crops"
    for gone in ("nesterov", "parallel", "eval_batch_size", "log_every_steps"):
        assert gone not in upgraded
    assert "path" not in upgraded["data"] and "skip_bad_rows" not in upgraded["data"]
    assert "fill_mode" not in upgraded["augment"] and "tta" not in upgraded["ensemble"]
    assert stored["plateau"]["enabled"] is False  # the stored config itself is left as it was
    # Plateau on, plain SGD and a member's own ensemble.tta map to what they meant.
    on = config_lib.upgrade({"plateau": {"enabled": True, "factor": 0.5}, "optimizer": "sgd",
                             "nesterov": False, "eval_tta": "flip",
                             "ensemble": {"members": [], "tta": "flip_crops"}})
    assert on == {"plateau": {"factor": 0.5}, "optimizer": "sgd", "eval_tta": "flip",
                  "ensemble": {"members": []}}
