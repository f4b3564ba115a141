"""python -m fer_jax.ensemble [--checkpoints A B ...] --data PATH [--split PublicTest] [--tta none|flip|flip_crops] [--select-on stratified-val] [--out DIR]

Averages the class probabilities of several checkpoints (each with its own model and
normalization) and reports every member's accuracy and macro-F1 beside the ensemble's.
Without --checkpoints it scores the released ensemble: the members, weights and
test-time augmentation listed in release/ensemble.json (or --ensemble-file).

--select-on stratified-val chooses the members (the best subset, equal weights) on the
Training rows the members held out (they must be trained with
--set data.split_scheme=stratified, the same data.split_seed and data.val_fraction),
then scores --split (PublicTest or PrivateTest) once with that choice. A choice made on
PublicTest or PrivateTest is refused.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fer_jax.data.cache import load_fer_cached
from fer_jax.data.types import PRIVATE_TEST, PUBLIC_TEST
from fer_jax.errors import UserError, run_cli
from fer_jax.data import tta as tta_lib
from fer_jax.inference.ensemble import check_weights, evaluate_members, format_table, load_member, subset_search
from fer_jax.inference.ensemble_file import read_ensemble_file
from fer_jax.inference.ensemble_selection import check_select_on, choose_subset, held_out_slice
from fer_jax.inference.scoring import SPLIT_CHOICES, select_split
from fer_jax.metrics import format_report
from fer_jax.plots import confusion_matrix_figure
from fer_jax.runtime import quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_jax.ensemble", description=__doc__.split("\n\n", 1)[1],
                                     epilog="Test-time augmentation (each member's probabilities are the "
                                            "mean over the views):\n" + tta_lib.__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=None,
                        help="the members: runs' workdirs (their best checkpoints) or checkpoint folders "
                             "(default: the released ensemble's)")
    parser.add_argument("--ensemble-file", default=None,
                        help="an ensemble file to score instead of --checkpoints (default: release/ensemble.json)")
    parser.add_argument("--data", required=True, help="a labelled FER2013 file or folder")
    parser.add_argument("--split", default=PUBLIC_TEST, choices=SPLIT_CHOICES)
    parser.add_argument("--tta", default=None, choices=tta_lib.TTA_MODES,
                        help="test-time augmentation (default: the ensemble file's; none with --checkpoints)")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one weight per member (default: the ensemble file's; equal with --checkpoints)")
    parser.add_argument("--select-on", default=None,
                        help="choose the members on held-out data first: stratified-val (the Training rows "
                             "the members held out); then --split is scored once")
    parser.add_argument("--out", default=None, help="write metrics.json and confusion_matrix.png here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--search", action="store_true",
                        help="also list every subset of the members (equal weights) by accuracy: on the "
                             "held-out rows with --select-on, else on --split (then a choice made on it)")
    return parser


def _members_and_defaults(args) -> tuple[list[str], list[str], str, list[float] | None, dict | None]:
    """(checkpoints, names, tta, weights, file record) from the flags or the ensemble file."""
    if args.checkpoints is not None:
        if args.ensemble_file is not None:
            raise UserError("give --checkpoints or --ensemble-file, not both")
        return args.checkpoints, list(args.checkpoints), args.tta or "none", args.weights, None
    spec = read_ensemble_file(args.ensemble_file)
    weights = args.weights if args.weights is not None else list(spec.weights)
    if args.select_on is not None and args.weights is None:
        weights = None  # the selection chooses them
    record = {"path": str(spec.path), "members": list(spec.names), "weights": list(spec.weights),
              "tta": spec.tta, "selection": spec.selection}
    return [str(c) for c in spec.checkpoints], list(spec.names), args.tta or spec.tta, weights, record


def _check_flags(args, count: int, weights) -> None:
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.select_on is None:
        check_weights(weights, count)
        return
    check_select_on(args.select_on)
    if args.weights is not None:
        raise UserError("--weights and --select-on both set the weights; give one")
    if args.split not in (PUBLIC_TEST, PRIVATE_TEST):
        raise UserError(f"--split {args.split} with --select-on: the held-out rows are part of Training; "
                        f"report {PUBLIC_TEST} or {PRIVATE_TEST}")


def _select(members, names, data, tta: str, search: bool) -> tuple[dict, list | None]:
    """The choice made on the members' held-out Training rows (no test row is read)."""
    held = held_out_slice(data, [m.info for m in members])
    probabilities = [m.probabilities(held.data.images, tta) for m in members]
    choice = choose_subset(probabilities, held.data.labels, names)
    choice.update(on="stratified-val", rows=len(held.data), split_seed=held.split_seed,
                  val_fraction=held.val_fraction, description=held.description, tta=tta,
                  notes=list(held.notes))
    subsets = subset_search(probabilities, held.data.labels, names, min_size=1) if search else None
    return choice, subsets


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    checkpoints, names, tta, weights, file_record = _members_and_defaults(args)
    _check_flags(args, len(checkpoints), weights)
    quiet_tensorflow()
    loaded = load_fer_cached(args.data)
    data = select_split(loaded, args.split)
    members = [load_member(c, args.batch_size, n) for c, n in zip(checkpoints, names)]
    selection, subsets = None, None
    if args.select_on is not None:
        selection, subsets = _select(members, names, loaded, tta, args.search)
        weights = selection["weights"]
    result = evaluate_members(members, data.images, data.labels, tta, weights)
    if args.search and selection is None:
        subsets = subset_search(result["probabilities"], data.labels, names)
    _print_report(result, data, args.split, file_record, selection, subsets)
    if args.out:
        _write_report(pathlib.Path(args.out), result, subsets, data, args, file_record, selection)
    return 0


def _print_report(result: dict, data, split: str, file_record, selection, subsets) -> None:
    ensemble = result["ensemble"]
    print(f"accuracy: {ensemble['accuracy']:.4f}")
    print(f"macro_f1: {ensemble['macro_f1']:.4f}")
    print(f"examples: {ensemble['count']} ({split} of {data.source})")
    if file_record:
        print(f"ensemble file: {file_record['path']} (weights: {file_record['selection']})")
    if selection:
        print(f"chosen on {selection['description']}, tta={selection['tta']}: "
              f"{' + '.join(selection['members'])} (held-out accuracy {selection['accuracy']:.4f}, "
              f"best of {selection['candidates']} subsets); {split} scored once with that choice")
        for note in selection["notes"]:
            print(note)
    print()
    print(format_table(result))
    for member in result["members"]:
        if member["synthetic"]:
            print(f"note: {member['name']} was trained on synthetic data")
    print()
    print("ensemble:")
    print(format_report(ensemble))
    if subsets:
        where = "the held-out rows" if selection else split
        print()
        print(f"best subsets of the {len(result['members'])} members ({len(subsets)} scored on {where}, "
              f"tta={result['tta']}):")
        for row in subsets[:10]:
            print(f"{row['accuracy']:.4f} {row['macro_f1']:.4f}  {' + '.join(row['members'])}")


def _write_report(out: pathlib.Path, result: dict, subsets, data, args, file_record, selection) -> None:
    ensemble = result["ensemble"]
    out.mkdir(parents=True, exist_ok=True)
    report = {**{k: v for k, v in result.items() if k != "probabilities"}, "split": args.split,
              "data": data.source, "data_fingerprint": data.fingerprint, "ensemble_file": file_record,
              "selection": selection, "subsets": subsets}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    confusion_matrix_figure(
        ensemble["confusion_matrix"], out / "confusion_matrix.png",
        title=f"ensemble of {len(result['members'])} on {args.split} (tta={result['tta']}, "
              f"accuracy {ensemble['accuracy']:.1%})")
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
