"""A study: experiments trained one after another under one budget and split, and the
results table, its JSON and the learning curves rewritten from the runs' best checkpoints
(`python -m fer_jax.study`)."""
from __future__ import annotations

import json
import pathlib
import sys
import time

import jax

from fer_jax.data.source import prepare_data
from fer_jax.engine.checkpoint import read_meta, restore_variables
from fer_jax.engine.run_options import RunOptions
from fer_jax.engine.trainer import train_and_evaluate
from fer_jax.errors import UserError
from fer_jax.plots import accuracy_curves_figure

# The original study's own figures (its stratified 80/20 split of Training), for the table.
ORIGINAL_STUDY_FIGURES = {
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


def parameter_count(variables) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))


def result_row(name: str, workdir: pathlib.Path) -> dict | None:
    """The table row of a finished run, from its summary and best checkpoint; None if unfinished."""
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
        "original_study_figure": ORIGINAL_STUDY_FIGURES.get(name, ""),
    }


def format_table(rows: list[dict], *, split: str, budget_minutes: float) -> str:
    lines = [f"Split: {split}; budget {budget_minutes:g} min per run of the training loop's wall-clock "
             "time (steps, compilation, per-epoch validation and checkpoints), checked every "
             "log_every_steps steps; train min = that time as spent; wall min = the whole run, "
             "data preparation included.",
             "",
             "| experiment | params | epochs | train min | wall min | best val acc | macro-F1 "
             "| disgust recall | fear recall | last train acc | original study |",
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
            f"| {r['recall_disgust']:.3f} | {r['recall_fear']:.3f} | {train_acc} | {r['original_study_figure']} |")
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


def train_series(configs: dict, root: pathlib.Path, *, data_path: str | None, options: RunOptions,
                 split: str, budget_minutes: float) -> None:
    """Trains each config under ROOT/NAME in order, skipping finished runs and resuming
    an interrupted one; the table is rewritten after every run."""
    names = list(configs)
    prepared = None
    for name in names:
        workdir = root / name
        if (workdir / "summary.json").exists():
            print(f"[study] {name}: finished earlier, skipped", file=sys.stderr)
            continue
        config = configs[name]
        if prepared is None:
            prepared = prepare_data(config.data, data_path)
            if prepared.synthetic:
                raise UserError("the study needs FER2013 (--data or $FER2013_PATH); found none")
        print(f"[study] {name}: training under {workdir} ({budget_minutes:g} min budget)",
              file=sys.stderr)
        wall_path = workdir / WALL_FILE
        start = time.time()
        try:
            train_and_evaluate(config, workdir, prepared=prepared, options=options)
        finally:
            before = json.loads(wall_path.read_text())["seconds"] if wall_path.exists() else 0.0
            workdir.mkdir(parents=True, exist_ok=True)
            wall_path.write_text(json.dumps({"seconds": before + time.time() - start}))
        rows = write_results(root, names, split=split, budget_minutes=budget_minutes)
        done = next((row for row in rows if row["experiment"] == name), None)
        if done:
            print(f"[study] {name}: best validation accuracy {done['val_accuracy']:.4f}", file=sys.stderr)
