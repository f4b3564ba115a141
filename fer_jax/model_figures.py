"""Figures that show what a model does: its confusion matrix, correct and wrong
predictions per class, Grad-CAM heat maps (any model) and, for CBAM models, the
spatial attention maps, each for sample faces and averaged over a class's faces.

A model trained on random crops (augment.random_crop=C) is built for C x C faces and
scores the centre window (fer_jax.models.classifier): every figure shows, and every
map is computed on, that centre C x C window of each face.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from fer_jax.config import input_size
from fer_jax.data.cache import load_fer_cached
from fer_jax.data.types import CLASS_NAMES, NUM_CLASSES
from fer_jax.errors import UserError
from fer_jax.gradcam import find_feature_layer, jitted_gradcam
from fer_jax.models.classifier import normalize_images
from fer_jax.inference.loading import load_model
from fer_jax.inference.scoring import select_split
from fer_jax.data.tta import center_window
from fer_jax.metrics import confusion_matrix, summarize_confusion
from fer_jax.plots import FaceCell, confusion_matrix_figure, face_grid_figure


@dataclasses.dataclass(frozen=True)
class Faces:
    """The faces the figures show (uint8 (N, S, S): the model's input size) and their labels."""

    images: np.ndarray
    labels: np.ndarray


def model_view(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 48, 48) faces as the model reads them: their centre SIZE x SIZE window."""
    return np.ascontiguousarray(center_window(images, size))


def training_data_path(meta: dict, step_dir: pathlib.Path) -> str:
    """The data file the checkpoint was trained on, if it is still there."""
    data = meta.get("data") or {}
    source = data.get("source")
    if not source:
        raise UserError(f"{step_dir}: the checkpoint does not say which data it was trained on; "
                        "pass --data PATH")
    if data.get("name") == "fer_synthetic":
        raise UserError(f"{step_dir}: the model was trained on synthetic data ({source}); "
                        "pass --data PATH with real FER2013 faces")
    if not pathlib.Path(source).exists():
        raise UserError(f"{step_dir}: the model was trained on {source}, which is not there any more; "
                        "pass --data PATH")
    return source


def pick_examples(labels: np.ndarray, predictions: np.ndarray, per_class: int, correct: bool,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """For each class, up to per_class random row indices of that true class whose
    prediction is right (correct=True) or wrong."""
    chosen = []
    for label in range(NUM_CLASSES):
        rows = np.flatnonzero((labels == label) & ((predictions == labels) == correct))
        chosen.append(np.sort(rng.permutation(rows)[:per_class]))
    return chosen


def _batched(fn, arrays: tuple[np.ndarray, ...], batch_size: int) -> np.ndarray:
    """fn over fixed-size, zero-padded batches (one compilation), results concatenated."""
    n = len(arrays[0])
    outputs = []
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        count = len(chunk[0])
        padded = [np.concatenate([c, np.zeros((batch_size - count,) + c.shape[1:], c.dtype)]) for c in chunk]
        outputs.append(np.asarray(fn(*padded))[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def gradcam_heatmaps(model, variables, norm: dict, images: np.ndarray, classes: np.ndarray,
                     batch_size: int = 64, layer: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, S, S) Grad-CAM maps in [0, 1] for uint8 (N, S, S) faces (S: the model's input
    size) and classes, and the layer used (`layer`, or find_feature_layer's default)."""
    size = images.shape[1]
    layer = layer or find_feature_layer(model, variables, input_shape=(1, size, size, 1))
    if len(images) == 0:
        return np.zeros((0,) + images.shape[1:], np.float32), layer
    fn = jitted_gradcam(model, layer, size)
    maps = _batched(lambda x, c: fn(variables, x, c),
                    (normalize_images(images, norm), classes.astype(np.int32)), batch_size)
    return maps, layer


def spatial_attention(model, variables, norm: dict, images: np.ndarray,
                      batch_size: int = 64) -> list[tuple[str, np.ndarray]]:
    """The spatial attention maps a model sows, as (layer path, (N, h, w) in (0, 1)) in
    stage order; [] for models that sow none (all but CBAM's)."""
    def sown(x):
        _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        flat = flatten_dict(state.get("intermediates", {}))
        return {"/".join(k[:-1]): v[0][..., 0].astype(np.float32) for k, v in flat.items()
                if k[-1] == "spatial_attention"}

    x = normalize_images(images[:1], norm)
    names = sorted(jax.eval_shape(sown, x), key=_natural_key)
    if not names or len(images) == 0:
        return []
    forward = jax.jit(lambda x: tuple(sown(x)[name] for name in names))
    x_all = normalize_images(images, norm)
    # One forward pass per batch gives every stage's map; the stages differ in size.
    per_batch = [forward(np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                                          chunk.dtype)]))
                 for chunk in (x_all[i:i + batch_size] for i in range(0, len(x_all), batch_size))]
    counts = [min(batch_size, len(x_all) - i) for i in range(0, len(x_all), batch_size)]
    return [(name, np.concatenate([np.asarray(maps[k])[:n] for maps, n in zip(per_batch, counts)]))
            for k, name in enumerate(names)]


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in path.replace("_", "/").split("/")]


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(jax.image.resize(maps, (len(maps), size, size), method="bilinear"))


def min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _caption(label: int, prediction: int, probability: float) -> str:
    return f"{CLASS_NAMES[label]}/{CLASS_NAMES[prediction]} {probability:.2f}"


def _color(label: int, prediction: int) -> str:
    return "green" if label == prediction else "red"


def predictions_figure(data, probs: np.ndarray, correct: list[np.ndarray], wrong: list[np.ndarray],
                       per_class: int, path: pathlib.Path, model_name: str) -> pathlib.Path:

    predictions = probs.argmax(-1)

    def cell(i):
        return FaceCell(data.images[i], caption=_caption(data.labels[i], predictions[i], probs[i, predictions[i]]),
                        caption_color=_color(data.labels[i], predictions[i]))

    rows = []
    for label in range(NUM_CLASSES):
        row = [cell(i) for i in correct[label]] + [None] * (per_class - len(correct[label]))
        row += [cell(i) for i in wrong[label]] + [None] * (per_class - len(wrong[label]))
        rows.append(row)
    col_labels = ["correct"] + [""] * (per_class - 1) + ["wrong"] + [""] * (per_class - 1)
    return face_grid_figure(rows, path, row_labels=list(CLASS_NAMES), col_labels=col_labels,
                            title=f"{model_name}: random correct (green) and wrong (red) predictions "
                                  "per true class\ntile: true/predicted probability of the prediction")


def gradcam_figure(model, variables, norm, data, probs, correct, wrong, path, model_name,
                   layer: tuple[str, ...] | None = None) -> pathlib.Path:
    """Per class: one correct face with its Grad-CAM, one wrong face with the maps of
    the predicted and of the true class."""

    predictions = probs.argmax(-1)
    first_correct = [c[:1] for c in correct]
    first_wrong = [w[:1] for w in wrong]
    rows_c = np.concatenate(first_correct).astype(np.int64)
    rows_w = np.concatenate(first_wrong).astype(np.int64)
    indices = np.concatenate([rows_c, rows_w, rows_w])
    classes = np.concatenate([data.labels[rows_c], predictions[rows_w], data.labels[rows_w]])
    maps, layer = gradcam_heatmaps(model, variables, norm, data.images[indices], classes, layer=layer)
    heat = {("correct", i): m for i, m in zip(rows_c, maps[:len(rows_c)])}
    heat.update({("pred", i): m for i, m in zip(rows_w, maps[len(rows_c):len(rows_c) + len(rows_w)])})
    heat.update({("true", i): m for i, m in zip(rows_w, maps[len(rows_c) + len(rows_w):])})

    def face(i):
        return FaceCell(data.images[i], caption=_caption(data.labels[i], predictions[i], probs[i, predictions[i]]),
                        caption_color=_color(data.labels[i], predictions[i]))

    rows = []
    for label in range(NUM_CLASSES):
        c = first_correct[label][0] if len(first_correct[label]) else None
        w = first_wrong[label][0] if len(first_wrong[label]) else None
        rows.append([
            face(c) if c is not None else None,
            FaceCell(data.images[c], heat[("correct", c)], f"for {CLASS_NAMES[label]}") if c is not None else None,
            face(w) if w is not None else None,
            FaceCell(data.images[w], heat[("pred", w)], f"for {CLASS_NAMES[predictions[w]]} (pred)")
            if w is not None else None,
            FaceCell(data.images[w], heat[("true", w)], f"for {CLASS_NAMES[label]} (true)")
            if w is not None else None,
        ])
    col_labels = ["correct", "Grad-CAM", "wrong", "Grad-CAM pred", "Grad-CAM true"]
    figure = face_grid_figure(rows, path, row_labels=list(CLASS_NAMES), col_labels=col_labels,
                              overlay_label="Grad-CAM (scaled to its maximum)",
                              title=f"{model_name}: Grad-CAM at {'/'.join(layer)} "
                                    "(tile: true/predicted probability)")
    return figure


def gradcam_mean_figure(model, variables, norm, data, correct_many, path, model_name,
                        layer: tuple[str, ...] | None = None) -> pathlib.Path:
    """Per class, the mean Grad-CAM of the true class over correctly classified faces,
    over their mean face."""

    indices = np.concatenate(correct_many).astype(np.int64)
    maps, layer = gradcam_heatmaps(model, variables, norm, data.images[indices], data.labels[indices],
                                   layer=layer)
    row = []
    for rows, mean_map in _class_mean_maps(maps, correct_many, 0):
        if mean_map is None:
            row.append(None)
            continue
        mean_map = mean_map / mean_map.max() if mean_map.max() > 0 else mean_map
        row.append(FaceCell(data.images[rows].mean(axis=0), mean_map, f"n={len(rows)}"))
    return face_grid_figure([row], path, overlay_label="mean Grad-CAM (scaled)", col_labels=list(CLASS_NAMES),
                            empty_text="no correct\nprediction",
                            title=f"{model_name}: mean Grad-CAM ({'/'.join(layer)}) over correctly\n"
                                  "classified faces of each class, on their mean face")


def _class_mean_maps(maps: np.ndarray, rows_per_class: list[np.ndarray], offset: int):
    """(rows, mean of their maps) per class, the maps of each class's rows lying one after
    another in MAPS from OFFSET on; the mean is None for a class without rows."""
    start = offset
    for rows in rows_per_class:
        chunk = maps[start:start + len(rows)]
        start += len(rows)
        yield rows, (chunk.mean(axis=0) if len(rows) else None)


def attention_figures(attention: list[tuple[str, np.ndarray]], data, probs, sample_rows: np.ndarray,
                      mean_rows: list[np.ndarray], mean_offset: int, out: pathlib.Path,
                      model_name: str) -> list[pathlib.Path]:
    """attention holds the maps of sample_rows followed by those of the mean rows
    (starting at mean_offset)."""

    predictions = probs.argmax(-1)
    grid = []
    for k, i in enumerate(sample_rows):
        row = [FaceCell(data.images[i], caption=_caption(data.labels[i], predictions[i], probs[i, predictions[i]]),
                        caption_color=_color(data.labels[i], predictions[i]))]
        for name, maps in attention:
            m = maps[k]
            row.append(FaceCell(data.images[i], upsample(min_max(m)[None], data.images.shape[1])[0],
                                f"{m.shape[0]}x{m.shape[1]}: {m.min():.2f}-{m.max():.2f}"))
        grid.append(row)
    names = [name for name, _ in attention]
    samples = face_grid_figure(
        grid, out / "attention.png", row_labels=[CLASS_NAMES[data.labels[i]] for i in sample_rows],
        col_labels=["face"] + [n.split("/")[0] for n in names], overlay_label="attention (min-max per map)",
        title=f"{model_name}: CBAM spatial attention per stage (caption: map size and value range)")
    mean_grid = []
    for name, maps in attention:
        row = []
        for rows, mean_map in _class_mean_maps(maps, mean_rows, mean_offset):
            if mean_map is None:
                row.append(None)
                continue
            row.append(FaceCell(data.images[rows].mean(axis=0),
                                upsample(min_max(mean_map)[None], data.images.shape[1])[0],
                                f"n={len(rows)}: {mean_map.min():.2f}-{mean_map.max():.2f}"))
        mean_grid.append(row)
    means = face_grid_figure(
        mean_grid, out / "attention_mean.png", row_labels=[n.split("/")[0] for n in names],
        col_labels=list(CLASS_NAMES), empty_text="no correct\nprediction",
        overlay_label="mean attention (min-max per map)",
        title=f"{model_name}: mean CBAM spatial attention over correctly classified faces\n"
              "of each class, on their mean face (caption: faces, value range)")
    return [samples, means]


def write_model_figures(checkpoint, data_path, split: str, out, per_class: int, mean_count: int, seed: int,
        batch_size: int, layer_name: str | None = None) -> tuple[list[pathlib.Path], list[str]]:
    """Writes the figures; returns their paths and the lines to tell the user."""
    restored = load_model(checkpoint)
    config, model, variables, norm, step_dir, meta = restored
    size = input_size(config)
    # Resolved before any data is read or figure written: a wrong --layer fails at once.
    layer = find_feature_layer(model, variables, layer_name, input_shape=(1, size, size, 1))
    notes = [f"checkpoint: {step_dir}"]
    if data_path is None:
        data_path = training_data_path(meta, step_dir)
    loaded = load_fer_cached(data_path)
    trained_on = (meta.get("data") or {}).get("fingerprint")
    if trained_on and loaded.fingerprint != trained_on:
        notes.append(f"note: {data_path} is not the file the model was trained on")
    split_rows = select_split(loaded, split)
    data = Faces(model_view(split_rows.images, size), split_rows.labels)
    if size != split_rows.images.shape[1]:
        notes.append(f"the model reads the centre {size}x{size} window of each face: the figures show that window")
    name = (meta.get("config") or {}).get("experiment") or config.model
    out = pathlib.Path(out) if out else pathlib.Path("reports") / "visualize" / name
    out.mkdir(parents=True, exist_ok=True)

    probs = restored.classifier(batch_size).probabilities(data.images)
    predictions = probs.argmax(-1)
    confusion = confusion_matrix(data.labels, predictions)
    summary = summarize_confusion(confusion)
    notes += [f"data: {len(data.labels)} {split} rows of {split_rows.source}",
              f"accuracy: {summary['accuracy']:.4f}  macro_f1: {summary['macro_f1']:.4f}"]

    rng = np.random.default_rng(seed)
    correct = pick_examples(data.labels, predictions, per_class, True, rng)
    wrong = pick_examples(data.labels, predictions, per_class, False, rng)
    correct_many = pick_examples(data.labels, predictions, mean_count, True, rng)
    title = name if name == config.model else f"{name} ({config.model})"
    written = [confusion_matrix_figure(confusion, out / "confusion_matrix.png",
                                       title=f"{title} on {split} (accuracy {summary['accuracy']:.1%})"),
               predictions_figure(data, probs, correct, wrong, per_class, out / "predictions.png", title)]
    written += [gradcam_figure(model, variables, norm, data, probs, correct, wrong, out / "gradcam.png", title,
                               layer),
                gradcam_mean_figure(model, variables, norm, data, correct_many, out / "gradcam_mean.png", title,
                                    layer)]
    notes.append(f"Grad-CAM layer: {'/'.join(layer)}")

    # One face per class for the attention samples: a correct one where there is one.
    sample_rows = np.array([c[0] if len(c) else w[0] for c, w in zip(correct, wrong) if len(c) or len(w)],
                           np.int64)
    attention = spatial_attention(model, variables, norm,
                                  data.images[np.concatenate([sample_rows, *correct_many]).astype(np.int64)],
                                  batch_size=64)
    if attention:
        written += attention_figures(attention, data, probs, sample_rows, correct_many, len(sample_rows),
                                     out, title)
    else:
        for stale in ("attention.png", "attention_mean.png"):
            (out / stale).unlink(missing_ok=True)
        notes.append(f"note: {config.model} has no spatial attention maps (only CBAM models sow them); "
                     "no attention figures")
    return written, notes
