"""train_and_evaluate(config, workdir): a training run, resumable from its checkpoints.

The shape of flax/examples/imagenet/train.py: `create_train_state` builds the state
(fresh, resumed, or started from `init_from`), one input iterator feeds a loop indexed
by the global step, and what happens every so many steps is a small function each:
log (`_log_step`), the end of an epoch (`_end_epoch`: evaluate, step the plateau, keep
the best), a checkpoint (`_save`), the budget (`_budget_spent`). What the loop carries
from step to step is a `Loop`; what a resumed run needs of it is `Loop.meta`, saved
with every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from fer_jax import config as config_lib
from fer_jax import metrics as metrics_lib
from fer_jax.data import pipeline
from fer_jax.data.source import PreparedData, prepare_data
from fer_jax.data.types import CLASS_NAMES
from fer_jax.engine import optim
from fer_jax.engine.checkpoint import RunCheckpoints, read_meta, resolve_checkpoint, restore_variables
from fer_jax.engine.parallel import DATA_AXIS, StepRunner, run_devices
from fer_jax.engine.run_lock import locked_workdir
from fer_jax.engine.run_options import RunOptions
from fer_jax.engine.step import TrainState, init_variables, make_step_fns, new_state
from fer_jax.engine.wandb_logger import RunLogger
from fer_jax.errors import UserError
from fer_jax.models.classifier import Classifier
from fer_jax.models.from_config import build_model
from fer_jax.transfer import finetune

# Config keys that may change between a run and its resumption (they do not change
# what the run computes up to the point where it stopped).
RESUMABLE_CHANGES = ("epochs", "max_train_steps", "budget_minutes", "early_stopping_patience",
                     "description", "kernels")
SAMPLE_PREDICTIONS = 32  # validation faces shown with their predictions in W&B
# Distillation's teacher: (training faces uint8 (N, 48, 48), workdir) -> (N, classes) probabilities.
TeacherFn = Callable[[np.ndarray, pathlib.Path], np.ndarray]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunStopped(UserError):
    """SIGTERM or SIGINT stopped the run after saving it; exit status 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + int(signum)


@dataclasses.dataclass
class Run:
    """What stays fixed while the loop runs."""
    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    options: RunOptions
    prepared: PreparedData
    steps_per_epoch: int
    total_steps: int
    eval_batch: int
    runner: StepRunner
    optimizer: optim.Optimizer
    checkpoints: RunCheckpoints
    logger: RunLogger
    is_main: bool
    params_count: int
    norm: dict  # the training split's pixel mean and std
    teacher: np.ndarray | None = None  # distillation: the teachers' probabilities of the training rows


@dataclasses.dataclass
class Loop:
    """What the loop carries from step to step. META is what a checkpoint saves."""
    step: int
    meta: dict
    clock: Callable[[], float]
    process_start: float
    seconds_before: float  # meta["train_seconds"] when this process started
    device_sums: Any = None  # the epoch's loss and accuracy sums since the last fold
    unfolded_steps: int = 0  # the steps device_sums holds
    steps_here: int = 0  # steps of the current epoch trained by this process
    metrics: Any = None  # the last step's metrics (on the devices)
    checked_step: int = -1  # the step whose metrics were last checked to be finite
    last_train_loss: float | None = None
    data_wait: float = 0.0
    epoch_start: float = 0.0
    capped: bool = False
    done: bool = False

    def train_seconds(self) -> float:
        return self.seconds_before + self.clock() - self.process_start

    def add_step(self, metrics) -> None:
        sums = {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}
        self.device_sums = sums if self.device_sums is None else jax.tree.map(jnp.add, self.device_sums, sums)
        self.metrics = metrics
        self.step += 1
        self.unfolded_steps += 1
        self.steps_here += 1
        self.meta["batch_in_epoch"] += 1

    def fold_sums(self, runner: StepRunner) -> dict:
        """The epoch's running sums, this process's device sums added: saved with a
        checkpoint, so that a resumed epoch's train_loss averages all its steps."""
        carried = self.meta["epoch_sums"]
        if self.device_sums is not None:
            host = runner.to_host(self.device_sums)
            carried = {"loss": carried["loss"] + float(host["loss"]),
                       "accuracy": carried["accuracy"] + float(host["accuracy"]),
                       "steps": carried["steps"] + self.unfolded_steps}
            self.device_sums, self.unfolded_steps = None, 0
        self.meta["epoch_sums"] = carried
        return carried


_NO_SUMS = {"loss": 0.0, "accuracy": 0.0, "steps": 0}


class _StopRequest:
    """SIGTERM/SIGINT ask the loop to save and stop at the next step boundary."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------ config and meta

def _identity_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def _as_current(saved: dict, defaults: dict) -> dict:
    """SAVED in today's keys: keys added since count as their defaults, keys the project
    has dropped are left out. Open groups (model_kwargs) are kept whole."""
    merged = {}
    for key, default in defaults.items():
        value = saved.get(key, default)
        if isinstance(default, dict) and default and isinstance(value, dict):
            value = _as_current(value, default)
        merged[key] = value
    return merged


def _jsonable(tree: Any) -> Any:
    return json.loads(json.dumps(tree, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _new_meta(config: ml_collections.ConfigDict, prepared: PreparedData, norm: dict,
              imagenet: bool) -> dict:
    return {"config": _jsonable(config.to_dict()), "data": prepared.identity, "normalization": norm,
            "model": config.model, "init_from_kind": "imagenet" if imagenet else
            ("run" if config.init_from else ""),
            "epoch": 0, "batch_in_epoch": 0, "epoch_sums": dict(_NO_SUMS),
            "best_val_accuracy": -1.0, "epochs_since_best": 0, "stopped_early": False,
            "history": [], "synthetic": prepared.synthetic, "notice": prepared.notice,
            "train_seconds": 0.0, "started_at": time.time()}


def _split_state(state: TrainState) -> tuple[dict, dict]:
    """(variables, train) items of a checkpoint. With EMA on, the variables are the
    average (what was validated, what a release and init_from take) and the trained
    weights go with the optimizer state, needed only to resume."""
    train = {"step": state.step, "opt_state": state.opt_state, "plateau_state": state.plateau_state}
    if state.ema is not None:
        train.update(params=state.params, batch_stats=state.batch_stats)
    return dict(state.eval_variables), train


def _join_state(variables: dict, train: dict) -> TrainState:
    weights = train if "params" in train else variables
    return TrainState(step=train["step"], params=weights["params"],
                      batch_stats=weights["batch_stats"], opt_state=train["opt_state"],
                      plateau_state=train["plateau_state"],
                      ema=dict(variables) if "params" in train else None)


# ---------------------------------------------------------------------------- the state

def _check_resumable(saved: dict, meta: dict, workdir: pathlib.Path) -> None:
    """UserError unless WORKDIR's latest checkpoint (SAVED, its metadata) is this run's."""
    if saved.get("data", {}).get("fingerprint") != meta["data"]["fingerprint"]:
        raise UserError(f"{workdir}: holds a run on other data ({saved.get('data')}); "
                        "use another --workdir")
    defaults = _jsonable(config_lib.base_config().to_dict())
    saved_config = _as_current(config_lib.upgrade(saved["config"]), defaults)
    config = _as_current(meta["config"], defaults)
    if _identity_config(saved_config) != _identity_config(config):
        changed = sorted(k for k in set(saved_config) | set(config)
                         if k not in RESUMABLE_CHANGES and saved_config.get(k) != config.get(k))
        raise UserError(f"{workdir}: holds a run with a different config (keys {', '.join(changed)}); "
                        "use another --workdir or the same settings")


def _resume(checkpoints: RunCheckpoints, state: TrainState, meta: dict, workdir: pathlib.Path,
            *, announce: bool) -> TrainState:
    """The latest checkpoint's state; META takes its position, sums and history. The
    metadata is checked first, so a workdir of another run is refused before any array
    is read."""
    _check_resumable(checkpoints.latest_meta(), meta, workdir)
    variables, train, saved = checkpoints.restore_latest(*_split_state(state))
    meta.update({k: v for k, v in saved.items() if k != "config"})
    meta.setdefault("epoch_sums", dict(_NO_SUMS))
    state = _join_state(variables, train)
    epochs = meta["config"]["epochs"]
    if announce and (meta["epoch"] >= epochs or meta["stopped_early"]):
        # "Resuming from epoch 31" of a 30-epoch run reads like a bug; it is a finished run.
        why = "stopped early" if meta["stopped_early"] else f"all {epochs} epochs done"
        print(f"resuming from step {int(state.step)}: the run has finished ({why}); nothing left "
              "to train, evaluating its best checkpoint", file=sys.stderr)
    elif announce:
        print(f"resuming from step {int(state.step)} (epoch {meta['epoch'] + 1}, "
              f"batch {meta['batch_in_epoch']})", file=sys.stderr)
    return state


def _variables_from_run(path: str, fresh: dict, *, log: bool) -> dict:
    """params and batch_stats of another run's best checkpoint, checked against FRESH's shapes."""
    step_dir = resolve_checkpoint(path)
    variables = restore_variables(step_dir)
    want = jax.tree.map(lambda a: (a.shape, str(a.dtype)), fresh)
    got = jax.tree.map(lambda a: (a.shape, str(a.dtype)), {k: variables[k] for k in fresh})
    if want != got:
        model = (read_meta(step_dir).get("config") or {}).get("model", "?")
        raise UserError(f"init_from={path}: that checkpoint holds another network ({model}, or "
                        "other widths) than this run's model")
    if log:
        print(f"initialized from {step_dir}", file=sys.stderr)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def create_train_state(config, model, meta: dict, *, steps_per_epoch: int,
                       checkpoints: RunCheckpoints, workdir: pathlib.Path, log: bool
                       ) -> tuple[TrainState, optim.Optimizer, Callable]:
    """(state, optimizer, apply_fn) of the run: resumed from WORKDIR's latest checkpoint,
    else fresh from config.seed, with init_from's weights when it names any (a fer_jax
    run of the same network, or ImageNet weights for fine-tuning)."""
    resuming = checkpoints.latest_step() is not None
    imagenet = meta["init_from_kind"] == "imagenet"
    variables = init_variables(config, model)
    if imagenet and not resuming:
        variables = finetune.load_pretrained(
            variables, config.init_from, finetune.pretrained_arch(config), config.transfer.gray_to_rgb,
            pixel_norm=meta["normalization"] if config.transfer.imagenet_normalization else None,
            log=(lambda msg: print(msg, file=sys.stderr)) if log else (lambda msg: None))
    elif config.init_from and not resuming:
        variables = _variables_from_run(config.init_from, variables, log=log)
    labels = finetune.param_labels(variables["params"], config.transfer.freeze) if imagenet else None
    optimizer = optim.build_optimizer(config, steps_per_epoch, labels)
    state = new_state(variables, optimizer.tx, optimizer.plateau, ema=config.ema_decay > 0)
    if resuming:
        state = _resume(checkpoints, state, meta, workdir, announce=log)
    apply_fn = finetune.frozen_bn_apply(model.apply, config.transfer.freeze) if imagenet else model.apply
    return state, optimizer, apply_fn


# ------------------------------------------------------------------------------- setup

def _check_config(config) -> None:
    """Every choice the config makes, before the data is read and the state is built."""
    config_lib.validate(config)
    pipeline.AugmentConfig.from_mapping(config.augment)  # the augment.* keys
    finetune.check_transfer_config(config)


def _announce_data(prepared: PreparedData, epochs: int) -> None:
    if prepared.notice:
        print(prepared.notice, file=sys.stderr)
    if prepared.synthetic:  # `epochs` means what it says on any data; a try can be short
        print(f"training on the synthetic faces for all {epochs} epochs (--set epochs=3 for a "
              "short try)", file=sys.stderr)
    splits = prepared.splits
    print(f"data: {prepared.identity['name']} ({prepared.identity['source']}); {splits.description}; "
          f"train {len(splits.train)}, validation {len(splits.validation)}", file=sys.stderr)


def _batch_sizes(config, train_examples: int, eval_batch_size: int, devices: int) -> tuple[int, int]:
    """(steps per epoch, evaluation batch) for the run's DEVICES."""
    if config.batch_size % devices:
        raise UserError(f"batch_size {config.batch_size} must be divisible by the {devices} devices")
    steps = pipeline.steps_per_epoch(train_examples, config.batch_size)
    if steps == 0:
        raise UserError(f"the training split has {train_examples} examples, fewer than one batch "
                        f"of {config.batch_size}")
    return steps, max(eval_batch_size - eval_batch_size % devices, devices)


def _teacher_probabilities(config, teacher: TeacherFn | None, train, workdir: pathlib.Path
                           ) -> np.ndarray | None:
    """The teachers' (N, classes) probabilities of the training rows, when the run distills."""
    if not config.distill.alpha:
        return None
    if teacher is None:
        raise UserError("this config distills (distill.alpha > 0) but no teacher was given: train it "
                        "with python -m fer_jax.train, which loads distill.teachers")
    return pipeline.check_teacher_probabilities(teacher(train.images, workdir), len(train))


def _setup(config, workdir: pathlib.Path, options: RunOptions, prepared: PreparedData,
           teacher: TeacherFn | None = None) -> tuple[Run, TrainState, dict]:
    """The run's fixed parts, its (host) state and its metadata."""
    is_main = jax.process_index() == 0
    train = prepared.splits.train
    teacher_probabilities = _teacher_probabilities(config, teacher, train, workdir)
    devices = run_devices(options.cpu_devices)
    steps_per_epoch, eval_batch = _batch_sizes(config, len(train), options.eval_batch_size, len(devices))
    norm = pipeline.normalization_stats(train.images)
    meta = _new_meta(config, prepared, norm, finetune.is_imagenet_weights(config.init_from))
    checkpoints = RunCheckpoints(workdir, keep_latest=options.keep_checkpoints)
    if checkpoints.latest_step() is not None:  # as the run started, whatever the path is now
        meta["init_from_kind"] = checkpoints.latest_meta().get("init_from_kind", "")
    model = build_model(config, bn_axis_name=DATA_AXIS)
    state, optimizer, apply_fn = create_train_state(
        config, model, meta, steps_per_epoch=steps_per_epoch, checkpoints=checkpoints,
        workdir=workdir, log=is_main)
    class_weights = (jnp.asarray(pipeline.class_weights(train.labels))
                     if config.class_weighted_loss else None)
    train_fn, eval_fn = make_step_fns(
        apply_fn, optimizer.tx, class_weights, config.label_smoothing, config.eval_tta,
        learning_rate_fn=optimizer.learning_rate, mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha, ema_decay=config.ema_decay,
        image_size=config_lib.input_size(config), distill_alpha=config.distill.alpha,
        distill_temperature=config.distill.temperature)
    logger = RunLogger(meta["config"], workdir, mode=options.wandb_mode, project=options.wandb_project,
                       tags=[config.model, prepared.identity["name"], config.experiment or "adhoc",
                             *options.wandb_tags],
                       name=config.experiment or config.model, enabled=is_main)
    run = Run(config=config, workdir=workdir, options=options, prepared=prepared,
              steps_per_epoch=steps_per_epoch,
              total_steps=min(config.epochs * steps_per_epoch, config.max_train_steps or math.inf),
              eval_batch=eval_batch, runner=StepRunner(train_fn, eval_fn, options.parallel, devices=devices),
              optimizer=optimizer, checkpoints=checkpoints, logger=logger, is_main=is_main,
              params_count=int(sum(leaf.size for leaf in jax.tree.leaves(state.params))), norm=norm,
              teacher=teacher_probabilities)
    return run, state, meta


# ----------------------------------------------------------------------- periodic actions

def _agree(flag: bool) -> bool:
    """FLAG as process 0 sees it, on every process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _budget_spent(run: Run, seconds: float) -> bool:
    # Every process must stop at the same step: process 0's clock decides.
    budget = run.config.budget_minutes * 60.0
    return bool(budget) and _agree(seconds >= budget)


def _checked_metrics(run: Run, loop: Loop) -> dict | None:
    """The last step's metrics on the host, after the one check that loss and weights
    are finite (every log step and before every checkpoint)."""
    if loop.metrics is None:
        return None
    host = run.runner.to_host(loop.metrics)
    if loop.checked_step != loop.step:
        loss, weights_finite = float(host["loss"]), bool(host["params_finite"])
        if not (math.isfinite(loss) and weights_finite):
            raise TrainingDiverged(
                f"training diverged at step {loop.step}: loss {loss}, weights "
                f"{'finite' if weights_finite else 'NaN or infinite'}; stopped. The last good "
                f"checkpoint is kept in {run.workdir / 'checkpoints'}. Try a lower learning_rate "
                "or grad_clip_norm.")
        loop.checked_step, loop.last_train_loss = loop.step, loss
    return host


def _log_step(run: Run, loop: Loop, bar: tqdm) -> None:
    host = _checked_metrics(run, loop)
    bar.set_postfix(loss=f"{float(host['loss']):.3f}", acc=f"{float(host['accuracy']):.3f}",
                    lr=f"{float(host['learning_rate']):.2e}", refresh=False)
    run.logger.log({"train/step_loss": float(host["loss"]),
                    "train/learning_rate": float(host["learning_rate"]),
                    "train/lr_scale": float(host["lr_scale"])}, loop.step)


def _save(run: Run, loop: Loop, device_state) -> TrainState:
    """A resumable checkpoint of this step; returns the host state."""
    _checked_metrics(run, loop)
    loop.fold_sums(run.runner)
    loop.meta["train_seconds"] = loop.train_seconds()
    host_state = run.runner.to_host(device_state)
    variables, train = _split_state(host_state)
    run.checkpoints.save_latest(loop.step, variables, train, loop.meta)
    return host_state


def evaluate_split(runner: StepRunner, state, images, labels, *, batch_size: int, norm: dict) -> dict:
    """Loss and metrics over every example exactly once (padding masked out)."""
    total = None
    for batch in pipeline.eval_batches(images, labels, global_batch_size=batch_size, norm=norm,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
        sums = runner.eval(state, batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = runner.to_host(total)
    summary = metrics_lib.summarize_confusion(total["confusion"])
    summary["loss"] = float(total["loss_sum"] / max(total["count"], 1))
    return summary


def _epoch_record(run: Run, loop: Loop, val: dict, sums: dict, *, partial: bool) -> dict:
    epoch_wall = max(loop.clock() - loop.epoch_start, 1e-9)
    steps = sums["steps"]
    host = run.runner.to_host(loop.metrics) if loop.metrics is not None else None
    return {"epoch": loop.meta["epoch"] + 1, "step": loop.step, "val_loss": val["loss"],
            "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "train_loss": sums["loss"] / steps if steps else None,
            "train_accuracy": sums["accuracy"] / steps if steps else None,
            "train_steps_since_start": loop.steps_here,
            "learning_rate": float(host["learning_rate"]) if host is not None else None,
            "elapsed_seconds": loop.train_seconds(),
            # Wall clock since the run first started (compilation, evaluation and any
            # pause between resumptions included): time to accuracy.
            "wall_seconds": time.time() - loop.meta["started_at"],
            "partial_epoch": partial,
            # An upper bound of the stall: dispatch is asynchronous, so part of this wait
            # overlaps the device's work on the previous step.
            "data_wait_fraction": loop.data_wait / epoch_wall,
            "train_images_per_second": loop.steps_here * run.config.batch_size / epoch_wall}


def _validate_and_record(run: Run, loop: Loop, device_state, *, partial: bool):
    """Validation of the state now, the epoch's record and checkpoints: the latest, and
    the best if it is. A partial epoch (a cap or the budget mid-epoch) is recorded for
    reporting only: the plateau and early stopping are per-epoch decisions, so resuming
    it changes nothing."""
    split = run.prepared.splits.validation
    val = evaluate_split(run.runner, device_state, split.images, split.labels,
                         batch_size=run.eval_batch, norm=run.norm)
    sums = loop.fold_sums(run.runner)
    record = _epoch_record(run, loop, val, sums, partial=partial)
    meta = loop.meta
    host_state = run.runner.to_host(device_state)
    if not partial:
        plateau_state = run.optimizer.plateau_step(host_state.plateau_state, val["loss"])
        host_state = host_state.replace(plateau_state=jax.tree.map(np.asarray, plateau_state))
        device_state = run.runner.to_devices(host_state)
        record["lr_scale"] = float(plateau_state.scale)
        if val["accuracy"] > meta["best_val_accuracy"]:
            meta["best_val_accuracy"], meta["epochs_since_best"] = val["accuracy"], 0
        else:
            meta["epochs_since_best"] += 1
        patience = run.config.early_stopping_patience
        meta["stopped_early"] = bool(patience) and meta["epochs_since_best"] >= patience
        meta["epoch"], meta["batch_in_epoch"], meta["epoch_sums"] = meta["epoch"] + 1, 0, dict(_NO_SUMS)
    best_so_far = max((h["val_accuracy"] for h in meta["history"]), default=-1.0)
    meta["history"].append(record)
    meta["train_seconds"] = record["elapsed_seconds"]
    _report_epoch(run, record, val, host_state)
    _checked_metrics(run, loop)
    variables, train = _split_state(host_state)
    run.checkpoints.save_latest(loop.step, variables, train, meta)
    if val["accuracy"] > best_so_far:
        run.checkpoints.save_best(loop.step, variables, {**meta, "val_metrics": val}, val["accuracy"])
    return device_state


def _report_epoch(run: Run, record: dict, val: dict, host_state: TrainState) -> None:
    lr_scale = float(host_state.plateau_state.scale)
    if run.is_main:
        # The training accuracy is over the augmented (and mixed) batches, with dropout; the
        # scale is the plateau's after this epoch, so a cut shows on the epoch that made it.
        fit = (f"train_acc {record['train_accuracy']:.4f}, "
               if record["train_accuracy"] is not None else "")
        print(f"epoch {record['epoch']}: val_loss {val['loss']:.4f} val_acc {val['accuracy']:.4f} "
              f"macro_f1 {val['macro_f1']:.4f}; {fit}lr_scale {lr_scale:.3g}; "
              f"train {record['train_images_per_second']:.0f} img/s, "
              f"waiting for data {record['data_wait_fraction']:.1%}"
              + (" (partial epoch)" if record["partial_epoch"] else ""), file=sys.stderr)
    run.logger.log({"epoch": record["epoch"], "val/loss": val["loss"], "val/accuracy": val["accuracy"],
                    "val/macro_f1": val["macro_f1"], "train/loss": record["train_loss"],
                    "train/accuracy": record["train_accuracy"],
                    "train/lr_scale": lr_scale,
                    **{f"val/recall_{c}": val["per_class"][c]["recall"] for c in CLASS_NAMES}},
                   record["step"])


def _end_epoch(run: Run, loop: Loop, device_state):
    device_state = _validate_and_record(run, loop, device_state, partial=False)
    loop.steps_here, loop.data_wait, loop.epoch_start = 0, 0.0, loop.clock()
    if loop.meta["stopped_early"]:
        if run.is_main:
            print(f"early stopping: no better validation accuracy for "
                  f"{run.config.early_stopping_patience} epochs", file=sys.stderr)
        loop.done = True
    return device_state


def _stop_on_request(run: Run, loop: Loop, stop: _StopRequest, device_state, *, saved: bool) -> None:
    if not saved:
        _save(run, loop, device_state)
    raise RunStopped(f"stopped at step {loop.step} on request; checkpoint saved in "
                     f"{run.workdir / 'checkpoints'}; run the same command to resume", stop.signum)


def _after_step(run: Run, loop: Loop, device_state, stop: _StopRequest, bar: tqdm):
    """The periodic actions after a train step; sets loop.done when the run stops here."""
    end_of_epoch = loop.meta["batch_in_epoch"] == run.steps_per_epoch
    log_step = loop.step % run.options.log_every_steps == 0
    cap = loop.step >= run.total_steps
    if log_step or end_of_epoch or cap:
        _log_step(run, loop, bar)
    if end_of_epoch:
        device_state = _end_epoch(run, loop, device_state)
        if stop.requested:
            _stop_on_request(run, loop, stop, device_state, saved=True)
        loop.capped = loop.capped or (cap and loop.step < run.config.epochs * run.steps_per_epoch)
    elif stop.requested:
        _stop_on_request(run, loop, stop, device_state, saved=False)
    elif cap or (log_step and _budget_spent(run, loop.train_seconds())):
        loop.capped = loop.done = True
        device_state = _validate_and_record(run, loop, device_state, partial=True)
    elif run.options.checkpoint_every_steps and loop.step % run.options.checkpoint_every_steps == 0:
        _save(run, loop, device_state)
    loop.done = loop.done or cap
    return device_state


# -------------------------------------------------------------------------------- loop

def _input_stream(run: Run, loop: Loop):
    """One iterator over every batch the run has left, from its current position."""
    config, train = run.config, run.prepared.splits.train
    return pipeline.train_batches(
        train.images, train.labels, global_batch_size=config.batch_size, seed=config.seed,
        epoch=loop.meta["epoch"], epochs=config.epochs - loop.meta["epoch"],
        start_batch=loop.meta["batch_in_epoch"], augment=pipeline.AugmentConfig.from_mapping(config.augment),
        balanced=config.balanced_sampling, norm=run.norm, teacher=run.teacher,
        process_index=jax.process_index(), process_count=jax.process_count())


def _train(run: Run, state: TrainState, meta: dict, stop: _StopRequest) -> Loop:
    """The step-indexed loop, from the state's step to the run's last."""
    clock = run.options.clock
    loop = Loop(step=int(state.step), meta=meta, clock=clock, process_start=clock(),
                seconds_before=meta["train_seconds"], epoch_start=clock())
    if meta["stopped_early"] or loop.step >= run.total_steps:
        loop.capped = loop.step < run.config.epochs * run.steps_per_epoch and not meta["stopped_early"]
        return loop
    device_state = run.runner.to_devices(state)
    rng = jax.random.PRNGKey(run.config.seed)
    batches = _input_stream(run, loop)
    bar = tqdm(total=run.total_steps, initial=loop.step, unit="batch", file=sys.stderr,
               disable=not (run.options.progress and run.is_main), dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    first_step = loop.step
    try:
        while not loop.done:
            # Between epochs and when the process starts, the saved count decides, not the
            # clock: a rerun of the same command then makes the same decision, and a run
            # that stops here has recorded the budget as spent.
            if (meta["batch_in_epoch"] == 0 or loop.step == first_step) and \
                    _budget_spent(run, meta["train_seconds"]):
                if run.is_main:
                    print(f"training budget of {run.config.budget_minutes:g} minutes spent; stopped",
                          file=sys.stderr)
                loop.capped = True
                break
            if meta["batch_in_epoch"] == 0 or loop.step == first_step:
                bar.set_description(f"epoch {meta['epoch'] + 1}/{run.config.epochs}", refresh=False)
            wait_start = clock()
            batch = next(batches)
            loop.data_wait += clock() - wait_start
            device_state, metrics = run.runner.train(device_state, batch, rng)
            loop.add_step(metrics)
            bar.update(1)
            device_state = _after_step(run, loop, device_state, stop, bar)
    finally:
        bar.close()
        del batches  # the run's one iterator: its threads are joined here, once
    return loop


# ------------------------------------------------------------------------------ finish

def _log_best_to_wandb(run: Run, best_dir: pathlib.Path, summary: dict, step: int) -> None:
    """The best checkpoint's confusion matrix, sample predictions and the checkpoint itself.

    Every process restores the checkpoint (Orbax's restore synchronizes the processes of
    a multi-host run; process 0 alone waited at its barrier forever); process 0 logs."""
    if not _agree(run.logger.active):
        return
    variables, meta = restore_variables(best_dir), read_meta(best_dir)
    if not run.logger.active:
        return
    validation = run.prepared.splits.validation
    images = validation.images[:SAMPLE_PREDICTIONS]
    probs = Classifier(build_model(run.config), variables, run.norm, batch_size=max(len(images), 1),
                       crop=run.config.augment.random_crop).probabilities(images)
    samples = {"images": images, "labels": validation.labels[:SAMPLE_PREDICTIONS],
               "predictions": probs.argmax(-1), "confidence": probs.max(-1)}
    run.logger.log_final(confusion=np.array(meta["val_metrics"]["confusion_matrix"]), samples=samples,
                         best_dir=str(best_dir), step=step,
                         summary={k: v for k, v in summary.items() if k != "history"})


def _stopped_by(run: Run, loop: Loop) -> str:
    """Why the loop ended: early_stopping, schedule_end (every epoch trained), max_train_steps or budget."""
    if loop.meta["stopped_early"]:
        return "early_stopping"
    if not loop.capped:
        return "schedule_end"
    cap = run.config.max_train_steps
    return "max_train_steps" if cap and loop.step >= cap else "budget"


def _summary(run: Run, loop: Loop) -> dict:
    best_step = run.checkpoints.best.best_step()
    best_dir = run.workdir / "checkpoints" / "best" / str(best_step) if best_step is not None else None
    history = loop.meta["history"]
    best = max(history, key=lambda h: h["val_accuracy"]) if history else None
    summary = {
        "experiment": run.config.experiment, "model": run.config.model, "data": run.prepared.identity,
        "synthetic": run.prepared.synthetic, "steps": loop.step, "steps_per_epoch": run.steps_per_epoch,
        "epochs_completed": loop.meta["epoch"], "stopped_early": loop.meta["stopped_early"],
        "capped": loop.capped, "stopped_by": _stopped_by(run, loop),
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "best_checkpoint": str(best_dir) if best_dir else None, "params": run.params_count,
        "train_seconds": loop.meta["train_seconds"], "devices": len(run.runner.devices),
        "processes": jax.process_count(), "last_train_loss": loop.last_train_loss, "history": history}
    if run.prepared.notice:
        summary["notice"] = run.prepared.notice
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       options: RunOptions | None = None, data_path: str | None = None,
                       prepared: PreparedData | None = None, progress: bool = True,
                       teacher: TeacherFn | None = None) -> dict:
    """Trains (resuming from WORKDIR's latest checkpoint), validates every epoch, keeps the best.

    TEACHER: for a config that distills, the function from the training split's uint8
    faces (and WORKDIR, where it may cache) to the teachers' probabilities of them
    (fer_jax.distillation.teacher_for builds it from distill.teachers).

    Returns the run's summary (also written to WORKDIR/summary.json). The folder is
    locked for the run: a second run into it is refused at once.
    """
    options = options or RunOptions()
    if not progress:
        options = dataclasses.replace(options, progress=False)
    workdir = pathlib.Path(workdir)
    _check_config(config)
    is_main = jax.process_index() == 0
    with locked_workdir(workdir, take=is_main):
        prepared = prepared or prepare_data(config.data, data_path, skip_bad_rows=options.skip_bad_rows)
        if is_main:
            _announce_data(prepared, config.epochs)
        run, state, meta = _setup(config, workdir, options, prepared, teacher)
        try:
            with _StopRequest() as stop:
                loop = _train(run, state, meta, stop)
            run.checkpoints.wait()
            summary = _summary(run, loop)
            if is_main:
                (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
            if summary["best_checkpoint"]:
                _log_best_to_wandb(run, pathlib.Path(summary["best_checkpoint"]), summary, loop.step)
        finally:
            # Async saves in flight are finished, so the last good checkpoint is complete.
            run.logger.finish()
            run.checkpoints.close()
    return summary
