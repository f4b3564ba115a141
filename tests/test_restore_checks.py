"""Checkpoints loaded for inference are checked: files, metadata, variables (engine/restore_checks.py).

Each test edits a copy of the released model (release/final), as a careless user or an
attacker would, and expects one UserError line instead of a traceback or wrong results.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fer_jax.engine import restore_checks
from fer_jax.errors import UserError
from fer_jax.inference.loading import load_model

REPO = pathlib.Path(__file__).resolve().parents[1]
RELEASED = REPO / "release" / "final"

pytestmark = pytest.mark.skipif(not (RELEASED / "variables").is_dir(), reason="no released model")


def _copy(tmp_path: pathlib.Path, name: str = "step") -> pathlib.Path:
    step = tmp_path / name
    shutil.copytree(RELEASED, step)
    return step


def _edit_meta(step: pathlib.Path, edit) -> pathlib.Path:
    path = step / "meta" / "metadata"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return step


def _refusal(step) -> str:
    with pytest.raises(UserError) as err:
        load_model(step)
    message = str(err.value)
    assert str(step) in message and "\n" not in message, message
    return message


def _truncate_largest_value_file(step: pathlib.Path) -> None:
    largest = max((p for p in (step / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 10)


def test_the_released_model_passes_every_check():
    loaded = load_model(RELEASED)
    assert loaded.config.model == "resnet18"


@pytest.mark.parametrize("field,value,expected", [
    ("std", 0.0, "normalization std 0.0"),
    ("std", -0.25, "normalization std -0.25"),
    ("std", float("nan"), "normalization std nan"),
    ("std", "0.25", "normalization std '0.25'"),
    ("mean", float("inf"), "normalization mean inf"),
    ("mean", 127.5, "normalization mean 127.5"),
])
def test_a_bad_normalization_is_refused(tmp_path, field, value, expected):
    step = _edit_meta(_copy(tmp_path), lambda meta: meta["normalization"].update({field: value}))
    assert expected in _refusal(step)


@pytest.mark.parametrize("edit,expected", [
    (lambda meta: meta["config"].update(model="resnet50"),
     "names model 'resnet50', which this version does not know"),
    (lambda meta: meta.update(model="vgg_fer"), "names two models"),
    (lambda meta: meta.update(class_names=["happy", "sad"]), "class names ['happy', 'sad']"),
    (lambda meta: meta.update(image_size=64), "image size 64"),
    (lambda meta: meta["config"].update(compute_dtype="float16"), "compute_dtype 'float16'"),
    (lambda meta: meta["config"]["model_kwargs"].update(num_classes=10), "has 10 classes"),
    (lambda meta: meta.pop("normalization"), "lacks its config or normalization"),
])
def test_bad_metadata_is_refused(tmp_path, edit, expected):
    assert expected in _refusal(_edit_meta(_copy(tmp_path), edit))


def test_metadata_naming_another_model_names_the_differences(tmp_path):
    def other_model(meta):
        meta["config"]["model"] = meta["model"] = "cbam_cnn"
        meta["config"]["model_kwargs"] = {}

    message = _refusal(_edit_meta(_copy(tmp_path), other_model))
    assert "not those of model cbam_cnn" in message and "missing: " in message and "unexpected: " in message


def test_metadata_naming_other_widths_lists_the_shapes(tmp_path):
    step = _edit_meta(_copy(tmp_path), lambda meta: meta["config"]["model_kwargs"].update(width=16))
    message = _refusal(step)
    assert "different shapes: " in message and "the model has" in message


def test_non_finite_weights_are_refused():
    variables = {"params": {"Dense_0": {"kernel": np.array([[np.nan]], np.float32)}}}

    class OneDense:
        def init(self, rngs, x, train):
            return {"params": {"Dense_0": {"kernel": np.zeros((1, 1), np.float32)}}}

    with pytest.raises(UserError, match="not finite in params/Dense_0/kernel"):
        restore_checks.check_variables(OneDense(), variables, "step", "one_dense")


def test_a_truncated_checkpoint_is_refused_before_orbax_restores(tmp_path, monkeypatch):
    step = _copy(tmp_path)
    _truncate_largest_value_file(step)
    from fer_jax.inference import loading

    def must_not_restore(*args, **kwargs):
        raise AssertionError("Orbax's restore ran on a damaged checkpoint")

    monkeypatch.setattr(loading, "restore_variables", must_not_restore)
    assert "variables are damaged or incomplete" in _refusal(step)


def _evaluate(step, data) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_jax.evaluate", "--checkpoint", str(step),
                           "--data", str(data)], capture_output=True, text=True, timeout=600, cwd=REPO)


def _error_lines(stderr: str) -> list[str]:
    # The kernels notice is a status line, not an error.
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("kernels:")]


def test_evaluate_refuses_a_zero_std_and_a_truncated_checkpoint_with_one_line(tmp_path, fer_sample_path):
    zero_std = _edit_meta(_copy(tmp_path, "zero_std"), lambda meta: meta["normalization"].update(std=0.0))
    run = _evaluate(zero_std, fer_sample_path)
    assert run.returncode == 2 and _error_lines(run.stderr) == [run.stderr.strip().splitlines()[-1]], run.stderr
    assert "normalization std 0.0" in run.stderr
    truncated = _copy(tmp_path, "truncated")
    _truncate_largest_value_file(truncated)
    # Orbax's failed restore left reads finishing on a closed event loop, now and then:
    # several loads in one process would show it.
    script = ("import sys\nfrom fer_jax.errors import UserError\nfrom fer_jax.inference.loading import load_model\n"
              "for _ in range(4):\n    try:\n        load_model(sys.argv[1])\n    except UserError as err:\n"
              "        print(err, file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", script, str(truncated)], capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    lines = _error_lines(run.stderr)
    assert run.returncode == 0 and len(lines) == 4, run.stderr
    assert all("damaged or incomplete" in line for line in lines), run.stderr
    assert "Event loop is closed" not in run.stderr
