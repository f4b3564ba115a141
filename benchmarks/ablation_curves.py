"""Validation accuracy per epoch of several runs of one recipe, one line each: the
feature ablations' figure (docs/results/accuracy_plan.md).

    python benchmarks/ablation_curves.py OUT.png [--train-accuracy] LABEL=RUN_FOLDER [...]

RUN_FOLDER is a run's workdir: its summary.json when the run has finished, otherwise
the history in its newest complete checkpoint under checkpoints/latest (a run still
training, or stopped to be resumed). Each cut of a plateau schedule's rate is a dashed
vertical line in its run's colour, labelled with the scale after it. --train-accuracy
adds each run's training accuracy on its augmented batches as a dotted line (not for
Mixup or CutMix runs, whose batches have no single label per face).
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def history(run: pathlib.Path) -> list[dict]:
    summary = run / "summary.json"
    if summary.is_file():
        rows = json.loads(summary.read_text())["history"]
    else:
        from fer_jax.engine.checkpoint import LATEST, complete_steps, read_meta

        latest = run / "checkpoints" / LATEST
        steps = complete_steps(latest) if latest.is_dir() else []
        if not steps:
            sys.exit(f"{run}: neither summary.json nor a checkpoint under checkpoints/latest")
        rows = read_meta(latest / str(steps[-1]))["history"]
    return rows


def rate_cuts(rows: list[dict]) -> list[tuple[int, float]]:
    """(epoch, scale after it) for each epoch after which the plateau lowered the rate."""
    cuts, previous = [], 1.0
    for row in rows:
        scale = row.get("lr_scale", previous)
        if scale < previous:
            cuts.append((row["epoch"], scale))
        previous = scale
    return cuts


def main(out: str, runs: list[str], train_accuracy: bool = False) -> None:
    fig, (whole, end) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [spec.partition("=")[0] for spec in runs]
    histories = [history(pathlib.Path(spec.partition("=")[2])) for spec in runs]
    curves = [([r["epoch"] for r in rows], [100 * r["val_accuracy"] for r in rows]) for rows in histories]
    for label, rows, (epochs, accuracy) in zip(labels, histories, curves):
        for ax in (whole, end):
            line, = ax.plot(epochs, accuracy, marker=".", label=f"{label} (best {max(accuracy):.2f}%)")
            if train_accuracy:
                ax.plot(epochs, [100 * r["train_accuracy"] for r in rows], linestyle=":",
                        color=line.get_color(), label=f"{label}, training batches")
        for epoch, scale in rate_cuts(rows):
            whole.axvline(epoch + 0.5, color=line.get_color(), linestyle="--", alpha=0.5)
            whole.annotate(f"rate x{scale:g}", (epoch + 0.5, 0.98), xycoords=("data", "axes fraction"),
                           rotation=90, fontsize=7, color=line.get_color(), ha="right", va="top",
                           bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    whole.set_title("every epoch")
    end.set_title("the last ten epochs")
    last = max(max(epochs) for epochs, _ in curves)
    tail = [a for epochs, accuracy in curves for e, a in zip(epochs, accuracy) if e > last - 10]
    if train_accuracy:
        tail += [100 * r["train_accuracy"] for rows in histories for r in rows if r["epoch"] > last - 10]
    end.set_xlim(last - 9.5, last + 0.5)
    end.set_ylim(min(tail) - 0.3, max(tail) + 0.3)
    for ax in (whole, end):
        ax.set_xlabel("epoch")
        ax.set_ylabel("PublicTest accuracy (%)")
        ax.grid(alpha=0.3)
    whole.legend(fontsize=8, loc="lower right")  # the late epochs crowd the right panel
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--train-accuracy"]
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], args[1:], train_accuracy="--train-accuracy" in sys.argv[1:])
