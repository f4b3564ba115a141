"""The run flags that stand for config keys (--kernels), checked in-process."""
from __future__ import annotations

import pytest

from fer_jax import config as config_lib
from fer_jax.cli import study as study_cli
from fer_jax.cli import train as train_cli
from fer_jax.engine.run_options import flag_overrides
from fer_jax.engine.trainer import RESUMABLE_CHANGES
from fer_jax.errors import UserError


@pytest.mark.parametrize("cli, required", [(train_cli, []), (study_cli, ["--schedule", "own"])])
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
    # They compute the same convolutions (to rounding), as the parallel layouts do.
    assert "kernels" in RESUMABLE_CHANGES and "parallel" in RESUMABLE_CHANGES
