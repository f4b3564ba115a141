"""A study: experiments trained one after another on one split, under one budget or at each
experiment's own schedule, and the results table, its JSON and the learning curves rewritten
from the runs' best checkpoints (`python -m fer_jax.study`).

results.json is a list with one record per run: `experiment`, `split`, `params`, `epochs`
(trained, a fraction where a cap or the budget ended one mid-epoch), `epochs_completed`,
`stopped_by` (the trainer's: early_stopping, schedule_end, max_train_steps, budget),
`train_seconds`, `wall_seconds`, `best_val_accuracy` and `best_epoch`, `macro_f1`,
`recall_disgust`, `recall_fear`, `predicted_classes`, `last_train_accuracy` (fractions),
`seed_figure` (the original study's accuracy for that row as a fraction, or null where it
reported none; the key keeps the name the study's readers use, the figures themselves are
ORIGINAL_STUDY_ACCURACY), `target` (the accuracy the row should reach, or null),
`below_target` (bool, or null without a target) and `original_study_figure` (the text).
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

import jax

from fer_jax.data.source import prepare_data
from fer_jax.distillation import teacher_for
from fer_jax.engine.checkpoint import read_meta, restore_variables
from fer_jax.engine.run_lock import WorkdirInUse
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

# The same as fractions (null: the original study reported no accuracy for that row).
ORIGINAL_STUDY_ACCURACY = {
    "simple_cnn_v1": 0.5766, "simple_cnn_v2": 0.5911, "simple_cnn_v3": 0.0176,
    "simple_cnn_v3_weighted_loss": None, "deep_cnn_v1": 0.5772, "deep_cnn_v2": 0.5772,
    "deep_cnn_v3": None, "cbam": None, "resnet": None,
}

# What a row should reach: the original study's result where it had one (not simple_cnn_v3's
# collapse, which is a failure to reproduce, not a bar), and the 60% expected of cbam.
TARGETS = {**{name: value for name, value in ORIGINAL_STUDY_ACCURACY.items()
              if value is not None and name != "simple_cnn_v3"}, "cbam": 0.60}

WALL_FILE = "study_wall_seconds.json"
# A finished run's row and curve, enough for the table once its checkpoints are gone.
RECORD_FILE = "record.json"


def wall_seconds(workdir: pathlib.Path) -> float | None:
    """The study's wall-clock seconds on WORKDIR's run so far (None: never started by it).

    Each stretch of training adds itself when it ends. A stretch whose process was killed
    before it could (SIGKILL, a lost machine) is still marked open, and counts up to the
    last file the run wrote, so a run trained in killed pieces does not lose them.
    """
    path = workdir / WALL_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    seconds = record["seconds"]
    if record.get("open_since") is not None:
        last_write = max((p.stat().st_mtime for p in workdir.rglob("*")
                          if p.is_file() and p != path), default=0.0)
        seconds += max(0.0, last_write - record["open_since"])
    return seconds


def _stopped_by(summary: dict) -> str:
    """The trainer's record; summaries written before it recorded one are read from their flags."""
    if "stopped_by" in summary:
        return summary["stopped_by"]
    if summary["stopped_early"]:
        return "early_stopping"
    return "capped" if summary["capped"] else "schedule_end"


def parameter_count(variables) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))


def _read_record(workdir: pathlib.Path) -> dict | None:
    path = workdir / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else None


def result_row(name: str, workdir: pathlib.Path, *, split: str) -> dict | None:
    """The record of a finished run, from its summary and best checkpoint; None if unfinished.

    Each row read from a checkpoint is also saved, with the run's curve, as WORKDIR/record.json,
    and a run whose checkpoints (or summary) are gone is read from that file: the table keeps a
    run after its weights are deleted to free the disk, and a folder of records alone (copied
    out of ROOT/SPLIT/NAME/) rebuilds the table and curves with --report-only.
    """
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    best_dir = (pathlib.Path(summary["best_checkpoint"])
                if summary is not None and summary.get("best_checkpoint") else None)
    if best_dir is None or not best_dir.exists():
        record = _read_record(workdir)
        return record["result"] if record is not None else None
    val = read_meta(best_dir)["val_metrics"]
    wall = wall_seconds(workdir)
    history = summary["history"]
    target = TARGETS.get(name)
    row = {
        "experiment": name, "split": split, "model": summary["model"],
        # Runs from before the trainer recorded "params" need their checkpoint read.
        "params": summary.get("params") or parameter_count(restore_variables(best_dir)),
        "epochs": summary["steps"] / summary["steps_per_epoch"],
        "epochs_completed": summary["epochs_completed"],
        "partial_last_epoch": bool(history and history[-1].get("partial_epoch")),
        "stopped_by": _stopped_by(summary),
        "train_seconds": summary["train_seconds"], "wall_seconds": wall,
        "best_val_accuracy": val["accuracy"], "best_epoch": summary["best_epoch"],
        "macro_f1": val["macro_f1"],
        "recall_disgust": val["per_class"]["disgust"]["recall"],
        "recall_fear": val["per_class"]["fear"]["recall"],
        "predicted_classes": sum(1 for col in zip(*val["confusion_matrix"]) if sum(col) > 0),
        "last_train_accuracy": history[-1]["train_accuracy"] if history else None,
        "seed_figure": ORIGINAL_STUDY_ACCURACY.get(name),
        "target": target, "below_target": None if target is None else val["accuracy"] < target,
        "original_study_figure": ORIGINAL_STUDY_FIGURES.get(name, ""),
    }
    (workdir / RECORD_FILE).write_text(json.dumps({"result": row, "history": history}, indent=1))
    return row


STOP_WORDS = {"early_stopping": "early stop", "schedule_end": "schedule end",
              "max_train_steps": "step cap", "budget": "budget", "capped": "capped"}


def _versus_target(row: dict) -> str:
    if row["target"] is None:
        return "-"
    if row["below_target"]:
        short = 100 * (row["target"] - row["best_val_accuracy"])
        return f"**below** {row['target']:.2%} by {short:.2f} points"
    return f"reached {row['target']:.2%}"


def _heading(split: str, budget_minutes: float | None) -> str:
    if budget_minutes is None:
        return (f"Split: {split}; each experiment at its own schedule (its epochs, early stopping, "
                "plateau, batch size and augmentation); train min = the training loop's time "
                "(steps, compilation, per-epoch validation, checkpoints); wall min = the whole run, "
                "data preparation included; classes = how many classes the best checkpoint predicts.")
    return (f"Split: {split}; budget {budget_minutes:g} min per run of the training loop's wall-clock "
            "time (steps, compilation, per-epoch validation and checkpoints), checked every "
            "--log-every steps; train min = that time as spent; wall min = the whole run, "
            "data preparation included; classes = how many classes the best checkpoint predicts.")


def format_table(rows: list[dict], *, split: str, budget_minutes: float | None) -> str:
    """The markdown table; budget_minutes None: the runs followed their own schedules."""
    lines = [_heading(split, budget_minutes), "",
             "| experiment | params | epochs (stopped by) | train min | wall min | best val acc "
             "| macro-F1 | disgust recall | fear recall | classes | last train acc | original study "
             "| against it |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        epochs = f"{r['epochs']:.1f}" if r["epochs"] >= 1 else f"{r['epochs']:.2f}"
        epochs += f" ({STOP_WORDS.get(r['stopped_by'], r['stopped_by'])})"
        wall = f"{r['wall_seconds'] / 60:.1f}" if r["wall_seconds"] else "-"
        train_acc = f"{r['last_train_accuracy']:.1%}" if r["last_train_accuracy"] is not None else "-"
        lines.append(
            f"| {r['experiment']} | {r['params']:,} | {epochs} | {r['train_seconds'] / 60:.1f} | {wall} "
            f"| {r['best_val_accuracy']:.2%} (epoch {r['best_epoch']}) | {r['macro_f1']:.3f} "
            f"| {r['recall_disgust']:.3f} | {r['recall_fear']:.3f} | {r['predicted_classes']} | {train_acc} "
            f"| {r['original_study_figure']} | {_versus_target(r)} |")
    return "\n".join(lines) + "\n"


def learning_curves(root: pathlib.Path, names: list[str], clock: str = "elapsed_seconds") -> dict:
    """label -> (minutes, validation accuracy) per evaluation, of runs with a summary or a record.
    clock: "elapsed_seconds" (training time, what the budget counts) or "wall_seconds"
    (since the run started: compilation and evaluation included)."""
    curves = {}
    for name in names:
        path = root / name / "summary.json"
        source = json.loads(path.read_text()) if path.exists() else _read_record(root / name)
        if source is not None:
            history = [h for h in source["history"] if clock in h]
            if history:
                curves[name] = ([h[clock] / 60 for h in history], [h["val_accuracy"] for h in history])
    return curves


CLOCKS = {"train": ("elapsed_seconds", "training minutes"),
          "wall": ("wall_seconds", "wall-clock minutes since the run started")}


def write_results(root: pathlib.Path, names: list[str], *, split: str, budget_minutes: float | None,
                  clock: str = "train") -> list[dict]:
    """ROOT/results.json, results.md and curves.png from the finished runs of NAMES;
    budget_minutes None: the runs followed their own schedules."""
    rows = [row for name in names if (row := result_row(name, root / name, split=split)) is not None]
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    (root / "results.md").write_text(format_table(rows, split=split, budget_minutes=budget_minutes))
    key, label = CLOCKS[clock]
    curves = learning_curves(root, names, key)
    if curves:
        length = "own schedules" if budget_minutes is None else f"{budget_minutes:g} training minutes per run"
        accuracy_curves_figure(curves, root / "curves.png", x_label=label,
                               title=f"validation accuracy ({split} split), {length}")
    return rows


def train_series(configs: dict, root: pathlib.Path, *, data_path: str | None, options: RunOptions,
                 split: str, budget_minutes: float | None) -> None:
    """Trains each config under ROOT/NAME in order, skipping finished runs and resuming
    an interrupted one; the table is rewritten after every run. budget_minutes None:
    each config's own schedule (the configs carry no budget)."""
    names = list(configs)
    prepared = {}  # one preparation per distinct data config
    for name in names:
        workdir = root / name
        if (workdir / "summary.json").exists() or (workdir / RECORD_FILE).exists():
            print(f"[study] {name}: finished earlier, skipped", file=sys.stderr)
            continue
        config = configs[name]
        data_key = config.data.to_json()
        if data_key not in prepared:
            prepared[data_key] = prepare_data(config.data, data_path, skip_bad_rows=options.skip_bad_rows)
            if prepared[data_key].synthetic:
                raise UserError("the study needs FER2013 (--data or $FER2013_PATH); found none")
        length = ("its own schedule" if budget_minutes is None else f"{budget_minutes:g} min budget")
        print(f"[study] {name}: training under {workdir} ({length})", file=sys.stderr)
        wall_path = workdir / WALL_FILE
        start = time.time()
        before = wall_seconds(workdir) or 0.0
        workdir.mkdir(parents=True, exist_ok=True)
        record = wall_path.read_text() if wall_path.exists() else None
        wall_path.write_text(json.dumps({"seconds": before, "open_since": start}))
        refused = False
        try:
            train_and_evaluate(config, workdir, prepared=prepared[data_key], options=options,
                               teacher=teacher_for(config, progress=options.progress))
        except WorkdirInUse:
            refused = True
            raise
        finally:
            if not refused:
                wall_path.write_text(json.dumps({"seconds": before + time.time() - start}))
            elif record is None:
                wall_path.unlink()
            else:  # the live run there keeps its own record, open stretch and all
                wall_path.write_text(record)
        rows = write_results(root, names, split=split, budget_minutes=budget_minutes)
        done = next((row for row in rows if row["experiment"] == name), None)
        if done:
            print(f"[study] {name}: best validation accuracy {done['best_val_accuracy']:.4f} "
                  f"({done['epochs']:.1f} epochs, stopped by {done['stopped_by']})", file=sys.stderr)
