"""train_and_evaluate(config, workdir): the whole training run, resumable from its checkpoints."""
from __future__ import annotations

import json
import math
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from fer_jax import metrics as metrics_lib
from fer_jax.config import base_config
from fer_jax.data import pipeline
from fer_jax.data.source import PreparedData, prepare_data
from fer_jax.data.types import CLASS_NAMES
from fer_jax.engine import optim
from fer_jax.engine.checkpoint import RunCheckpoints
from fer_jax.engine.parallel import DATA_AXIS, StepRunner
from fer_jax.engine.step import TrainState, check_eval_tta, init_state, make_step_fns
from fer_jax.engine.wandb_logger import RunLogger
from fer_jax.errors import UserError
from fer_jax.inference.classifier import Classifier
from fer_jax.inference.loading import build_model
from fer_jax.transfer import finetune

# Config keys that may change between a run and its resumption (they do not change
# what the run computes up to the point where it stopped).
RESUMABLE_CHANGES = ("epochs", "max_train_steps", "budget_minutes", "cpu_devices", "wandb", "log_every_steps", "checkpoint",
                     "early_stopping_patience", "description", "parallel", "eval_batch_size")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _identity_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """SAVED with the keys it lacks taken from DEFAULTS, recursively."""
    merged = dict(defaults)
    for key, value in saved.items():
        merged[key] = (_with_defaults(value, defaults[key])
                       if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value)
    return merged


def _jsonable(tree: Any) -> Any:
    return json.loads(json.dumps(tree, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _split_state(state: TrainState) -> tuple[dict, dict]:
    return ({"params": state.params, "batch_stats": state.batch_stats},
            {"step": state.step, "opt_state": state.opt_state, "plateau_state": state.plateau_state})


def _join_state(variables: dict, train: dict) -> TrainState:
    return TrainState(step=train["step"], params=variables["params"],
                      batch_stats=variables["batch_stats"], opt_state=train["opt_state"],
                      plateau_state=train["plateau_state"])


class _StopRequest:
    """SIGTERM/SIGINT ask the loop to save and stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = {}

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
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def evaluate_split(runner: StepRunner, state, images, labels, *, batch_size: int, norm: dict) -> dict:
    """Loss and metrics over every example exactly once (padding masked out)."""
    total = None
    for batch in pipeline.eval_batches(images, labels, global_batch_size=batch_size, norm=norm,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
        sums = runner.eval(state, batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = runner.to_host(total) if runner.mode == "jit" else jax.tree.map(np.asarray, total)
    summary = metrics_lib.summarize_confusion(total["confusion"])
    summary["loss"] = float(total["loss_sum"] / max(total["count"], 1))
    return summary


def _agree(flag: bool) -> bool:
    """FLAG as process 0 sees it, on every process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _check_finite(metrics: dict, step: int, workdir: pathlib.Path) -> None:
    loss, weights_finite = float(metrics["loss"]), bool(metrics["params_finite"])
    if not (math.isfinite(loss) and weights_finite):
        raise TrainingDiverged(
            f"training diverged at step {step}: loss {loss}, weights "
            f"{'finite' if weights_finite else 'NaN or infinite'}; stopped. The last good checkpoint "
            f"is kept in {workdir / 'checkpoints'}. Try a lower learning_rate or grad_clip_norm.")


def _sample_predictions(config, state_vars, prepared: PreparedData, norm: dict, count: int) -> dict:
    model = build_model(config)
    images = prepared.splits.validation.images[:count]
    probs = Classifier(model, state_vars, norm, batch_size=max(count, 1)).probabilities(images)
    return {"images": images, "labels": prepared.splits.validation.labels[:count],
            "predictions": probs.argmax(-1), "confidence": probs.max(-1)}


def _log_best_to_wandb(logger: RunLogger, config, best_dir: pathlib.Path, prepared: PreparedData,
                       norm: dict, summary: dict, step: int) -> None:
    """The best checkpoint's confusion matrix, sample predictions and the checkpoint itself."""
    from fer_jax.engine.checkpoint import read_meta, restore_variables
    samples = _sample_predictions(config, restore_variables(best_dir), prepared, norm,
                                  config.wandb.num_sample_predictions)
    confusion = np.array(read_meta(best_dir)["val_metrics"]["confusion_matrix"])
    logger.log_final(confusion=confusion, samples=samples, best_dir=str(best_dir),
                     summary={k: v for k, v in summary.items() if k != "history"}, step=step)


def _resume(checkpoints: RunCheckpoints, state: TrainState, meta: dict, data_identity: dict,
            workdir: pathlib.Path, *, announce: bool) -> TrainState:
    """The latest checkpoint's state; META takes its position and history.

    The saved metadata is checked first, so a workdir of another run is refused before
    any array is read.
    """
    saved = checkpoints.latest_meta()
    if saved.get("data", {}).get("fingerprint") != data_identity["fingerprint"]:
        raise UserError(f"{workdir}: holds a run on other data ({saved.get('data')}); "
                        "use another --workdir")
    config_dict = meta["config"]
    # Keys added to the project since the run started count as their defaults.
    saved_config = _with_defaults(saved["config"], _jsonable(base_config().to_dict()))
    if _identity_config(saved_config) != _identity_config(config_dict):
        changed = sorted(k for k in set(saved_config) | set(config_dict)
                         if k not in RESUMABLE_CHANGES and saved_config.get(k) != config_dict.get(k))
        raise UserError(f"{workdir}: holds a run with a different config (keys {', '.join(changed)}); "
                        "use another --workdir or the same settings")
    variables, train, saved = checkpoints.restore_latest(*_split_state(state))
    meta.update({k: v for k, v in saved.items() if k != "config"})
    state = _join_state(variables, train)
    if announce and (meta["epoch"] >= config_dict["epochs"] or meta["stopped_early"]):
        # "Resuming from epoch 31" of a 30-epoch run reads like a bug; it is a finished run.
        why = "stopped early" if meta["stopped_early"] else f"all {config_dict['epochs']} epochs done"
        print(f"resuming from step {int(state.step)}: the run has finished ({why}); nothing left "
              "to train, evaluating its best checkpoint", file=sys.stderr)
    elif announce:
        print(f"resuming from step {int(state.step)} (epoch {meta['epoch'] + 1}, "
              f"batch {meta['batch_in_epoch']})", file=sys.stderr)
    return state


def _variables_from_run(path: str, state: TrainState, *, log: bool) -> dict:
    """params and batch_stats of another run's best checkpoint, checked against STATE's shapes."""
    from fer_jax.engine.checkpoint import read_meta, resolve_checkpoint, restore_variables
    step_dir = resolve_checkpoint(path)
    variables = restore_variables(step_dir)
    want = jax.tree.map(lambda a: (a.shape, str(a.dtype)), state.variables)
    got = jax.tree.map(lambda a: (a.shape, str(a.dtype)), variables)
    if want != got:
        model = (read_meta(step_dir).get("config") or {}).get("model", "?")
        raise UserError(f"init_from={path}: that checkpoint holds another network ({model}, or "
                        "other widths) than this run's model")
    if log:
        print(f"initialized from {step_dir}", file=sys.stderr)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       data_path: str | None = None, prepared: PreparedData | None = None,
                       progress: bool = True) -> dict:
    """Trains (resuming from WORKDIR's latest checkpoint), validates every epoch, keeps the best.

    Returns the run's summary (also written to WORKDIR/summary.json).
    """
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    # Choices the config names are checked before the data is read and the state is built.
    check_eval_tta(config.get("eval_tta", "none"))
    optim.check_lr_schedule(config.get("lr_schedule", "constant"))
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepared or prepare_data(config.data, data_path)
    if prepared.synthetic and config.epochs > config.data.synthetic_epochs:
        config = ml_collections.ConfigDict(config.to_dict())
        config.epochs = config.data.synthetic_epochs
        if is_main:
            print(f"training on synthetic data: epochs capped at data.synthetic_epochs="
                  f"{config.epochs}", file=sys.stderr)
    splits = prepared.splits
    if prepared.notice and is_main:
        print(prepared.notice, file=sys.stderr)
    if is_main:
        print(f"data: {prepared.identity['name']} ({prepared.identity['source']}); {splits.description}; "
              f"train {len(splits.train)}, validation {len(splits.validation)}", file=sys.stderr)

    global_batch = config.batch_size
    if global_batch % jax.device_count():
        raise UserError(f"batch_size {global_batch} must be divisible by the {jax.device_count()} devices")
    eval_batch = max(config.eval_batch_size - config.eval_batch_size % jax.device_count(),
                     jax.device_count())
    norm = pipeline.normalization_stats(splits.train.images)
    class_weights = (jnp.asarray(pipeline.class_weights(splits.train.labels))
                     if config.class_weighted_loss else None)
    augment = pipeline.AugmentConfig.from_mapping(config.augment)

    model = build_model(config, bn_axis_name=DATA_AXIS)
    pretrained = bool(config.transfer.init_from)
    if config.transfer.freeze and not pretrained:
        raise UserError("transfer.freeze is set but transfer.init_from is empty: there are no "
                        "pretrained weights to keep frozen")
    steps_per_epoch = pipeline.steps_per_epoch(len(splits.train), global_batch)
    if steps_per_epoch == 0:
        raise UserError(f"the training split has {len(splits.train)} examples, fewer than one batch "
                        f"of {global_batch}")
    tx = (finetune.make_finetune_optimizer(config) if pretrained
          else optim.make_optimizer(config, steps_per_epoch))
    plateau = optim.make_plateau(config)
    state = init_state(config, model, tx, plateau)

    config_dict = _jsonable(config.to_dict())
    meta = {"config": config_dict, "data": prepared.identity, "normalization": norm,
            "model": config.model, "epoch": 0, "batch_in_epoch": 0,
            "best_val_accuracy": -1.0, "epochs_since_best": 0, "stopped_early": False,
            "history": [], "synthetic": prepared.synthetic, "notice": prepared.notice,
            "train_seconds": 0.0, "started_at": time.time()}
    checkpoints = RunCheckpoints(workdir, keep_latest=config.checkpoint.keep_latest)
    if pretrained and checkpoints.latest_step() is None:  # a resumed run has them already
        loaded = finetune.load_pretrained(
            state.variables, config.transfer.init_from, finetune.pretrained_arch(config),
            config.transfer.gray_to_rgb,
            pixel_norm=norm if config.transfer.imagenet_normalization else None,
            log=(lambda msg: print(msg, file=sys.stderr)) if is_main else None)
        state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"])
    if config.init_from and checkpoints.latest_step() is None:
        if pretrained:
            raise UserError("set init_from or transfer.init_from, not both")
        state = state.replace(**_variables_from_run(config.init_from, state, log=is_main))
    if checkpoints.latest_step() is not None:
        state = _resume(checkpoints, state, meta, prepared.identity, workdir, announce=is_main)

    apply_fn = finetune.frozen_bn_apply(model.apply, config.transfer.freeze) if pretrained else model.apply
    train_fn, eval_fn = make_step_fns(apply_fn, tx, class_weights, config.label_smoothing,
                                      config.get("eval_tta", "none"))
    runner = StepRunner(train_fn, eval_fn, config.parallel)
    device_state = runner.to_devices(state)
    rng = jax.random.PRNGKey(config.seed)
    logger = RunLogger(config_dict, workdir, mode=config.wandb.mode, project=config.wandb.project,
                       tags=[config.model, prepared.identity["name"], config.wandb.experiment_type],
                       name=config.experiment or config.model, enabled=is_main)

    step = int(state.step)
    max_steps = config.max_train_steps or None
    capped = False
    last_good_loss = None

    def save_latest(st):
        variables, train = _split_state(runner.to_host(st))
        checkpoints.save_latest(step, variables, train, meta)

    def validate(st) -> dict:
        return evaluate_split(runner, st, splits.validation.images, splits.validation.labels,
                              batch_size=eval_batch, norm=norm)

    start_time = time.time()
    train_seconds_before = meta["train_seconds"]
    releases = []  # helper threads dropping finished epochs' input iterators
    budget_seconds = config.budget_minutes * 60.0

    def train_seconds_now() -> float:
        return train_seconds_before + time.time() - start_time

    def over_budget(spent: float) -> bool:
        # Every process must stop at the same step: process 0's clock decides.
        return bool(budget_seconds) and _agree(spent >= budget_seconds)

    try:
        with _StopRequest() as stop:
            while meta["epoch"] < config.epochs and not meta["stopped_early"]:
                # Between epochs the saved count decides, not the clock: a rerun of the same
                # command then makes the same decision, and a run that stops here has
                # recorded the budget as spent.
                if over_budget(meta["train_seconds"]):
                    capped = True
                    if is_main:
                        print(f"training budget of {config.budget_minutes:g} minutes spent; stopped",
                              file=sys.stderr)
                    break
                epoch = meta["epoch"]
                batches = pipeline.train_batches(
                    splits.train.images, splits.train.labels, global_batch_size=global_batch,
                    seed=config.seed, epoch=epoch, augment=augment, balanced=config.balanced_sampling,
                    norm=norm, start_batch=meta["batch_in_epoch"], process_index=jax.process_index(),
                    process_count=jax.process_count())
                bar = tqdm(total=steps_per_epoch, initial=meta["batch_in_epoch"], unit="batch",
                           desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and is_main),
                           file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
                # Summed on the device every step, fetched once: the epoch's mean train metrics.
                epoch_sums, epoch_steps = None, 0
                # Time the loop spends waiting for the input pipeline, against the epoch's
                # wall time: the pipeline must not starve the step.
                data_wait, epoch_start = 0.0, time.time()
                batches = iter(batches)
                tick, tick_images = time.time(), 0
                step_metrics = None
                while True:
                    wait_start = time.time()
                    batch = next(batches, None)
                    data_wait += time.time() - wait_start
                    if batch is None:
                        break
                    device_state, step_metrics = runner.train(device_state, batch, rng)
                    sums_now = {"loss": step_metrics["loss"], "accuracy": step_metrics["accuracy"]}
                    epoch_sums = sums_now if epoch_sums is None else jax.tree.map(jnp.add, epoch_sums, sums_now)
                    epoch_steps += 1
                    step += 1
                    meta["batch_in_epoch"] += 1
                    tick_images += global_batch
                    bar.update(1)
                    if step % config.log_every_steps == 0 or meta["batch_in_epoch"] == steps_per_epoch:
                        m = runner.to_host(step_metrics)
                        loss = float(m["loss"])
                        _check_finite(m, step, workdir)
                        last_good_loss = loss
                        now = time.time()
                        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{float(m['accuracy']):.3f}",
                                        img_s=f"{tick_images / max(now - tick, 1e-9):.0f}")
                        logger.log({"train/step_loss": loss, "train/lr_scale": float(m["lr_scale"])}, step)
                        tick, tick_images = now, 0
                    stopping = bool((max_steps and step >= max_steps) or stop.requested or (
                        step % config.log_every_steps == 0 and over_budget(train_seconds_now())))
                    # A stopping step is saved below, once (Orbax refuses a step twice).
                    if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0 \
                            and meta["batch_in_epoch"] < steps_per_epoch and not stopping:
                        _check_finite(runner.to_host(step_metrics), step, workdir)
                        meta["train_seconds"] = train_seconds_now()
                        save_latest(device_state)
                    if stopping:
                        capped = True
                        break
                bar.close()
                holder = [batches]
                del batches  # the iterator's last reference is the holder's
                releases.append(pipeline.release_in_background(holder))
                if meta["batch_in_epoch"] and step_metrics is not None:
                    _check_finite(runner.to_host(step_metrics), step, workdir)
                end_of_epoch = meta["batch_in_epoch"] >= steps_per_epoch
                if not end_of_epoch and stop.requested:
                    meta["train_seconds"] = train_seconds_now()
                    save_latest(device_state)
                    raise UserError(f"stopped at step {step} on request; checkpoint saved in "
                                    f"{workdir / 'checkpoints'}; run the same command to resume")

                train_wall = max(time.time() - epoch_start, 1e-9)
                val = validate(device_state)
                train_means = ({k: float(v) / epoch_steps for k, v in runner.to_host(epoch_sums).items()}
                               if epoch_steps else {"loss": None, "accuracy": None})
                record = {"epoch": epoch + 1, "step": step, "val_loss": val["loss"],
                          "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                          "train_loss": train_means["loss"], "train_accuracy": train_means["accuracy"],
                          "train_steps_this_session": epoch_steps,
                          "elapsed_seconds": train_seconds_now(),
                          # Wall clock since the run first started (compilation, evaluation
                          # and any pause between sessions included): time to accuracy.
                          "wall_seconds": time.time() - meta.get("started_at", start_time),
                          "partial_epoch": not end_of_epoch,
                          # An upper bound of the stall: dispatch is asynchronous, so part of
                          # this wait overlaps the device's work on the previous step.
                          "data_wait_fraction": data_wait / train_wall,
                          "train_images_per_second": epoch_steps * global_batch / train_wall}
                host_state = runner.to_host(device_state)
                if end_of_epoch:
                    # Plateau and early stopping are per-epoch decisions: a capped, partial
                    # epoch is validated for reporting only, so resuming it changes nothing.
                    plateau_state = optim.plateau_step(config, host_state.plateau_state, val["loss"])
                    host_state = host_state.replace(plateau_state=jax.tree.map(np.asarray, plateau_state))
                    device_state = runner.to_devices(host_state)
                    record["lr_scale"] = float(plateau_state.scale)
                    if val["accuracy"] > meta["best_val_accuracy"]:
                        meta["best_val_accuracy"], meta["epochs_since_best"] = val["accuracy"], 0
                    else:
                        meta["epochs_since_best"] += 1
                    if config.early_stopping_patience and \
                            meta["epochs_since_best"] >= config.early_stopping_patience:
                        meta["stopped_early"] = True
                    meta["epoch"], meta["batch_in_epoch"] = epoch + 1, 0
                meta["history"].append(record)
                meta["train_seconds"] = record["elapsed_seconds"]
                if is_main:
                    msg = (f"epoch {epoch + 1}: val_loss {val['loss']:.4f} val_acc {val['accuracy']:.4f} "
                           f"macro_f1 {val['macro_f1']:.4f}; train {record['train_images_per_second']:.0f} img/s, "
                           f"waiting for data {record['data_wait_fraction']:.1%}"
                           + (" (partial epoch)" if not end_of_epoch else ""))
                    print(msg, file=sys.stderr)
                logger.log({"epoch": epoch + 1, "val/loss": val["loss"], "val/accuracy": val["accuracy"],
                            "val/macro_f1": val["macro_f1"], "train/loss": record["train_loss"],
                            "train/accuracy": record["train_accuracy"],
                            "train/lr_scale": float(host_state.plateau_state.scale),
                            **{f"val/recall_{c}": val["per_class"][c]["recall"] for c in CLASS_NAMES}}, step)
                variables, train = _split_state(host_state)
                checkpoints.save_latest(step, variables, train, meta)
                best_so_far = max((h["val_accuracy"] for h in meta["history"][:-1]), default=-1.0)
                if val["accuracy"] > best_so_far:
                    checkpoints.save_best(step, variables, {**meta, "val_metrics": val}, val["accuracy"])
                if meta["stopped_early"] and is_main:
                    print(f"early stopping: no better validation accuracy for "
                          f"{config.early_stopping_patience} epochs", file=sys.stderr)
                if capped:
                    break
    except BaseException:
        # Async saves in flight are finished, so the last good checkpoint is complete.
        checkpoints.close()
        logger.finish()
        raise
    checkpoints.wait()

    best_step = checkpoints.best.best_step()
    best_dir = workdir / "checkpoints" / "best" / str(best_step) if best_step is not None else None
    history = meta["history"]
    best = max(history, key=lambda h: h["val_accuracy"]) if history else None
    summary = {
        "experiment": config.experiment, "model": config.model, "data": prepared.identity,
        "synthetic": prepared.synthetic, "steps": step, "steps_per_epoch": steps_per_epoch,
        "epochs_completed": meta["epoch"],
        "stopped_early": meta["stopped_early"], "capped": capped,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "best_checkpoint": str(best_dir) if best_dir else None,
        "params": int(sum(leaf.size for leaf in jax.tree.leaves(state.params))),
        "train_seconds": meta["train_seconds"], "devices": jax.device_count(),
        "processes": jax.process_count(), "last_train_loss": last_good_loss,
        "history": history,
    }
    if prepared.notice:
        summary["notice"] = prepared.notice
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        if logger.active and best_dir is not None:
            _log_best_to_wandb(logger, config, best_dir, prepared, norm, summary, step)
    logger.finish()
    checkpoints.close()
    for thread in releases:
        thread.join()
    return summary
