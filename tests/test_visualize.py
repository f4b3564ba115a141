"""Grad-CAM numerics and the visualize command on tiny trained checkpoints."""
from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from fer_jax import model_figures as visualize
from fer_jax.cli import visualize as visualize_cli
from conftest import tiny_checkpoint
from fer_jax.data.cache import load_fer_cached
from fer_jax.inference.loading import load_model
from fer_jax.inference.scoring import evaluate_checkpoint
from fer_jax.errors import UserError, run_cli
from fer_jax.gradcam import find_feature_layer, gradcam, jitted_gradcam
from fer_jax.models import get_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = ("confusion_matrix.png", "predictions.png", "gradcam.png", "gradcam_mean.png",
               "attention.png", "attention_mean.png")
ATTENTION_FIGURES = ("attention.png", "attention_mean.png")


# --- Grad-CAM numerics -------------------------------------------------------------

class TwoChannelModel(nn.Module):
    """features = [x, 1 - x] (a 1x1 conv); logits = Dense(spatial mean of features).

    With logit kernel W, d(logit_c)/dA_k = W[k, c] / (H W) everywhere, so Grad-CAM of
    class c is ReLU(sum_k W[k, c] A_k) up to a positive factor: known in closed form.
    """

    @nn.compact
    def __call__(self, x, train: bool):
        features = nn.Conv(2, (1, 1), name="features",
                           kernel_init=lambda *_: jnp.array([[[[1.0, -1.0]]]]),
                           bias_init=lambda *_: jnp.array([0.0, 1.0]))(x)
        pooled = features.mean(axis=(1, 2))
        # class 0 reads channel x, class 1 reads 1 - x, class 2 is pushed down by both.
        kernel = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
        return nn.Dense(3, use_bias=False, kernel_init=lambda *_: kernel)(pooled)


class StridedModel(nn.Module):
    """Two 2x2 stride-2 averaging convs (a 12x12 map), then the mean: logit 0 = mean brightness."""

    @nn.compact
    def __call__(self, x, train: bool):
        average = lambda *_: jnp.full((2, 2, 1, 1), 0.25)  # noqa: E731
        x = nn.Conv(1, (2, 2), strides=(2, 2), use_bias=False, kernel_init=average, name="down1")(x)
        x = nn.Conv(1, (2, 2), strides=(2, 2), use_bias=False, kernel_init=average, name="down2")(x)
        return nn.Dense(1, use_bias=False, kernel_init=nn.initializers.ones)(x.mean(axis=(1, 2)))


def blob(center_y: float, center_x: float, sigma: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[:48, :48]
    return np.exp(-((yy - center_y) ** 2 + (xx - center_x) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_gradcam_matches_the_closed_form_on_a_known_model():
    image = blob(12.0, 30.0)
    x = jnp.asarray(np.stack([image, image])[..., None])
    model = TwoChannelModel()
    variables = model.init(jax.random.key(0), x, train=False)
    layer = find_feature_layer(model, variables)
    assert layer == ("features",)
    with jax.default_matmul_precision("float32"):  # no TF32 on GPUs: the tolerance is tight
        cams = np.asarray(gradcam(model, variables, x, jnp.array([0, 1]), layer=layer))
    assert cams.shape == (2, 48, 48)
    np.testing.assert_allclose(cams[0], image / image.max(), atol=1e-5)
    inverse = 1.0 - image
    np.testing.assert_allclose(cams[1], inverse / inverse.max(), atol=1e-5)
    assert np.unravel_index(cams[0].argmax(), cams[0].shape) == (12, 30)
    # every channel lowers class 2's logit: nothing is evidence for it
    negative = np.asarray(gradcam(model, variables, x[:1], jnp.array([2]), layer=layer))
    np.testing.assert_array_equal(negative, 0.0)


def test_gradcam_of_a_coarse_map_peaks_where_the_evidence_is():
    image = blob(36.0, 10.0, sigma=3.0)
    x = jnp.asarray(image[None, :, :, None])
    model = StridedModel()
    variables = model.init(jax.random.key(0), x, train=False)
    layer = find_feature_layer(model, variables)
    assert layer == ("down2",)
    cam = np.asarray(jitted_gradcam(model, layer)(variables, x, jnp.array([0])))[0]
    assert cam.shape == (48, 48) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert abs(peak[0] - 36) <= 4 and abs(peak[1] - 10) <= 4
    assert cam[:24, 24:].max() < 0.05  # the far quadrant holds no evidence


@pytest.mark.parametrize("name, kwargs, expected", [
    ("simple_cnn_v1", {"widths": (4, 4)}, ("Conv_1",)),
    ("simple_cnn_v2", {"widths": (4, 4)}, ("BatchNorm_1",)),
    ("cbam_cnn", {"widths": (4, 4, 4)}, ("cbam_2",)),
    ("resnet18", {"width": 2}, ("stage4_block2",)),
    # the pooled stem leaves stage 4 a 3x3 map, too coarse to show where: stage 3's 6x6
    ("resnet18", {"width": 2, "stem": "pool"}, ("stage3_block2",)),
    # VGG's last Dropout sees a 3x3 map after the last pool; Grad-CAM must stop at the conv block
    ("vgg_fer", {"widths": (2, 2, 2, 2), "dense_width": 4}, ("ConvBNReLU_7",)),
])
def test_feature_layer_is_the_last_conv_block_before_pooling(name, kwargs, expected):
    model = get_model(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, 48, 48, 1), jnp.float32)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape), train=False), jax.random.key(0))
    assert find_feature_layer(model, variables) == expected


def test_a_named_feature_layer_is_found_and_a_wrong_name_lists_the_blocks():
    model = get_model("resnet18", width=2)
    x = jax.ShapeDtypeStruct((1, 48, 48, 1), jnp.float32)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape), train=False), jax.random.key(0))
    assert find_feature_layer(model, variables, "stage3_block2") == ("stage3_block2",)
    assert find_feature_layer(model, variables, "stage3_block2/conv2") == ("stage3_block2", "conv2")
    with pytest.raises(UserError, match="no layer of that name") as error:
        find_feature_layer(model, variables, "stage5")
    assert "stem, stage1_block1," in str(error.value) and "stage4_block2 " in str(error.value)


def random_variables(model: nn.Module, seed: int = 0) -> dict:
    """MODEL's variables drawn in numpy: LeCun-normal kernels, zero biases and means, unit
    scales and variances. Its shapes come from tracing; model.init's compilation would cost
    seconds per model on a CPU."""
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 48, 48, 1)), train=False),
                            jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_gradcam_on_a_registered_model_is_bounded_and_per_example():
    model = get_model("simple_cnn_v2", widths=(4, 8), dense_width=8)
    x = jax.random.normal(jax.random.key(1), (3, 48, 48, 1))
    variables = random_variables(model)
    layer = find_feature_layer(model, variables)
    fn = jitted_gradcam(model, layer)
    cams = np.asarray(fn(variables, x, jnp.array([0, 3, 6])))
    assert cams.shape == (3, 48, 48) and np.isfinite(cams).all()
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    # one example's map does not depend on which other faces share its batch
    alone = np.asarray(fn(variables, x[1:2], jnp.array([3])))
    np.testing.assert_allclose(alone[0], cams[1], atol=1e-5)


# --- the command's pieces ------------------------------------------------------------

def test_pick_examples_takes_right_or_wrong_rows_of_each_class():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 0, 1, 0, 2])
    rng = np.random.default_rng(0)
    right = visualize.pick_examples(labels, predictions, 5, True, rng)
    wrong = visualize.pick_examples(labels, predictions, 5, False, rng)
    assert [r.tolist() for r in right[:3]] == [[0, 2], [3], [5]]
    assert [w.tolist() for w in wrong[:3]] == [[1], [4], []]
    assert len(visualize.pick_examples(labels, predictions, 1, True, rng)[0]) == 1


def test_training_data_path_needs_data_that_is_still_there(tmp_path):
    present = tmp_path / "fer.csv"
    present.write_text("emotion,pixels,Usage\n")
    assert visualize.training_data_path({"data": {"name": "fer2013", "source": str(present)}}, tmp_path) \
        == str(present)
    for meta, words in [({}, "does not say"),
                        ({"data": {"name": "fer2013", "source": str(tmp_path / "gone.csv")}}, "not there"),
                        ({"data": {"name": "fer_synthetic", "source": "synthetic:seed=0,n=10"}}, "synthetic")]:
        with pytest.raises(UserError, match=words):
            visualize.training_data_path(meta, tmp_path)


def _assert_png(path: pathlib.Path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01  # not a blank canvas


def test_command_on_cbam_writes_every_figure_from_the_training_data_at_the_given_layer(cbam_run, tmp_path,
                                                                                       capsys):
    # One run for both (each run compiles its own functions): the default layer is checked
    # below on simple_cnn_v1, and for cbam_cnn by test_feature_layer_is_the_last_conv_block_before_pooling.
    out = tmp_path / "figures"
    assert visualize_cli.main(["--checkpoint", str(cbam_run), "--out", str(out), "--mean-count", "8",
                               "--layer", "cbam_1"]) == 0
    printed = capsys.readouterr().out
    for name in ALL_FIGURES:
        _assert_png(out / name)
        assert str(out / name) in printed
    assert "Grad-CAM layer: cbam_1" in printed
    assert "PublicTest rows of" in printed and "fer2013" in printed


def test_command_on_a_model_without_attention_says_so(simple_run, fer_sample_path, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "attention.png").write_bytes(b"stale")  # from an earlier model: must not be left behind
    assert visualize_cli.main(["--checkpoint", str(simple_run), "--data", str(fer_sample_path),
                               "--out", str(out), "--mean-count", "8"]) == 0
    printed = capsys.readouterr().out
    for name in ALL_FIGURES:
        if name in ATTENTION_FIGURES:
            assert not (out / name).exists()
        else:
            _assert_png(out / name)
    assert "no spatial attention maps" in printed and "simple_cnn_v1" in printed
    assert "Grad-CAM layer: Conv_1" in printed  # the last conv block, chosen without --layer


def test_a_wrong_layer_name_is_refused_before_anything_is_written(cbam_run, tmp_path):
    out = tmp_path / "figures"
    with pytest.raises(UserError, match="--layer nope: .* its blocks are .*cbam_2"):
        visualize_cli.main(["--checkpoint", str(cbam_run), "--out", str(out), "--layer", "nope"])
    assert not out.exists()


def test_bad_checkpoint_is_one_line_and_exit_2(capsys, tmp_path, fer_sample_path):
    with pytest.raises(SystemExit) as exit_:
        run_cli(visualize_cli.main, ["--checkpoint", str(tmp_path), "--data", str(fer_sample_path),
                                     "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a fer_jax checkpoint" in lines[0]
    assert not (tmp_path / "out").exists()


def test_spatial_attention_gives_each_cbam_stage_and_nothing_for_other_models():
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    norm = {"mean": 0.5, "std": 0.25}
    model = get_model("cbam_cnn", widths=(4, 4, 4), dense_width=8)
    variables = random_variables(model)
    in_twos = visualize.spatial_attention(model, variables, norm, images, batch_size=2)
    assert [(name, maps.shape) for name, maps in in_twos] == [
        ("cbam_0/spatial", (5, 48, 48)), ("cbam_1/spatial", (5, 24, 24)), ("cbam_2/spatial", (5, 12, 12))]
    at_once = visualize.spatial_attention(model, variables, norm, images, batch_size=8)
    for (_, a), (_, b) in zip(in_twos, at_once):
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert 0.0 < a.min() and a.max() < 1.0  # sigmoid outputs
    plain = get_model("simple_cnn_v1", widths=(4, 4), dense_width=8)
    assert visualize.spatial_attention(plain, random_variables(plain), norm, images) == []


# --- a model trained on random crops ------------------------------------------------

@pytest.fixture(scope="module")
def crop_cbam_run(tmp_path_factory, fer_sample_path):
    """A tiny CBAM model trained two steps on random 40x40 crops (built for 40x40 input)."""
    return tiny_checkpoint(tmp_path_factory, fer_sample_path, "cbam",
                           {"widths": (8, 16, 16), "dense_width": 32}, random_crop=40)


def test_figures_of_a_crop_trained_model_are_drawn_on_the_centre_window(crop_cbam_run, fer_sample_path,
                                                                        tmp_path, capsys):
    out = tmp_path / "figures"
    assert visualize_cli.main(["--checkpoint", str(crop_cbam_run), "--data", str(fer_sample_path),
                               "--out", str(out), "--per-class", "1", "--mean-count", "4"]) == 0
    printed = capsys.readouterr().out
    assert "the model reads the centre 40x40 window of each face" in printed
    for name in ALL_FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    # The accuracy the figures report is the classifier's, which scores the centre window.
    public = load_fer_cached(fer_sample_path).split("PublicTest")
    expected = evaluate_checkpoint(crop_cbam_run, public).summary["accuracy"]
    assert f"accuracy: {expected:.4f}" in printed

    loaded = load_model(crop_cbam_run)
    faces = public.images[:6]
    window = visualize.model_view(faces, 40)
    np.testing.assert_array_equal(window, faces[:, 4:44, 4:44])
    maps, layer = visualize.gradcam_heatmaps(loaded.model, loaded.variables, loaded.normalization, window,
                                             public.labels[:6])
    assert maps.shape == (6, 40, 40) and 0.0 <= maps.min() and maps.max() <= 1.0
    attention = visualize.spatial_attention(loaded.model, loaded.variables, loaded.normalization, window)
    assert [maps.shape[1] for _, maps in attention] == [40, 20, 10]
