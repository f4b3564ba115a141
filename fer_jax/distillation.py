"""Knowledge distillation's teachers: their probabilities of the training faces, computed
once per run and cached in its folder.

`distill.teachers` names run folders, step folders or released models' folders (their
probabilities averaged), or one ensemble file (`released`: release/ensemble.json), whose
members and weights are used. Each teacher scores a face as the mean of the face and its
mirror image (TEACHER_TTA): the student's augmentation flips, shifts and turns the face a
little, and the mirror-averaged probability is the one its views share, so the cached
target stays consistent with whatever view the student is shown. The trainer gathers the
rows of each batch's examples with their images, so the targets follow shuffling,
balanced sampling, sharding and Mixup/CutMix (which blends them as it blends the labels).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from fer_jax.engine.checkpoint import read_meta
from fer_jax.engine.trainer import TeacherFn
from fer_jax.errors import UserError
from fer_jax.inference.ensemble import Member, ensemble_probabilities, load_member
from fer_jax.inference.ensemble_file import read_ensemble_file

TEACHER_TTA = "flip"
CACHE_FILE = "teacher_probabilities.npz"
RELEASED = "released"  # distill.teachers = ("released",): the released ensemble
# Faces per call of a teacher: a progress bar that moves, without a large host copy.
CHUNK = 2048


def resolve_teachers(teachers: Sequence[str]) -> tuple[list[str], list[str], list[float]]:
    """(names, checkpoints, weights) of distill.teachers: one ensemble file's members and
    weights, or the folders as given with equal weights."""
    teachers = [str(t) for t in teachers]
    if len(teachers) == 1 and (teachers[0] == RELEASED or teachers[0].endswith(".json")):
        spec = read_ensemble_file(None if teachers[0] == RELEASED else teachers[0])
        return list(spec.names), [str(c) for c in spec.checkpoints], list(spec.weights)
    if any(t == RELEASED or t.endswith(".json") for t in teachers):
        raise UserError(f"distill.teachers: an ensemble file ({RELEASED} or a .json file) is the only "
                        f"teacher entry or none, got {teachers}")
    return teachers, teachers, [1.0] * len(teachers)


def _identity(members: Sequence[Member], weights: Sequence[float], images: np.ndarray) -> dict:
    """What the cached probabilities depend on: each teacher's checkpoint (its folder and its
    metadata's digest, which changes when the folder holds another training), the weights,
    the views and the faces themselves."""
    teachers = []
    for member in members:
        step_dir = member.info["step_dir"]
        meta = json.dumps(read_meta(pathlib.Path(step_dir)), sort_keys=True, default=str)
        teachers.append({"step_dir": step_dir, "meta_sha256": hashlib.sha256(meta.encode()).hexdigest()})
    return {"teachers": teachers, "weights": [float(w) for w in weights], "tta": TEACHER_TTA,
            "faces": len(images), "faces_sha256": hashlib.sha256(np.ascontiguousarray(images)).hexdigest()}


def _read_cache(path: pathlib.Path, identity: dict) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as cached:
            if json.loads(str(cached["identity"])) == identity:
                return cached["probabilities"]
    except (OSError, ValueError, KeyError):
        pass  # absent, unreadable or of another format: computed anew
    return None


def _write_cache(path: pathlib.Path, identity: dict, probabilities: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, identity=np.asarray(json.dumps(identity)), probabilities=probabilities)
    os.replace(partial, path)  # a killed write leaves the old cache or none, never half a file


def teacher_probabilities(members: Sequence[Member], weights: Sequence[float], images: np.ndarray,
                          *, progress: bool = True) -> np.ndarray:
    """The weighted mean of the members' mirror-averaged probabilities, float32 (N, classes)."""
    bar = tqdm(total=len(images) * len(members), unit="face", desc="teacher probabilities",
               file=sys.stderr, disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    per_member = []
    with bar:
        for member in members:
            parts = []
            for start in range(0, len(images), CHUNK):
                chunk = images[start:start + CHUNK]
                parts.append(member.probabilities(chunk, TEACHER_TTA))
                bar.update(len(chunk))
            per_member.append(np.concatenate(parts))
    return ensemble_probabilities(per_member, weights)


def teacher_for(config, *, progress: bool = True) -> TeacherFn | None:
    """The trainer's teacher for CONFIG (None when it does not distill). The teachers are
    loaded here, so that a missing or unreadable one fails before any data is read."""
    if not config.distill.alpha:
        return None
    names, checkpoints, weights = resolve_teachers(config.distill.teachers)
    members = [load_member(c, name=n) for n, c in zip(names, checkpoints)]

    def teacher(images: np.ndarray, workdir: pathlib.Path) -> np.ndarray:
        cache = pathlib.Path(workdir) / CACHE_FILE
        identity = _identity(members, weights, images)
        cached = _read_cache(cache, identity)
        if cached is not None:
            return cached
        print(f"distill: {len(members)} teacher(s) ({', '.join(names)}) score the {len(images):,} "
              f"training faces with their mirror images, once; cached in {cache}", file=sys.stderr)
        probabilities = teacher_probabilities(members, weights, images, progress=progress)
        if jax.process_index() == 0:
            _write_cache(cache, identity, probabilities)
        return probabilities

    return teacher
