"""A released model from a run's best checkpoint: the step folder with only `variables`
(params, batch_stats) and `meta` (config, normalization, data identity, history; no
optimizer state), its PublicTest scores with and without test-time augmentation, the
confusion matrix as a picture, the model as `model.onnx` (checked against the Flax model)
and MODEL_CARD.md. `evaluate`, `visualize`, `predict` and `ExpressionPredictor()` use
release/final when no checkpoint is given.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import pathlib
import platform
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from fer_jax.checkout_packages import DEFAULT_RELEASE, release_root
from fer_jax.config import upgrade
from fer_jax.data.cache import load_fer_cached
from fer_jax.data.types import CLASS_NAMES, PUBLIC_TEST
from fer_jax.engine.checkpoint import read_meta, resolve_checkpoint, restore_variables
from fer_jax.errors import UserError
from fer_jax.inference.ensemble import load_member
from fer_jax.inference.loading import load_model
from fer_jax.inference.onnx_check import CHECKED_FACES, check_onnx
from fer_jax.inference.scoring import score, select_split
from fer_jax.onnx_model.runtime import ONNX_FILE, onnxruntime_installed
from fer_jax.plots import confusion_matrix_figure

MAX_RELEASE_BYTES = 50 * 1024 * 1024
# What a release keeps of a checkpoint's metadata: enough to rebuild, normalize and explain.
META_KEYS = ("config", "normalization", "data", "model", "epoch", "history", "synthetic", "notice",
             "train_seconds", "val_metrics", "best_val_accuracy")


def folder_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scores(checkpoint: pathlib.Path, data, tta_modes: tuple[str, ...]) -> list[dict]:
    """PublicTest metrics of CHECKPOINT for each TTA mode; the model is loaded once."""
    member = load_member(checkpoint, 256)
    return [score(data.labels, member.probabilities(data.images, tta)) for tta in tta_modes]


def stage_one(config: dict) -> dict | None:
    """What init_from points at (the run this one started from), if it is still there."""
    if not config.get("init_from"):
        return None
    try:
        meta = read_meta(resolve_checkpoint(config["init_from"]))
    except UserError:
        return {"path": config["init_from"]}
    return {"path": config["init_from"], "experiment": meta["config"].get("experiment", ""),
            "epoch": meta.get("epoch"), "train_seconds": meta.get("train_seconds", 0.0),
            "val_accuracy": (meta.get("val_metrics") or {}).get("accuracy")}


_OPTIMIZER_NAMES = {"adamw": "AdamW", "sgd": "SGD", "nesterov": "SGD with Nesterov momentum"}


def _momentum(config: dict) -> str:
    return "" if config.get("optimizer", "adamw") == "adamw" else f" (momentum {config['momentum']:g})"


def _recipe_lines(config: dict, first_stage: dict | None = None) -> list[str]:
    config = upgrade(config)  # a run stored under older keys reads as today's
    aug = config.get("augment", {})
    active = {k: v for k, v in aug.items() if v not in (0, 0.0, [1.0, 1.0], (1.0, 1.0))}
    lines = [
        f"- model: `{config['model']}` {json.dumps(config.get('model_kwargs') or {})}",
        f"- optimizer: {_OPTIMIZER_NAMES[config.get('optimizer', 'adamw')]}"
        f"{_momentum(config)}, learning rate {config['learning_rate']:g}, weight decay "
        f"{config['weight_decay']:g}, schedule `{config.get('lr_schedule', 'constant')}`"
        f" (warm-up {config.get('warmup_epochs', 0):g} epochs), reduce-on-plateau "
        f"{'on' if config['plateau']['factor'] < 1 else 'off'}; batch {config['batch_size']}",
        f"- epochs: {config['epochs']}, early stopping patience {config['early_stopping_patience']}",
        f"- label smoothing {config['label_smoothing']:g}; class-weighted loss "
        f"{config['class_weighted_loss']}; balanced sampling {config['balanced_sampling']}",
        f"- augmentation: {json.dumps(active) if active else 'none'}",
    ]
    trained_dtype = config.get("trained_compute_dtype") or config.get("compute_dtype", "float32")
    if trained_dtype != "float32":
        lines.append(f"- trained with {trained_dtype} compute (float32 weights); this release computes in "
                     "float32, in JAX and in `model.onnx` alike")
    mixing = [f"{name} alpha {config[key]:g}" for name, key in (("Mixup", "mixup_alpha"), ("CutMix", "cutmix_alpha"))
              if config.get(key)]
    if mixing or config.get("ema_decay"):
        ema = [f"weights averaged (EMA, decay {config['ema_decay']:g})"] if config.get("ema_decay") else []
        lines.append(f"- {'; '.join(mixing + ema)}")
    distill = config.get("distill") or {}
    if distill.get("alpha"):
        lines.append(f"- distilled from {', '.join(f'`{t}`' for t in distill['teachers'])} (alpha "
                     f"{distill['alpha']:g}, temperature {distill['temperature']:g}; the teachers' "
                     "probabilities of each training face and its mirror image)")
    if first_stage and first_stage.get("epoch") is not None:
        lines.append(
            f"- started from the best checkpoint of `{first_stage['path']}` (experiment "
            f"`{first_stage['experiment']}`: {first_stage['epoch']} epochs, "
            f"{first_stage['train_seconds'] / 3600:.2f} h, {first_stage['val_accuracy']:.2%} PublicTest)")
    elif first_stage:
        lines.append(f"- started from the best checkpoint of `{first_stage['path']}`")
    return lines


def confused_with(summary: dict, cls: str) -> str:
    """The two classes that faces of CLS are most often predicted as, e.g. 'sad and angry'."""
    row = list(summary["confusion_matrix"][CLASS_NAMES.index(cls)])
    row[CLASS_NAMES.index(cls)] = -1
    first, second = sorted(range(len(row)), key=lambda j: -row[j])[:2]
    return f"{CLASS_NAMES[first]} and {CLASS_NAMES[second]}"


def _usage(name: str) -> list[str]:
    """The card's commands: the default release needs no --checkpoint, the others name theirs."""
    flag = "" if name == DEFAULT_RELEASE else f" --checkpoint release/{name}"
    argument = "" if name == DEFAULT_RELEASE else f'"release/{name}"'
    note = " (no argument: this model)" if name == DEFAULT_RELEASE else ""
    return ["```",
            f"python -m fer_jax.predict photo.jpg{flag}    # faces found by MTCNN, then classified",
            f"python -m fer_jax.evaluate --data fer2013.csv{flag}  # scores on PublicTest",
            "```",
            f"In Python: `fer_jax.predictor.ExpressionPredictor({argument})`{note}."]


def model_card(name: str, meta: dict, params: int, size: int, plain: dict, tta: dict, tta_mode: str,
               data_source: str, source_checkpoint: str, first_stage: dict | None = None,
               onnx_section: str = "") -> str:
    config = meta["config"]
    crop = int((config.get("augment") or {}).get("random_crop") or 0)
    history = meta.get("history") or []
    best = max(history, key=lambda h: h["val_accuracy"]) if history else {}
    rows = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for cls, r in tta["per_class"].items():
        rows.append(f"| {cls} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    data = meta.get("data") or {}
    weakest = sorted(tta["per_class"], key=lambda c: tta["per_class"][c]["recall"])[:2]
    synthetic_warning = ("\n**This model was trained on synthetic faces, not FER2013: it is for trying "
                         "the software only.**\n" if meta.get("synthetic") else "")
    return "\n".join([
        f"# Model card: fer_jax `{name}`",
        synthetic_warning,
        f"Experiment `{config.get('experiment') or config['model']}`: {config.get('description', '')}"
        + (f" (the run's own label: \"{config['run_description']}\")" if config.get("run_description") else ""),
        "",
        "## Use",
        *_usage(name),
        "Input: 48x48 grayscale faces framed as in FER2013"
        + (f" (the model reads their centre {crop}x{crop} window)" if crop else "")
        + "; outputs probabilities of angry, disgust, fear, happy, sad, surprise, neutral.",
        "",
        "## Data",
        f"Trained on the FER2013 `Training` rows ({data.get('name', '?')}, fingerprint "
        f"`{str(data.get('fingerprint', '?'))[:16]}`); the checkpoint was selected by accuracy on "
        "`PublicTest` (3,589 faces). `PrivateTest` was never read. Normalization: the training "
        f"set's pixel mean {meta['normalization']['mean']:.4f} and std "
        f"{meta['normalization']['std']:.4f} (pixels scaled to [0, 1]), stored with the weights.",
        "",
        "## Recipe",
        *_recipe_lines(config, first_stage),
        f"- this checkpoint: epoch {best.get('epoch', '?')} of this run, after "
        f"{meta.get('train_seconds', 0) / 3600:.2f} h of training on a 2-core CPU",
        "",
        "## Results on PublicTest",
        f"Measured by `python -m fer_jax.release` on {data_source} ({plain['count']} faces), "
        f"{datetime.date.today().isoformat()}, {platform.machine()} / {platform.system()}:",
        "",
        "| test-time augmentation | accuracy | macro-F1 |",
        "|---|---:|---:|",
        f"| none | {plain['accuracy']:.2%} | {plain['macro_f1']:.3f} |",
        f"| {tta_mode} | {tta['accuracy']:.2%} | {tta['macro_f1']:.3f} |",
        "",
        f"Per class, with `{tta_mode}`:",
        "",
        *rows,
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "PublicTest chose this checkpoint, so its PublicTest score is optimistic; an unbiased "
        "figure needs PrivateTest, which this project does not use.",
        "",
        "## Limits",
        "- FER2013 faces are 48x48, grayscale, mostly frontal and web-scraped; labels are noisy "
        "(human accuracy on FER2013 is reported at about 65%), and the set holds duplicates and "
        "images with conflicting labels (see `python -m fer_jax.explore`).",
        f"- The weakest classes are {weakest[0]} (recall {tta['per_class'][weakest[0]]['recall']:.2f}) "
        f"and {weakest[1]} ({tta['per_class'][weakest[1]]['recall']:.2f}); \"disgust\" has 436 of "
        f"28,709 training faces. {weakest[0].capitalize()} faces are most often taken for "
        f"{confused_with(tta, weakest[0])}, {weakest[1]} faces for {confused_with(tta, weakest[1])}.",
        "- Expressions are posed or spontaneous web pictures of mostly adults; accuracy on other "
        "populations, lighting, poses, occlusions or video frames is not measured.",
        "- Facial expression is not emotion: do not use this model to infer people's feelings, "
        "intentions or character, or to make decisions about people.",
        "",
        "## Files",
        f"{params:,} parameters; {size / 1e6:.1f} MB in all. `variables/` (Orbax: params and "
        "batch_stats), `meta/` (config, normalization, data identity, training history), "
        f"`metrics.json`, `confusion_matrix.png`{', `model.onnx`' if onnx_section else ''}. "
        f"Made from `{source_checkpoint}`.",
        "",
        *([onnx_section] if onnx_section else []),
    ])


# ------------------------------------------------------------------------------- ONNX

ONNX_HEADING = "## ONNX"
# Config keys that do not change the network, so not its ONNX graph either.
_LABELS = ("description", "run_description")


def onnx_export_available() -> bool:
    """Whether this Python can export and check an ONNX file (the `onnx` extra)."""
    return importlib.util.find_spec("onnx") is not None and onnxruntime_installed()


def onnx_section(size: int, digest: str, opset: int, check_summary: str, checked_on: str) -> str:
    """The card's section on its model.onnx."""
    return "\n".join([
        ONNX_HEADING,
        "",
        f"`{ONNX_FILE}` ({size / 1e6:.1f} MB, sha256 `{digest}`): this model as one ONNX graph "
        f"(opset {opset}), uint8 (N, 48, 48) grayscale faces framed as FER2013 in (input `faces`), "
        f"float32 (N, 7) probabilities out (output `probabilities`, columns {', '.join(CLASS_NAMES)}); "
        "the normalization and the softmax are inside. Written by `python -m fer_jax.release`, which "
        f"checked it with onnxruntime against the Flax model on {checked_on}: {check_summary}.",
        "",
    ])


def write_onnx_file(staging: pathlib.Path, faces: np.ndarray, checked_on: str) -> str:
    """Exports the staged release to STAGING/model.onnx and checks it on FACES; returns the
    card's section (UserError, and nothing written, when the file differs from the model)."""
    from fer_jax.onnx_model.export import export_onnx, write_onnx  # the `onnx` extra
    loaded = load_model(staging)
    model = export_onnx(loaded)
    check = check_onnx(loaded, model.SerializeToString(), faces)
    if not check.passed:
        raise UserError(f"the ONNX model differs from the Flax model ({check.summary()}): "
                        "release not written")
    digest = write_onnx(model, staging / ONNX_FILE)
    return onnx_section((staging / ONNX_FILE).stat().st_size, digest, model.opset_import[0].version,
                        check.summary(), checked_on)


def _same_network(staging: pathlib.Path, previous: pathlib.Path) -> bool:
    """Whether PREVIOUS (a release folder) holds the network STAGING holds: the same
    weights, normalization and config but for its labels."""
    try:
        old_meta, new_meta = read_meta(previous), read_meta(staging)
        old, new = restore_variables(previous), restore_variables(staging)
    except (UserError, OSError, ValueError):
        return False

    def network(meta: dict) -> tuple:
        config = {k: v for k, v in meta.get("config", {}).items() if k not in _LABELS}
        return config, meta.get("normalization")

    if network(old_meta) != network(new_meta):
        return False
    old_leaves, new_leaves = jax.tree.flatten(old), jax.tree.flatten(new)
    return old_leaves[1] == new_leaves[1] and all(
        np.array_equal(a, b) for a, b in zip(old_leaves[0], new_leaves[0]))


def kept_onnx_file(staging: pathlib.Path, previous: pathlib.Path) -> str | None:
    """Copies PREVIOUS's model.onnx into STAGING and returns its card's section, when the
    network did not change; else None."""
    card = previous / "MODEL_CARD.md"
    if not (previous / ONNX_FILE).is_file() or not card.is_file():
        return None
    text = card.read_text()
    if ONNX_HEADING not in text or not _same_network(staging, previous):
        return None
    section = ONNX_HEADING + text.split(ONNX_HEADING, 1)[1].split("\n## ", 1)[0].rstrip("\n") + "\n"
    shutil.copy2(previous / ONNX_FILE, staging / ONNX_FILE)
    return section


def release_onnx(staging: pathlib.Path, previous: pathlib.Path, faces: np.ndarray,
                 checked_on: str) -> str:
    """STAGING/model.onnx and its card section: exported and checked where the `onnx` extra
    is installed, else the previous release's file when its network is the same."""
    if onnx_export_available():
        return write_onnx_file(staging, faces, checked_on)
    kept = kept_onnx_file(staging, previous)
    if kept is None:
        raise UserError("a release ships model.onnx, and exporting it needs the onnx extra: "
                        "pip install 'fer_jax[onnx]'")
    return kept


def make_release(checkpoint, data_path, *, name: str = DEFAULT_RELEASE, tta: str = "flip_crops",
                 out: str | pathlib.Path | None = None, description: str | None = None) -> dict:
    """Writes OUT/NAME (default release/NAME); returns its metrics. The release is made
    beside it and replaces it only once complete.

    `description` replaces the run's one-line label, for runs whose --set overrides made
    them something other than their experiment's description says; the run's own label
    stays in the config as `run_description`."""
    step_dir = resolve_checkpoint(checkpoint)
    meta = read_meta(step_dir)
    if "config" not in meta or "normalization" not in meta:
        raise UserError(f"{step_dir}: the checkpoint's metadata lacks its config or normalization")
    loaded = load_fer_cached(data_path)
    trained_on = (meta.get("data") or {}).get("fingerprint")
    if trained_on and trained_on != loaded.fingerprint and not meta.get("synthetic"):
        raise UserError(f"{data_path} is not the data set this model was trained on; "
                        "pass the file it was trained with")
    target = pathlib.Path(out) / name if out else release_root() / name
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        metrics = _write_release(staging, target, step_dir, meta, loaded, str(data_path), name=name,
                                 tta=tta, description=description)
        size = folder_bytes(staging)
        if size > MAX_RELEASE_BYTES:
            raise UserError(f"the release would take {size / 1e6:.1f} MB, over the "
                            f"{MAX_RELEASE_BYTES / 1e6:.0f} MB limit")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    metrics["path"], metrics["bytes"] = str(target), size
    return metrics


def _write_release(staging: pathlib.Path, target: pathlib.Path, step_dir: pathlib.Path, meta: dict,
                   loaded, data_path: str, *, name: str, tta: str, description: str | None) -> dict:
    """Writes the release of STEP_DIR into STAGING (TARGET: the release it replaces, whose
    model.onnx is kept where it cannot be exported and the network is the same)."""
    data = select_split(loaded, PUBLIC_TEST)
    variables = restore_variables(step_dir)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((staging / "variables").absolute(), variables)
    checkpointer.wait_until_finished()
    kept = {k: meta[k] for k in META_KEYS if k in meta}
    trained_dtype = kept["config"].get("compute_dtype", "float32")
    if trained_dtype != "float32":
        # A release computes in float32 whatever its run trained in (the weights are float32
        # either way), so that JAX and its model.onnx give the same answers: onnxruntime's CPU
        # convolutions take no bfloat16.
        kept["config"] = {**kept["config"], "compute_dtype": "float32", "trained_compute_dtype": trained_dtype}
    if description:
        kept["config"] = {**kept["config"], "description": description,
                          "run_description": kept["config"].get("description", "")}
    ocp.Checkpointer(ocp.JsonCheckpointHandler()).save((staging / "meta").absolute(), kept)

    plain, with_tta = scores(staging, data, ("none", tta))
    params = int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))
    confusion_matrix_figure(with_tta["confusion_matrix"], staging / "confusion_matrix.png",
                            title=f"{name} ({meta['config']['model']}) on PublicTest, TTA {tta}: "
                                  f"{with_tta['accuracy']:.1%}")
    metrics = {"name": name, "source_checkpoint": str(step_dir), "data": data_path,
               "data_fingerprint": loaded.fingerprint, "split": "PublicTest", "parameters": params,
               "no_tta": plain, "tta": {"mode": tta, **with_tta}}
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    data_name = pathlib.Path(data_path).name
    onnx = release_onnx(staging, target, data.images[:CHECKED_FACES],
                        f"the first {min(len(data), CHECKED_FACES)} PublicTest faces of {data_name}")
    # The card gives the folder's size with the card itself left out.
    (staging / "MODEL_CARD.md").write_text(
        model_card(name, kept, params, folder_bytes(staging), plain, with_tta, tta, data_name,
                   str(step_dir), stage_one(kept["config"]), onnx))
    return metrics
