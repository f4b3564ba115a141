"""Validation accuracy per epoch of several runs of one recipe, one line each: the
feature ablations' figure (docs/results/accuracy_plan.md).

    python benchmarks/ablation_curves.py OUT.png LABEL=RUN_FOLDER [LABEL=RUN_FOLDER ...]

RUN_FOLDER is a run's workdir (it holds summary.json, written by the trainer).
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def history(run: pathlib.Path) -> tuple[list[int], list[float]]:
    rows = json.loads((run / "summary.json").read_text())["history"]
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
