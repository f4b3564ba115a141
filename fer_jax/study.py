"""python -m fer_jax.study: a series of experiments under one budget, resumable, with a results table.

    python -m fer_jax.study --experiments simple_cnn_v1,simple_cnn_v2 --budget-minutes 6 \
        --data ../shared/data/fer2013/fer2013_public.csv.gz --root runs/study [--split stratified]

Each experiment trains under ROOT/SPLIT/NAME with the same training wall-clock budget
(`budget_minutes`) and split; finished ones are skipped, an interrupted one resumes
from its checkpoint when the same command runs again. After every run the table
(ROOT/SPLIT/results.md and results.json, and curves.png: validation accuracy against
training time) is rewritten from the runs' best checkpoints,
so it always shows what has been measured so far and nothing else.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from fer_jax.cli_common import quiet_tensorflow, split_cpu_into_devices
from fer_jax.engine.run_options import add_run_flags, run_options
from fer_jax.errors import UserError, run_cli

# The seed study's own figures (its stratified 80/20 split of Training), for the table.
SEED_FIGURES = {
    "simple_cnn_v1": "57.66% (early stop, epoch 12)",
    "simple_cnn_v2": "59.11%",
    "simple_cnn_v3": "1.76% (collapsed: only disgust)",
    "simple_cnn_v3_weighted_loss": "not run alone",
    "deep_cnn_v1": "57.72% (train 93.9%)",
    "deep_cnn_v2": "same numbers as v1",
    "deep_cnn_v3": "slow to reach 40%",
    "cbam": "expected 60-65%, no run",
    "resnet": "no figure",
}

WALL_FILE = "study_wall_seconds.json"


def run_key(split: str) -> str:
    return "official" if split == "official" else f"{split}"


def parameter_count(variables) -> int:
    import jax
    return int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))


def result_row(name: str, workdir: pathlib.Path) -> dict | None:
    """The table row of a finished run, from its summary and best checkpoint; None if unfinished."""
    from fer_jax.engine.checkpoint import read_meta, restore_variables
    summary_path = workdir / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    best_dir = pathlib.Path(summary["best_checkpoint"]) if summary.get("best_checkpoint") else None
    if best_dir is None or not best_dir.exists():
        return None
    meta = read_meta(best_dir)
    val = meta["val_metrics"]
    wall = json.loads((workdir / WALL_FILE).read_text())["seconds"] if (workdir / WALL_FILE).exists() else None
    history = summary["history"]
    return {
        "experiment": name, "model": summary["model"],
        # Runs from before the trainer recorded "params" need their checkpoint read.
        "params": summary.get("params") or parameter_count(restore_variables(best_dir)),
        "epochs": summary["steps"] / summary["steps_per_epoch"],
        "epochs_completed": summary["epochs_completed"],
        "partial_last_epoch": bool(history and history[-1].get("partial_epoch")),
        "best_epoch": summary["best_epoch"], "stopped_early": summary["stopped_early"],
        "train_seconds": summary["train_seconds"], "wall_seconds": wall,
        "val_accuracy": val["accuracy"], "macro_f1": val["macro_f1"],
        "recall_disgust": val["per_class"]["disgust"]["recall"],
        "recall_fear": val["per_class"]["fear"]["recall"],
        "predicted_classes": sum(1 for col in zip(*val["confusion_matrix"]) if sum(col) > 0),
        "final_train_accuracy": history[-1]["train_accuracy"] if history else None,
        "seed_figure": SEED_FIGURES.get(name, ""),
    }


def format_table(rows: list[dict], *, split: str, budget_minutes: float) -> str:
    lines = [f"Split: {split}; budget {budget_minutes:g} min per run of the training loop's wall-clock "
             "time (steps, compilation, per-epoch validation and checkpoints), checked every "
             "log_every_steps steps; train min = that time as spent; wall min = the whole run, "
             "data preparation included.",
             "",
             "| experiment | params | epochs | train min | wall min | best val acc | macro-F1 "
             "| disgust recall | fear recall | last train acc | seed figure |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        epochs = f"{r['epochs']:.1f}"
        if r["stopped_early"]:
            epochs += " (early stop)"
        wall = f"{r['wall_seconds'] / 60:.1f}" if r["wall_seconds"] else "-"
        train_acc = f"{r['final_train_accuracy']:.1%}" if r["final_train_accuracy"] is not None else "-"
        lines.append(
            f"| {r['experiment']} | {r['params']:,} | {epochs} | {r['train_seconds'] / 60:.1f} | {wall} "
            f"| {r['val_accuracy']:.2%} (epoch {r['best_epoch']}) | {r['macro_f1']:.3f} "
            f"| {r['recall_disgust']:.3f} | {r['recall_fear']:.3f} | {train_acc} | {r['seed_figure']} |")
    return "\n".join(lines) + "\n"


def learning_curves(root: pathlib.Path, names: list[str], clock: str = "elapsed_seconds") -> dict:
    """label -> (minutes, validation accuracy) per evaluation, of runs with a summary.
    clock: "elapsed_seconds" (training time, what the budget counts) or "wall_seconds"
    (since the run started: compilation and evaluation included)."""
    curves = {}
    for name in names:
        path = root / name / "summary.json"
        if path.exists():
            history = [h for h in json.loads(path.read_text())["history"] if clock in h]
            if history:
                curves[name] = ([h[clock] / 60 for h in history], [h["val_accuracy"] for h in history])
    return curves


CLOCKS = {"train": ("elapsed_seconds", "training minutes"),
          "wall": ("wall_seconds", "wall-clock minutes since the run started")}


def write_results(root: pathlib.Path, names: list[str], *, split: str, budget_minutes: float,
                  clock: str = "train") -> list[dict]:
    from fer_jax.plots import accuracy_curves_figure
    rows = [row for name in names if (row := result_row(name, root / name)) is not None]
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    (root / "results.md").write_text(format_table(rows, split=split, budget_minutes=budget_minutes))
    key, label = CLOCKS[clock]
    curves = learning_curves(root, names, key)
    if curves:
        accuracy_curves_figure(curves, root / "curves.png", x_label=label,
                               title=f"validation accuracy ({split} split), "
                                     f"{budget_minutes:g} training minutes per run")
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fer_jax.study",
        description="Train experiments one after another under the same budget and split; "
                    "resumable (run the same command again); writes results.md/json.")
    parser.add_argument("--experiments", required=True,
                        help="comma-separated experiment names, trained in this order")
    parser.add_argument("--budget-minutes", type=float, required=True,
                        help="training wall-clock minutes per run (the same for every run)")
    parser.add_argument("--split", default="official", choices=("official", "stratified"),
                        help="official: Training -> PublicTest; stratified: the seed's 80/20 of Training")
    parser.add_argument("--data", default=None, help="FER2013 file or folder")
    parser.add_argument("--root", default="runs/study", help="folder of the runs (default runs/study)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override applied to every experiment (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the table and curves from the runs there are")
    parser.add_argument("--clock", default="train", choices=tuple(CLOCKS),
                        help="curves.png's time axis: train (the budget's clock, default) or wall "
                             "(since the run started, compilation and evaluation included)")
    add_run_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.budget_minutes > 0:
        raise UserError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    quiet_tensorflow()
    from fer_jax import config as config_lib

    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    configs = {}
    for name in names:  # every name and override is checked before anything trains
        config = config_lib.apply_overrides(config_lib.load_experiment(name), args.overrides + [
            f"budget_minutes={args.budget_minutes}", f"data.split_scheme={args.split}"])
        if config.ensemble.members:
            raise UserError(f"{name} is an ensemble; train it with python -m fer_jax.train")
        configs[name] = config_lib.validate(config)
    split_cpu_into_devices(args.cpu_devices)
    from fer_jax.data.source import prepare_data
    from fer_jax.engine.trainer import train_and_evaluate
    root = pathlib.Path(args.root) / args.split
    root.mkdir(parents=True, exist_ok=True)
    prepared = None
    for name in [] if args.report_only else names:
        workdir = root / name
        if (workdir / "summary.json").exists():
            print(f"[study] {name}: finished earlier, skipped", file=sys.stderr)
            continue
        config = configs[name]
        if prepared is None:
            prepared = prepare_data(config.data, args.data)
            if prepared.synthetic:
                raise UserError("the study needs FER2013 (--data or $FER2013_PATH); found none")
        print(f"[study] {name}: training under {workdir} ({args.budget_minutes:g} min budget)",
              file=sys.stderr)
        wall_path = workdir / WALL_FILE
        start = time.time()
        try:
            train_and_evaluate(config, workdir, prepared=prepared, options=run_options(args))
        finally:
            before = json.loads(wall_path.read_text())["seconds"] if wall_path.exists() else 0.0
            workdir.mkdir(parents=True, exist_ok=True)
            wall_path.write_text(json.dumps({"seconds": before + time.time() - start}))
        rows = write_results(root, names, split=args.split, budget_minutes=args.budget_minutes)
        done = next((row for row in rows if row["experiment"] == name), None)
        if done:
            print(f"[study] {name}: best validation accuracy {done['val_accuracy']:.4f}", file=sys.stderr)
    rows = write_results(root, names, split=args.split, budget_minutes=args.budget_minutes,
                         clock=args.clock)
    print((root / "results.md").read_text())
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
