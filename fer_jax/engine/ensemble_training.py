"""Ensemble experiments: train the member experiments in turn, then score them together."""
from __future__ import annotations

import json
import pathlib
import sys

from fer_jax import config as config_lib
from fer_jax.data.source import prepare_data
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError
from fer_jax.inference.ensemble import check_weight_values, evaluate_ensemble, format_table

# Overrides that configure the ensemble itself, not its members.
_ENSEMBLE_ONLY = ("ensemble.",)


def member_config(name: str, overrides: list[str]):
    """A member experiment's config with the user's overrides that apply to members."""
    return config_lib.apply_overrides(config_lib.load_experiment(name),
                                      [o for o in overrides if not o.startswith(_ENSEMBLE_ONLY)])


def _start_from_member(member, name: str, members: list[str], workdir: pathlib.Path) -> None:
    """A second-stage member (`final` starts from runs/resnet) starts from the member
    trained here under that experiment's name, not from a run outside the ensemble."""
    for i, other in enumerate(members):
        if other != name and member.init_from == config_lib.default_workdir(other):
            if i > members.index(name):
                raise UserError(f"ensemble.members: {name} starts from {other}'s run "
                                f"(init_from={member.init_from}); list {other} before {name}")
            member.init_from = str(workdir / "members" / other)


def _weights(config) -> list[float] | None:
    weights = [float(w) for w in config.ensemble.weights]
    if weights and len(weights) != len(config.ensemble.members):
        raise UserError(f"ensemble.weights has {len(weights)} values for "
                        f"{len(config.ensemble.members)} members")
    if weights:
        # Checked before the members train (hours), not when they are averaged.
        check_weight_values(weights)
    return weights or None


def train_ensemble(config, workdir: str | pathlib.Path, *, overrides: list[str],
                   data_path: str | None = None, progress: bool = True, options=None) -> dict:
    """Trains (or resumes) every member under WORKDIR/members/NAME, then evaluates the
    ensemble on the validation split; returns and writes WORKDIR/summary.json."""
    workdir = pathlib.Path(workdir)
    members = list(config.ensemble.members)
    weights = _weights(config)
    prepared = None
    checkpoints = []
    for i, name in enumerate(members, start=1):
        print(f"ensemble member {i}/{len(members)}: {name}", file=sys.stderr)
        member = member_config(name, overrides)
        _start_from_member(member, name, members, workdir)
        prepared = prepared or prepare_data(member.data, data_path)
        summary = train_and_evaluate(member, workdir / "members" / name, prepared=prepared,
                                     progress=progress, options=options)
        checkpoints.append(summary["best_checkpoint"])
    validation = prepared.splits.validation
    result = evaluate_ensemble(checkpoints, validation.images, validation.labels,
                               tta=config.ensemble.tta, weights=weights)
    print(format_table(result), file=sys.stderr)
    summary = {"experiment": config.experiment, "members": members, "tta": config.ensemble.tta,
               "weights": weights,
               "data": prepared.identity, "synthetic": prepared.synthetic,
               "best_val_accuracy": result["ensemble"]["accuracy"],
               "ensemble": result["ensemble"], "member_results": result["members"],
               "best_checkpoint": str(workdir / "members"), "best_epoch": None}
    if prepared.notice:
        summary["notice"] = prepared.notice
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
