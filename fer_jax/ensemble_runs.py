"""Ensemble experiments: train the member experiments in turn, then score them together."""
from __future__ import annotations

import json
import pathlib
import sys

from fer_jax import config as config_lib
from fer_jax.data.source import prepare_data
from fer_jax.distillation import teacher_for
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError
from fer_jax.inference.ensemble import check_weight_values, evaluate_members, format_table, load_member
from fer_jax.inference.ensemble_selection import choose_subset

# Overrides that configure the ensemble itself, not its members (each member validates
# with its own experiment's eval_tta; the ensemble's scores the average).
_ENSEMBLE_ONLY = ("ensemble.", "eval_tta=")


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


def _choose_on_validation(members, names, validation, tta: str) -> dict:
    """The best subset on the validation split (the held-out Training rows under
    data.split_scheme=stratified); no test row is read."""
    probabilities = [m.probabilities(validation.images, tta) for m in members]
    choice = choose_subset(probabilities, validation.labels, names)
    choice.update(on="validation", rows=len(validation), tta=tta)
    return choice


def _score(members, names, prepared, weights, tta: str) -> tuple[dict, dict | None, dict | None]:
    """(validation result, selection, test result). Under the official split the validation
    split is PublicTest and the configured weights are scored there. Under the stratified
    split the subset is chosen on the held-out Training rows and the test split
    (PublicTest) is scored once, with that choice."""
    splits = prepared.splits
    stratified = prepared.identity.get("split_scheme") == "stratified"
    validation = evaluate_members(members, splits.validation.images, splits.validation.labels, tta, weights)
    print(format_table(validation), file=sys.stderr)
    if not stratified or splits.test is None:
        return validation, None, None
    selection = _choose_on_validation(members, names, splits.validation, tta)
    selection["test_split"] = ", ".join(sorted(set(splits.test.usage.tolist())))
    test = evaluate_members(members, splits.test.images, splits.test.labels, tta, selection["weights"])
    print(f"chosen on the validation split: {' + '.join(selection['members'])}; on the test split:",
          file=sys.stderr)
    print(format_table(test), file=sys.stderr)
    return validation, selection, test


def train_ensemble(config, workdir: str | pathlib.Path, *, overrides: list[str],
                   data_path: str | None = None, progress: bool = True, options=None) -> dict:
    """Trains (or resumes) every member under WORKDIR/members/NAME, then evaluates the
    ensemble on the validation split (and, under data.split_scheme=stratified, chooses
    its subset there and scores the test split once); returns and writes WORKDIR/summary.json."""
    workdir = pathlib.Path(workdir)
    names = list(config.ensemble.members)
    weights = _weights(config)
    prepared = None
    checkpoints = []
    for i, name in enumerate(names, start=1):
        print(f"ensemble member {i}/{len(names)}: {name}", file=sys.stderr)
        member = member_config(name, overrides)
        _start_from_member(member, name, names, workdir)
        prepared = prepared or prepare_data(member.data, data_path,
                                             skip_bad_rows=bool(options and options.skip_bad_rows))
        summary = train_and_evaluate(member, workdir / "members" / name, prepared=prepared,
                                     progress=progress, options=options,
                                     teacher=teacher_for(member, progress=progress))
        checkpoints.append(summary["best_checkpoint"])
    tta = config.eval_tta
    members = [load_member(c, name=n) for c, n in zip(checkpoints, names)]
    result, selection, test = _score(members, names, prepared, weights, tta)
    summary = {"experiment": config.experiment, "members": names, "tta": tta,
               "weights": weights,
               "data": prepared.identity, "synthetic": prepared.synthetic,
               "best_val_accuracy": result["ensemble"]["accuracy"],
               "ensemble": result["ensemble"], "member_results": result["members"],
               "selection": selection,
               "test": None if test is None else {"ensemble": test["ensemble"], "member_results": test["members"],
                                                  "weights": test["weights"]},
               "best_checkpoint": str(workdir / "members"), "best_epoch": None}
    if prepared.notice:
        summary["notice"] = prepared.notice
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
