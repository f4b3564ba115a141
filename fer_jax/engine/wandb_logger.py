"""Weights & Biases logging that never blocks: no login means offline, and says so.

Only process 0 logs. Mode: online, offline or disabled (the commands' --wandb flag, or
the WANDB_MODE environment variable, which wins).
"""
from __future__ import annotations

import netrc
import os
import pathlib
import sys
from typing import Any

import numpy as np

from fer_jax.data.types import CLASS_NAMES


def _has_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return auth is not None


def resolve_mode(requested: str) -> tuple[str, str]:
    """The mode to use and, when it differs from the request, why."""
    mode = os.environ.get("WANDB_MODE", requested)
    if mode in ("dryrun",):
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        return "offline", f"unknown W&B mode {mode!r}; logging offline"
    if mode == "online" and not _has_login():
        return "offline", ("no W&B login found (WANDB_API_KEY or `wandb login`); logging offline, "
                           "sync later with `wandb sync`")
    return mode, ""


class RunLogger:
    def __init__(self, config: dict, workdir: pathlib.Path, *, mode: str, project: str,
                 tags: list[str], name: str, enabled: bool = True):
        self.run = None
        self.mode, why = resolve_mode(mode)
        if why:
            print(f"wandb: {why}", file=sys.stderr)
        if not enabled or self.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb
        self._wandb = wandb
        self.run = wandb.init(project=project, config=config, tags=tags, name=name,
                              dir=str(workdir), mode=self.mode, reinit="finish_previous",
                              settings=wandb.Settings(console="off", init_timeout=60))

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def log_final(self, *, confusion: np.ndarray, samples: dict | None, best_dir: str | None,
                  summary: dict, step: int) -> None:
        """The confusion matrix, a table of sample predictions, the best checkpoint artifact."""
        if self.run is None:
            return
        wandb = self._wandb
        confusion = np.asarray(confusion, dtype=np.int64)
        table = wandb.Table(columns=["true", "predicted", "count"],
                            data=[[CLASS_NAMES[i], CLASS_NAMES[j], int(confusion[i, j])]
                                  for i in range(len(CLASS_NAMES)) for j in range(len(CLASS_NAMES))])
        self.run.log({"confusion_matrix": wandb.plot_table(
            "wandb/confusion_matrix/v1", table, {"Actual": "true", "Predicted": "predicted",
                                                  "nPredictions": "count"},
            {"title": "confusion matrix (validation)"})}, step=step)
        if samples is not None:
            rows = [[wandb.Image(img), CLASS_NAMES[t], CLASS_NAMES[p], float(conf)]
                    for img, t, p, conf in zip(samples["images"], samples["labels"],
                                               samples["predictions"], samples["confidence"])]
            self.run.log({"sample_predictions": wandb.Table(
                columns=["image", "true", "predicted", "confidence"], data=rows)}, step=step)
        for key, value in summary.items():
            self.run.summary[key] = value
        if best_dir is not None:
            artifact = wandb.Artifact(f"{self.run.name or 'run'}-best".replace("/", "-"), type="model")
            artifact.add_dir(best_dir)
            self.run.log_artifact(artifact)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
