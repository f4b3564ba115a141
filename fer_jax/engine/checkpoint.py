"""Orbax checkpoints: the latest k for resuming, and separately the best by validation accuracy.

A checkpoint step holds three items:
- `variables`: params and batch_stats (all that evaluation and prediction need);
- `train`: step, AdamW state and plateau state (only for resuming; a release omits it);
- `meta`: JSON with the config, epoch and position in it, early-stopping state,
  normalization, the data set's identity and the history of epoch metrics.
Orbax's best_fn manager keeps the best N, not the latest, so resuming has a manager
of its own. Saves are asynchronous; `wait` must be called before exit or restore.
"""
from __future__ import annotations

import contextlib
import errno
import json
import pathlib
import shutil
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from fer_jax.checkout_packages import installed_release
from fer_jax.errors import UserError

LATEST = "latest"
BEST = "best"
ITEMS = ("variables", "train", "meta")


def _manager(directory: pathlib.Path, *, max_to_keep: int, best: bool, read_only: bool = False):
    # Both managers may save the same step; multi-host barriers are keyed by step, so
    # each manager needs its own prefix or the two saves collide.
    options = ocp.CheckpointManagerOptions(
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=BEST if best else LATEST),
        max_to_keep=max_to_keep,
        best_fn=(lambda metrics: metrics["val_accuracy"]) if best else None,
        best_mode="max",
        keep_checkpoints_without_metrics=not best,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def _to_numpy(tree: Any) -> Any:
    # A copy: on the CPU a fetched array may share memory with a device buffer that the
    # next (donating) train step overwrites while the async save is still writing it.
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


class DiskFull(UserError):
    """A checkpoint could not be written for lack of space; the complete ones are kept."""


# Orbax writes a step under this infix and renames it when the step is complete.
_TMP_INFIX = ".orbax-checkpoint-tmp"
# A save is begun only with this multiple of its arrays' bytes free (plus 1 MiB for the
# metadata): OCDBT's files are about the arrays' size.
_SPACE_MARGIN = 1.25


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, raised directly or wrapped (TensorStore reports RESOURCE_EXHAUSTED)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def complete_steps(directory: pathlib.Path) -> list[int]:
    """The steps whose folders Orbax has finished (renamed from their temporary name)."""
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit() and p.is_dir())


class RunCheckpoints:
    """The checkpoints of one run under WORKDIR/checkpoints/{latest,best}."""

    def __init__(self, workdir: str | pathlib.Path, keep_latest: int = 2):
        self.root = pathlib.Path(workdir).absolute() / "checkpoints"
        with self._disk_guard():
            self.latest = _manager(self.root / LATEST, max_to_keep=keep_latest, best=False)
            self.best = _manager(self.root / BEST, max_to_keep=1, best=True)

    @contextlib.contextmanager
    def _disk_guard(self) -> Iterator[None]:
        """A full disk becomes DiskFull, once Orbax's unfinished folders are removed."""
        try:
            yield
        except Exception as err:
            if not is_disk_full(err):
                raise
            self._disk_full()

    def _disk_full(self):
        for manager in (getattr(self, "latest", None), getattr(self, "best", None)):
            with contextlib.suppress(Exception):  # a failed save may raise again here
                manager.wait_until_finished()
        for tmp in sorted(self.root.rglob(f"*{_TMP_INFIX}*")):
            shutil.rmtree(tmp, ignore_errors=True)
        steps = complete_steps(self.root / LATEST)
        last = f"step {steps[-1]}" if steps else "none (nothing to resume yet)"
        raise DiskFull(f"disk full in {self.root}, the last complete checkpoint is {last}, "
                       "free space and rerun to resume") from None

    def _check_space(self, *trees) -> None:
        """DiskFull before a save that would not fit: Orbax's own failure comes from its
        background threads, with their tracebacks, after part of the step is written."""
        need = sum(np.asarray(x).nbytes for tree in trees for x in jax.tree.leaves(tree))
        if shutil.disk_usage(self.root).free < need * _SPACE_MARGIN + (1 << 20):
            self._disk_full()

    @staticmethod
    def _args(variables, train, meta):
        # Saves finish in a background thread while training goes on and changes META
        # (its position in the epoch above all): hand Orbax a snapshot, not the live dict.
        items = {"variables": ocp.args.StandardSave(_to_numpy(variables)),
                 "meta": ocp.args.JsonSave(json.loads(json.dumps(meta)))}
        if train is not None:
            items["train"] = ocp.args.StandardSave(_to_numpy(train))
        return ocp.args.Composite(**items)

    def save_latest(self, step: int, variables, train, meta: dict) -> None:
        self._check_space(variables, train)
        with self._disk_guard():
            self.latest.save(step, args=self._args(variables, train, meta), force=True)

    def save_best(self, step: int, variables, meta: dict, val_accuracy: float) -> None:
        self._check_space(variables)
        with self._disk_guard():
            self.best.save(step, args=self._args(variables, None, meta),
                           metrics={"val_accuracy": float(val_accuracy)}, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def latest_meta(self) -> dict:
        """The newest resumable checkpoint's metadata alone (checked before any array)."""
        return read_meta(self.latest.directory / str(self.latest.latest_step()))

    def restore_latest(self, variables_target, train_target) -> tuple[Any, Any, dict]:
        """Restores the newest resumable checkpoint onto the targets' structure."""
        step = self.latest.latest_step()
        try:
            restored = self.latest.restore(step, args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(variables_target),
                train=ocp.args.StandardRestore(train_target),
                meta=ocp.args.JsonRestore()))
        except Exception as err:  # Orbax raises many types for damaged or foreign folders.
            raise UserError(f"{self.latest.directory / str(step)}: cannot resume from this checkpoint "
                            f"({type(err).__name__}: {err}); it is damaged or from another model: "
                            "delete it or use another --workdir") from None
        return restored["variables"], restored["train"], dict(restored["meta"])

    def wait(self) -> None:
        with self._disk_guard():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            with self._disk_guard():
                self.latest.close()
                self.best.close()


def _is_step_dir(path: pathlib.Path) -> bool:
    return (path / "variables").is_dir() and (path / "meta").is_dir()


def _released_model(given: pathlib.Path) -> pathlib.Path:
    """release/NAME read from the installed package when the working directory has none,
    so that the shipped models are found outside a checkout too."""
    installed = installed_release(given)
    if installed is None:
        raise UserError(f"{given}: checkpoint folder not found")
    return installed


def resolve_checkpoint(given: str | pathlib.Path) -> pathlib.Path:
    """Finds the step folder to evaluate: a run's workdir gives its best checkpoint.

    The folder comes back absolute, since Orbax refuses to restore from a relative one."""
    path = pathlib.Path(given).absolute()
    if not path.exists():
        path = _released_model(pathlib.Path(given))
    if _is_step_dir(path):
        return path
    for candidate in (path / "checkpoints" / BEST, path / BEST, path):
        steps = sorted((p for p in candidate.glob("*") if p.name.isdigit() and _is_step_dir(p)),
                       key=lambda p: int(p.name)) if candidate.is_dir() else []
        if steps:
            return steps[-1]
    if (path / "checkpoints" / LATEST).is_dir():
        raise UserError(f"{path}: the run has no best checkpoint yet (it has not finished an "
                        "evaluation); point --checkpoint at checkpoints/latest to use its latest state")
    raise UserError(f"{path}: not a fer_jax checkpoint (expected a run workdir, a checkpoints folder, "
                    "or a step folder holding 'variables' and 'meta')")


def read_meta(step_dir: pathlib.Path) -> dict:
    try:
        return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta"))
    except Exception as err:  # Orbax raises many types for a damaged folder.
        raise UserError(f"{step_dir}: cannot read the checkpoint's metadata ({err})") from None


def restore_variables(step_dir: pathlib.Path, target: Any | None = None) -> Any:
    """Restores params and batch_stats as host arrays (any device count can use them)."""
    try:
        checkpointer = ocp.StandardCheckpointer()
        folder = pathlib.Path(step_dir).absolute() / "variables"
        restored = checkpointer.restore(folder, target) if target is not None \
            else checkpointer.restore(folder)
    except Exception as err:
        raise UserError(f"{step_dir}: cannot restore the model's variables ({err}); the checkpoint "
                        "is partial or of another model") from None
    return jax.tree.map(np.asarray, restored)
