"""The speed benchmark: PyTorch copies of the models (same parameters, same function),
the timing loop, the table, the JSON records and a smoke run of the command.

PyTorch is optional (the `bench` extra): its tests skip when it is not installed.
"""
from __future__ import annotations

import importlib
import json
import math
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import timing
from fer_jax.benchmarking import measure, report, steps as bench_steps
from fer_jax.cli import bench
from fer_jax.errors import UserError
from fer_jax.models import STUDY_MODEL_NAMES as MODEL_NAMES, get_model

NUM_CLASSES = 7
# Every block type: biased convs and flatten (v1), conv+BN (v2), ConvBNReLU, Dropout2d and
# the BN'd Dense (deep_cnn_v2), CBAM, BasicBlocks with projections (resnet18). The rest are
# the same blocks, more of them.
EQUIVALENCE_FAST = ("simple_cnn_v1", "simple_cnn_v2", "deep_cnn_v2", "cbam_cnn", "resnet18")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_bench(torch):
    return measure.load_torch_bench()


@pytest.fixture(scope="module")
def torch_models(torch_bench):
    return importlib.import_module("fer_jax.torch_reference.models")


# The time-to-accuracy recipes' networks (3x3 stacks of the simple CNN), which the bench
# times with --experiments.
RECIPES = ("fast_5min", "fast_15min")


def recipe_network(experiment: str) -> tuple[str, dict]:
    (target,) = bench_steps.bench_targets([], [experiment])
    return target.model, dict(target.model_kwargs)


def flax_shapes(name: str, model_kwargs: dict | None = None) -> dict:
    """The model's variables as shapes (no compilation)."""
    model = get_model(name, **(model_kwargs or {}))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)),
                                             train=False))


def size(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# --------------------------------------------------------------------- PyTorch models

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_copy_has_the_flax_models_parameter_and_statistics_counts(name, torch_models):
    shapes = flax_shapes(name)
    model = torch_models.build_torch_model(name)
    assert torch_models.count_parameters(model) == size(shapes["params"])
    running = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert running == size(shapes.get("batch_stats", {}))


@pytest.mark.parametrize("experiment", RECIPES)
def test_torch_copy_of_a_recipes_network_has_its_parameter_count(experiment, torch_models):
    name, kwargs = recipe_network(experiment)
    model = torch_models.build_torch_model(name, model_kwargs=kwargs)
    assert torch_models.count_parameters(model) == size(flax_shapes(name, kwargs)["params"])
    # The 3x3 kernels really are 3x3 (a copy ignoring kernel_size would have 5x5 ones).
    assert tuple(model.Conv_0.weight.shape) == (32, 1, 3, 3)


def test_torch_copy_refuses_attributes_it_does_not_have(torch_models):
    with pytest.raises(UserError, match="PyTorch copy of simple_cnn_v1 has no attribute.*stem"):
        torch_models.build_torch_model("simple_cnn_v1", model_kwargs={"stem": "imagenet"})


def test_torch_registry_has_every_flax_model(torch_models):
    assert torch_models.TORCH_MODEL_NAMES == MODEL_NAMES
    with pytest.raises(UserError, match="no PyTorch copy of model 'nope'"):
        torch_models.build_torch_model("nope")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_copy_output_shape_and_dtype(name, torch, torch_models):
    model = torch_models.build_torch_model(name).to(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (3, NUM_CLASSES) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def _random_variables(name: str, model_kwargs: dict | None = None) -> tuple[object, dict]:
    """Initialised Flax variables with non-trivial BatchNorm statistics."""
    model = get_model(name, **(model_kwargs or {}))
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 48, 48, 1)), train=False))(
        jax.random.key(0, impl="rbg"))
    rng = np.random.default_rng(1)

    def statistic(path, leaf):
        if path[-1].key == "mean":
            return 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
        return (0.5 + rng.random(leaf.shape)).astype(np.float32)

    stats = jax.tree_util.tree_map_with_path(statistic, variables.get("batch_stats", {}))
    return model, {"params": variables["params"], "batch_stats": stats}


@pytest.mark.parametrize("name", [
    *EQUIVALENCE_FAST,
    *(pytest.param(n, marks=pytest.mark.slow) for n in MODEL_NAMES if n not in EQUIVALENCE_FAST)])
def test_torch_copy_computes_the_flax_models_function(name, torch, torch_models):
    _check_same_function(name, {}, torch, torch_models)


@pytest.mark.parametrize("experiment", RECIPES)
def test_torch_copy_computes_a_recipes_network(experiment, torch, torch_models):
    _check_same_function(*recipe_network(experiment), torch, torch_models)


def _check_same_function(name: str, model_kwargs: dict, torch, torch_models) -> None:
    model, variables = _random_variables(name, model_kwargs)
    x = np.random.default_rng(2).standard_normal((4, 48, 48, 1)).astype(np.float32)
    expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    copy = torch_models.build_torch_model(name, model_kwargs=model_kwargs).eval()
    torch_models.load_flax_variables(copy, variables)
    with torch.no_grad():
        got = copy(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    assert np.abs(expected).max() > 1e-3  # a dead network would match anything
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_loading_another_architectures_variables_fails(torch_models):
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax_shapes("simple_cnn_v2"))
    with pytest.raises((KeyError, ValueError)):
        torch_models.load_flax_variables(torch_models.build_torch_model("simple_cnn_v1"), zeros)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax_shapes("deep_cnn_v2"))
    with pytest.raises((KeyError, ValueError)):  # same layer names, other widths
        torch_models.load_flax_variables(torch_models.build_torch_model("deep_cnn_v1"), zeros)


# ------------------------------------------------------------------------ PyTorch steps

@pytest.mark.parametrize("bf16", [False, True])
def test_torch_train_step_fits_its_batch(bf16, torch, torch_bench):
    setting = torch_bench.TorchSetting(bf16=bf16)
    step = torch_bench.make_train_step("cbam_cnn", 8, setting, learning_rate=3e-3)
    losses = [float(step()) for _ in range(8)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_torch_eval_step_sums_the_loss_and_counts_correct(torch, torch_bench):
    step = torch_bench.make_eval_step("cbam_cnn", 8, torch_bench.TorchSetting())
    loss_sum, correct = step().tolist()
    assert loss_sum > 8 * 0.5 and 0 <= correct <= 8 and correct == int(correct)
    np.testing.assert_allclose(step().tolist(), [loss_sum, correct], rtol=1e-6)  # no state change


def test_torch_adamw_is_fused_where_available(torch, torch_bench):
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch_bench.make_adamw(params, 1e-3, 0.0)
    assert optimizer.defaults["fused"] or optimizer.defaults["foreach"]
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["weight_decay"] == 0.0


def test_torch_best_of_picks_the_higher_median(torch_bench):
    fp32, bf16 = torch_bench.BEST_SETTINGS
    best, rate = torch_bench.best_of({fp32: [100.0, 300.0, 200.0], bf16: [150.0, 1000.0, 180.0]})
    assert (best, rate) == (fp32, 200.0)


# ------------------------------------------------------------------------------ timing

def test_measure_images_per_s_counts_finished_steps_over_the_window():
    now = [0.0]  # a fake clock: each step takes 10 ms of it
    blocked = []

    def step():
        now[0] += 0.01
        return "out"

    rate = timing.measure_images_per_s(step, 10, 0.2, block=blocked.append, warmup_steps=2,
                                      clock=lambda: now[0])
    assert rate == pytest.approx(1000.0)  # 10 images per 10 ms
    assert now[0] >= 0.2 + 0.03  # the whole window, after the warm-up and sizing steps
    assert blocked[:3] == ["out", "out", "out"]  # warm-up and sizing steps are waited on
    assert all(isinstance(b, list) and b and set(b) == {"out"} for b in blocked[3:])
    assert sum(len(b) for b in blocked[3:]) == 20  # 0.2 s of 10 ms steps, in chunks of 10


# ------------------------------------------------------------------------------- table

def _result(**overrides) -> report.ModelResult:
    values = dict(model="resnet18", kernels="onednn", params=11_171_271, flops_per_image=1.2345e9, compile_s=12.34,
                  jax_train=300.0, jax_eval=1200.0, torch_train=150.0, torch_eval=1600.0,
                  torch_train_setting="fp32", torch_eval_setting="bf16")
    values.update(overrides)
    return report.ModelResult(**values)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_with_pytorch_columns_and_ratios():
    lines = report.format_table([_result()], with_torch=True).splitlines()
    assert _cells(lines[0]) == [
        "model", "kernels", "params", "fwd MFLOP/img", "compile s", "fer_jax train img/s",
        "PyTorch train img/s", "train ratio", "fer_jax eval img/s", "PyTorch eval img/s",
        "eval ratio", "PyTorch mode (train/eval)"]
    assert _cells(lines[2]) == ["resnet18", "onednn", "11,171,271", "1,234.5", "12.3", "300", "150", "2.00",
                                "1,200", "1,600", "0.75", "fp32 / bf16"]


def test_table_without_pytorch_has_only_fer_jax_columns():
    lines = report.format_table([_result(torch_train=None, torch_eval=None,
                                        flops_per_image=math.nan)], with_torch=False).splitlines()
    assert _cells(lines[0]) == ["model", "kernels", "params", "fwd MFLOP/img", "compile s",
                                "fer_jax train img/s", "fer_jax eval img/s"]
    assert _cells(lines[2]) == ["resnet18", "onednn", "11,171,271", "—", "12.3", "300", "1,200"]


# -------------------------------------------------------------------------------- json

def test_json_records_have_one_entry_per_model_and_kernels(tmp_path):
    results = [_result(), _result(kernels="xla", jax_train=200.0, flops_per_image=math.nan)]
    run = report.BenchRun(results=results, pipeline_images_per_s=None, batch_size=64, seconds=2.0,
                         rounds=3, compute_dtype="bfloat16", devices="2 x cpu", threads=2,
                         torch_version="2.13.0+cpu")
    path = tmp_path / "bench.json"
    report.write_json(path, run)
    records = json.loads(path.read_text())
    assert [(r["model"], r["kernels"]) for r in records] == [("resnet18", "onednn"),
                                                             ("resnet18", "xla")]
    first = records[0]
    assert first["compute_dtype"] == "bfloat16" and first["batch_size"] == 64
    assert (first["train_img_s"], first["eval_img_s"]) == (300.0, 1200.0)
    assert (first["torch_train_img_s"], first["torch_eval_img_s"]) == (150.0, 1600.0)
    assert records[1]["train_img_s"] == 200.0 and records[1]["flops_per_image"] is None


def test_kernels_settings_resolve_once_each_in_order():
    assert measure.resolved_kernels(["xla", "xla"]) == ["xla"]
    assert bench.parse_args([], MODEL_NAMES).kernels == ["auto"]
    assert bench.parse_args(["--kernels", "onednn", "xla"], MODEL_NAMES).kernels == ["onednn", "xla"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--kernels", "fast"], MODEL_NAMES)


def test_importing_the_command_leaves_jax_unimported():
    """The CPU device split (--cpu-devices) must run before jax is imported."""
    code = ("import sys, fer_jax.bench, fer_jax.cli.bench; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_library_never_imports_benchmarks():
    root = pathlib.Path(report.__file__).resolve().parents[1]
    for path in root.rglob("*.py"):
        assert not re.search(r"^\s*(from|import) benchmarks\b|\"benchmarks\.", path.read_text(),
                             re.M), path


# ------------------------------------------------------------------------ command line

def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model.*nope"):
        bench.main(["--models", "nope"])


def test_experiments_are_timed_with_their_network():
    targets = bench_steps.bench_targets(["cbam_cnn"], list(RECIPES))
    assert [t.label for t in targets] == ["cbam_cnn", "fast_5min (simple_cnn_v1)",
                                          "fast_15min (simple_cnn_v1)"]
    assert targets[0].model_kwargs == {}
    assert dict(targets[1].model_kwargs) == {"widths": (32, 64, 128), "kernel_size": 3, "dropout": 0.0}
    assert dict(targets[2].model_kwargs)["widths"] == (32, 64, 128, 256)
    # --experiments alone times only them; --models alone (or neither) the models.
    assert bench.parse_args(["--experiments", "fast_5min"], MODEL_NAMES).models == []
    assert bench.parse_args([], MODEL_NAMES).models == list(MODEL_NAMES)


@pytest.mark.parametrize("experiment, message", [
    ("nope", "unknown experiment 'nope'"),
    ("ensemble", "experiment ensemble is an ensemble of .*time its members"),
])
def test_experiments_the_bench_cannot_time_are_user_errors(experiment, message):
    with pytest.raises(UserError, match=message):
        bench_steps.bench_targets([], [experiment])


def test_asking_for_pytorch_without_it_is_a_user_error(monkeypatch):
    monkeypatch.setattr(measure, "load_torch_bench", lambda: None)
    with pytest.raises(UserError, match="PyTorch is not installed"):
        measure.resolve_torch(True)
    assert measure.resolve_torch(None) == (None, "PyTorch is not installed")
    assert measure.resolve_torch(False) == (None, "--no-torch")


@pytest.mark.parametrize("what, label, params", [
    (["--models", "simple_cnn_v1"], "simple_cnn_v1", "1,232,775"),
    (["--experiments", "fast_5min"], "fast_5min (simple_cnn_v1)", "683,527"),
])
def test_smoke_run_prints_the_table(what, label, params, capsys):
    """Both frameworks' columns with PyTorch installed, fer_jax's alone without it."""
    with_torch = measure.load_torch_bench() is not None
    status = bench.main([*what, "--batch-size", "8", "--seconds", "0.05", "--kernels", "xla",
                         "--rounds", "1", "--pipeline-images", "64"])
    assert status == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(lines) == 3
    assert _cells(lines[0]) == report.table_columns(with_torch)
    row = dict(zip(_cells(lines[0]), _cells(lines[2])))
    assert row["model"] == label and row["kernels"] == "xla" and row["params"] == params
    numeric = ["fwd MFLOP/img", "fer_jax train img/s", "fer_jax eval img/s"]
    if with_torch:
        numeric += ["PyTorch train img/s", "train ratio", "PyTorch eval img/s", "eval ratio"]
        assert re.fullmatch(r"(fp32|bf16) / (fp32|bf16)", row["PyTorch mode (train/eval)"])
    else:
        assert "PyTorch not timed: PyTorch is not installed" in out
    for column in numeric:
        assert float(row[column].replace(",", "")) > 0, column
    assert float(row["compile s"]) >= 0
    assert re.search(r"Input pipeline .*: [\d,]+ images/s", out)
