"""benchmarks/ablation_curves.py: the run curves' figure, read from a run's summary."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_curves.py"


@pytest.fixture(scope="module")
def curves():
    spec = importlib.util.spec_from_file_location("ablation_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(scales):
    return [{"epoch": e + 1, "val_accuracy": 0.5 + 0.01 * e, "train_accuracy": 0.55 + 0.01 * e,
             "lr_scale": s} for e, s in enumerate(scales)]


def test_rate_cuts_are_the_epochs_after_which_the_scale_fell(curves):
    assert curves.rate_cuts(rows([1.0, 0.75, 0.75, 0.5625, 0.5625])) == [(2, 0.75), (4, 0.5625)]
    assert curves.rate_cuts(rows([1.0, 1.0, 1.0])) == []


def test_a_history_without_rate_scales_has_no_cuts(curves):
    history = [{k: v for k, v in r.items() if k != "lr_scale"} for r in rows([1.0, 0.5])]
    assert curves.rate_cuts(history) == []


def test_the_figure_is_drawn_from_a_finished_runs_summary(curves, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"history": rows([1.0, 1.0, 0.5, 0.5])}))
    out = tmp_path / "curve.png"
    curves.main(str(out), [f"run={run}"], train_accuracy=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_folder_with_no_record_is_refused_by_name(curves, tmp_path):
    with pytest.raises(SystemExit, match="neither summary.json nor a checkpoint"):
        curves.history(tmp_path)
