"""Validation accuracy per epoch of several runs of one recipe, one line each: the
feature ablations' figure (docs/results/accuracy_plan.md).

    python benchmarks/ablation_curves.py OUT.png LABEL=RUN_FOLDER [LABEL=RUN_FOLDER ...]

RUN_FOLDER is a run's workdir: its summary.json when the run has finished, otherwise
the history in its newest complete checkpoint under checkpoints/latest (a run still
training, or stopped to be resumed).
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def history(run: pathlib.Path) -> tuple[list[int], list[float]]:
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
    return [r["epoch"] for r in rows], [100 * r["val_accuracy"] for r in rows]


def main(out: str, runs: list[str]) -> None:
    fig, (whole, end) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [spec.partition("=")[0] for spec in runs]
    curves = [history(pathlib.Path(spec.partition("=")[2])) for spec in runs]
    for label, (epochs, accuracy) in zip(labels, curves):
        for ax in (whole, end):
            ax.plot(epochs, accuracy, marker=".", label=f"{label} (best {max(accuracy):.2f}%)")
    whole.set_title("every epoch")
    end.set_title("the last ten epochs")
    last = max(max(epochs) for epochs, _ in curves)
    tail = [a for epochs, accuracy in curves for e, a in zip(epochs, accuracy) if e > last - 10]
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
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
