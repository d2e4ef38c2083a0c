"""The six models: exact parameter counts, the input path, saving, unrolling, both backends."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import keras
import numpy as np
import pytest

from nightact.cli import main
from nightact.nets import models

# A tiny clip shape and narrow layers keep every test fast; the counting formula is the same at
# any shape. One shared configuration also matters under JAX, which compiles every weight
# initialiser once per weight shape: rebuilding a model of a shape already seen is nearly free.
FRAMES, HEIGHT, WIDTH = 3, 24, 32
UNITS, FILTERS, CLASSES = (8, 6, 4), 8, 5
SMALL = {"num_classes": CLASSES, "units": UNITS, "conv_filters": FILTERS}

ORIGINAL_COUNTS = {
    "simple_rnn": 29_523_564,
    "lstm": 118_093_068,
    "gru": 88_570_572,
    "cnn_simple_rnn": 3_089_004,
    "cnn_lstm": 11_835_660,
    "cnn_gru": 8_920_780,
}


def expected_parameters(
    name, frames, height, width, classes, units=(128, 64, 32), filters=256, kernel=15, stride=15
):
    """Count the parameters by hand, independently of the model code.

    A recurrent layer has, per gate block, an input matrix (features x units), a recurrent matrix
    (units x units) and a bias (units); Keras' GRU (reset_after=True) carries a second bias row.
    """
    cell = name.removeprefix("cnn_")
    blocks = {"simple_rnn": 1, "lstm": 4, "gru": 3}[cell]
    biases = 2 if cell == "gru" else 1
    width_in = expected_features(name, height, width, filters, stride)
    total = kernel * kernel * 3 * filters + filters if name.startswith("cnn_") else 0
    for n in units:
        total += blocks * (width_in * n + n * n + biases * n)
        width_in = n
    return total + width_in * classes + classes


def expected_features(name, height, width, filters=256, stride=15):
    if not name.startswith("cnn_"):
        return height * width * 3
    # "same" convolution with stride s, then 2x2 "same" pooling: ceil twice.
    conv_height, conv_width = math.ceil(height / stride), math.ceil(width / stride)
    return math.ceil(conv_height / 2) * math.ceil(conv_width / 2) * filters


def random_clips(count, seed=0, frames=FRAMES, height=HEIGHT, width=WIDTH):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, frames, height, width, 3), dtype=np.uint8)


def run(model, clips):
    return keras.ops.convert_to_numpy(model(clips, training=False))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_parameter_count_matches_hand_formula_at_small_shape(name):
    model = models.build_model(name, FRAMES, HEIGHT, WIDTH, **SMALL)
    expected = expected_parameters(name, FRAMES, HEIGHT, WIDTH, CLASSES, UNITS, FILTERS)
    assert models.count_trainable_parameters(model) == expected
    assert model.count_params() == expected  # nothing is frozen
    assert models.features_per_step(model) == expected_features(name, HEIGHT, WIDTH, FILTERS)
    assert tuple(model.input.shape) == (None, FRAMES, HEIGHT, WIDTH, 3)
    assert tuple(model.output.shape) == (None, CLASSES)


# At the original shape the RNN-only models hold 30 M to 118 M weights (0.1 to 0.5 GB; built one
# at a time). Under TensorFlow all six build in a few seconds, so the default run checks them.
# Under JAX on CPU every new weight shape compiles its random initialiser and the large ones are
# slow to fill, so there they wait for the slow run (the small-shape test checks the formula).
_SLOW_UNLESS_TENSORFLOW = pytest.mark.slow if keras.backend.backend() != "tensorflow" else ()


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=_SLOW_UNLESS_TENSORFLOW) for name in models.MODEL_NAMES]
)
def test_original_parameter_counts(name):
    model = models.build_model(name)
    assert models.count_trainable_parameters(model) == ORIGINAL_COUNTS[name]
    if name.startswith("cnn_"):
        assert models.features_per_step(model) == 22_528
        assert model.get_layer("frame_conv").count_params() == 173_056
        assert tuple(model.get_layer("frame_conv").output.shape) == (None, 10, 16, 22, 256)
        assert tuple(model.get_layer("frame_pool").output.shape) == (None, 10, 8, 11, 256)
    else:
        assert models.features_per_step(model) == 230_400


def test_original_counts_follow_from_the_hand_formula():
    # The formula the small-shape test trusts gives the original's six figures.
    for name, count in ORIGINAL_COUNTS.items():
        assert expected_parameters(name, 10, 240, 320, 12) == count


def test_model_takes_uint8_pixels_and_scales_them_itself():
    model = models.build_model("simple_rnn", FRAMES, HEIGHT, WIDTH, **SMALL)
    assert model.input.dtype == "uint8"
    clips = random_clips(2)
    flat = keras.Model(model.input, model.get_layer("flatten_frames").output)
    # Each frame becomes one row-major vector of pixels / 255.
    expected = clips.reshape(2, FRAMES, -1).astype(np.float32) / 255.0
    np.testing.assert_allclose(run(flat, clips), expected, rtol=1e-6)

    probabilities = run(model, clips)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (2, CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_cnn_applies_one_convolution_to_every_frame():
    # Kernel 4 = stride 4 on 24x32 tiles each frame into 6x8 disjoint patches: no padding, so
    # the convolution is one matrix product per patch, computed here in NumPy.
    filters = FILTERS
    model = models.build_model(
        "cnn_gru", FRAMES, HEIGHT, WIDTH, conv_kernel=4, conv_stride=4, **SMALL
    )
    clips = random_clips(2, seed=1)
    features = run(keras.Model(model.input, model.get_layer("frame_flatten").output), clips)

    kernel, bias = model.get_layer("frame_conv").get_weights()  # (4, 4, 3, 8), (8,)
    pixels = clips.astype(np.float64) / 255.0
    patches = pixels.reshape(2, FRAMES, 6, 4, 8, 4, 3)  # batch, frame, row, dy, col, dx, channel
    conv = np.einsum("bfyixjc,ijck->bfyxk", patches, kernel) + bias
    conv = np.maximum(conv, 0.0)
    pooled = conv.reshape(2, FRAMES, 3, 2, 4, 2, filters).max(axis=(3, 5))
    expected = pooled.reshape(2, FRAMES, 3 * 4 * filters)
    assert models.features_per_step(model) == 3 * 4 * filters
    expected_count = expected_parameters(
        "cnn_gru", FRAMES, HEIGHT, WIDTH, CLASSES, UNITS, FILTERS, kernel=4, stride=4
    )
    assert models.count_trainable_parameters(model) == expected_count
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_saved_models_load_with_plain_keras(tmp_path):
    clips = random_clips(2, seed=2)
    for name in models.MODEL_NAMES:
        model = models.build_model(name, FRAMES, HEIGHT, WIDTH, **SMALL)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)  # no custom_objects: stock layers only
        assert loaded.name == name
        assert loaded.input.dtype == "uint8"
        np.testing.assert_array_equal(run(loaded, clips), run(model, clips))


def test_unroll_changes_speed_not_outputs():
    # The original unrolled its CNN + GRU; here unrolling is an option that changes no number.
    looped = models.build_model("cnn_gru", FRAMES, HEIGHT, WIDTH, **SMALL)
    unrolled = models.build_model("cnn_gru", FRAMES, HEIGHT, WIDTH, unroll=True, **SMALL)
    assert unrolled.get_layer("rnn_1").get_config()["unroll"] is True
    unrolled.set_weights(looped.get_weights())
    clips = random_clips(3, seed=3)
    np.testing.assert_allclose(run(unrolled, clips), run(looped, clips), rtol=0, atol=1e-6)


def test_default_recurrent_layers_are_cudnn_eligible():
    for name in ("lstm", "gru", "cnn_lstm", "cnn_gru"):
        model = models.build_model(name, FRAMES, HEIGHT, WIDTH, **SMALL)
        for index in (1, 2, 3):
            config = model.get_layer(f"rnn_{index}").get_config()
            assert config["activation"] == "tanh"
            assert config["recurrent_activation"] == "sigmoid"
            assert config["recurrent_dropout"] == 0
            assert config["unroll"] is False and config["use_bias"] is True
            assert config.get("reset_after", True) is True
            assert config["return_sequences"] is (index < 3)


def test_softmax_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = models.build_model("cnn_lstm", FRAMES, HEIGHT, WIDTH, **SMALL)
        assert model.get_layer("rnn_1").compute_dtype == "float16"
        probabilities = run(model, random_clips(2, seed=4))
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.output.dtype == "float32"
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def build_under(policy, name, **settings):
    """``build_model`` under a global dtype policy, as nightact train builds a mixed model."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return models.build_model(name, **settings)
    finally:
        keras.config.set_dtype_policy(previous)


def lstm_settings(model):
    """(use_cudnn, dtype policy) of each recurrent layer."""
    layers = [model.get_layer(f"rnn_{index}") for index in range(1, 4)]
    return {(layer.use_cudnn, layer.dtype_policy.name) for layer in layers}


def expected_lstm_settings(policy, kernel):
    if kernel == "auto":
        # Independent of the code under test: JAX's cuDNN LSTM takes float32 only.
        sixteen_bits = policy != "float32"
        kernel = "scan" if sixteen_bits and keras.backend.backend() == "jax" else "cudnn"
    return {
        "cudnn": {("auto", policy)},
        "scan": {(False, policy)},
        "cudnn-float32": {("auto", "float32")},
    }[kernel]


@pytest.mark.parametrize("policy", POLICIES)
def test_lstm_kernel_sets_the_lstm_layers_under_every_policy(policy):
    # Under either backend (make test's TensorFlow leg runs this file too).
    for name in models.MODEL_NAMES:
        for kernel in ("auto", "cudnn", "scan", "cudnn-float32"):
            if kernel != "auto" and "lstm" not in name:
                continue
            model = build_under(policy, name, frames=FRAMES, height=HEIGHT, width=WIDTH,
                                lstm_kernel=kernel, **SMALL)  # fmt: skip
            expected = expected_parameters(name, FRAMES, HEIGHT, WIDTH, CLASSES, UNITS, FILTERS)
            assert models.count_trainable_parameters(model) == expected, (name, kernel)
            assert model.output.dtype == "float32"
            if "lstm" in name:
                assert lstm_settings(model) == expected_lstm_settings(policy, kernel), kernel
            else:
                # Only LSTM layers change; the others keep Keras' defaults and the policy.
                recurrent = [model.get_layer(f"rnn_{index}") for index in range(1, 4)]
                assert {layer.dtype_policy.name for layer in recurrent} == {policy}
                assert {getattr(layer, "use_cudnn", "auto") for layer in recurrent} == {"auto"}
    with pytest.raises(ValueError, match="unknown lstm_kernel 'fast'"):
        models.build_model("gru", FRAMES, HEIGHT, WIDTH, lstm_kernel="fast", **SMALL)


def test_choose_lstm_kernel_follows_backend_and_policy():
    for backend in ("jax", "tensorflow", "torch"):
        for policy in POLICIES:
            expected = "scan" if backend == "jax" and policy != "float32" else "cudnn"
            assert models.choose_lstm_kernel(policy, backend) == expected, (backend, policy)


@pytest.mark.parametrize(
    "policy, name",
    [
        pytest.param(policy, name, marks=_SLOW_UNLESS_TENSORFLOW)
        for policy in ("mixed_float16", "mixed_bfloat16")
        for name in models.MODEL_NAMES
    ],
)
def test_original_parameter_counts_under_mixed_precision(policy, name):
    model = build_under(policy, name)
    assert models.count_trainable_parameters(model) == ORIGINAL_COUNTS[name]
    assert all(weight.dtype == "float32" for weight in model.trainable_weights)
    if "lstm" in name:
        assert lstm_settings(model) == expected_lstm_settings(policy, "auto")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_on_a_jax_gpu_16_bit_lstms_keep_off_cudnn(simulated_jax_gpu, policy):
    from conftest import CudnnDtypeError

    clips = random_clips(2, seed=6)
    reference = models.build_model("cnn_lstm", FRAMES, HEIGHT, WIDTH, **SMALL)
    expected = run(reference, clips)
    assert simulated_jax_gpu == ["float32"] * 3  # float32: cuDNN, as before
    tolerance = 2e-3 if policy == "mixed_float16" else 2e-2  # bfloat16 keeps 8 bits

    def built(kernel):
        model = build_under(policy, "cnn_lstm", frames=FRAMES, height=HEIGHT, width=WIDTH,
                            lstm_kernel=kernel, **SMALL)  # fmt: skip
        model.set_weights(reference.get_weights())
        return model

    simulated_jax_gpu.clear()
    np.testing.assert_allclose(run(built("auto"), clips), expected, atol=tolerance)
    assert simulated_jax_gpu == []  # the generic loop: cuDNN never asked
    np.testing.assert_allclose(run(built("cudnn-float32"), clips), expected, atol=tolerance)
    assert simulated_jax_gpu == ["float32"] * 3  # cuDNN, fed float32 at each layer
    # Keras' own default sends the 16-bit LSTM to cuDNN, which fails (the measured crash).
    with pytest.raises(CudnnDtypeError, match=policy.removeprefix("mixed_")):
        run(built("cudnn"), clips)


def test_loaded_16_bit_lstms_are_kept_off_cudnn_again(tmp_path):
    # Keras does not save use_cudnn: a loaded LSTM asks for cuDNN again, which JAX's cannot give
    # a 16-bit layer; settle_loaded_lstms turns it off there, and leaves float32 layers alone.
    clips = random_clips(2, seed=7)
    for kernel in ("scan", "cudnn-float32"):
        model = build_under("mixed_float16", "lstm", frames=FRAMES, height=HEIGHT, width=WIDTH,
                            lstm_kernel=kernel, **SMALL)  # fmt: skip
        path = tmp_path / f"{kernel}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)  # plain Keras
        assert {layer.use_cudnn for layer in loaded.layers if hasattr(layer, "use_cudnn")} == {
            "auto"
        }
        changed = models.settle_loaded_lstms(loaded)
        if kernel == "scan" and keras.backend.backend() == "jax":
            assert changed == ["rnn_1", "rnn_2", "rnn_3"]
            assert lstm_settings(loaded) == {(False, "mixed_float16")}
        else:
            # A float32 LSTM keeps cuDNN; so does TensorFlow's, whose cuDNN takes float16.
            assert changed == []
            assert lstm_settings(loaded) == {("auto", model.get_layer("rnn_1").dtype_policy.name)}
        np.testing.assert_array_equal(run(loaded, clips), run(model, clips))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown model 'transformer'"):
        models.build_model("transformer")
    with pytest.raises(ValueError, match="dropout"):
        models.build_model("lstm", FRAMES, HEIGHT, WIDTH, dropout=1.0)
    with pytest.raises(ValueError, match="units"):
        models.build_model("lstm", FRAMES, HEIGHT, WIDTH, units=())
    with pytest.raises(ValueError, match="positive"):
        models.build_model("gru", 0, HEIGHT, WIDTH)


def test_models_command_prints_one_row_per_model(capsys):
    rows = models.describe_models(FRAMES, HEIGHT, WIDTH, **SMALL)
    assert [row["name"] for row in rows] == list(models.MODEL_NAMES)
    for row in rows:
        count = expected_parameters(row["name"], FRAMES, HEIGHT, WIDTH, CLASSES, UNITS, FILTERS)
        assert row["parameters"] == count
        assert row["size_mb"] == pytest.approx(count * 4 / 2**20)
        assert row["input_shape"] == (None, FRAMES, HEIGHT, WIDTH, 3)
        assert row["output_shape"] == (None, CLASSES)
        assert row["features_per_step"] == expected_features(row["name"], HEIGHT, WIDTH, FILTERS)

    command = ["models", "--frames", "3", "--size", "24x32", "--classes", "5", "--units", "8,6,4"]
    assert main([*command, "--conv-filters", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(models.MODEL_NAMES)
    for line, row in zip(lines[2:], rows, strict=True):
        assert line.split()[0] == row["name"]
        assert f"{row['parameters']:,}" in line
        assert "(None, 3, 24, 32, 3)" in line and line.endswith(f"{row['features_per_step']:,}")


OTHER_BACKEND_SCRIPT = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np

    print(keras.backend.backend())
    clips = np.load(sys.argv[1])
    for path in sys.argv[2:]:
        model = keras.saving.load_model(path)
        np.save(path + ".out.npy", keras.ops.convert_to_numpy(model(clips, training=False)))
    """
)


# Loading a model in the other process compiles every weight initialiser afresh, which is slow
# under JAX, so the default run compares one RNN-only and one CNN model with one recurrent layer,
# and the slow run all six at the usual test size.
@pytest.mark.parametrize(
    "names, units",
    [
        pytest.param(("gru", "cnn_lstm"), (4,), id="two"),
        pytest.param(models.MODEL_NAMES, UNITS, id="all", marks=pytest.mark.slow),
    ],
)
def test_other_backend_gives_the_same_outputs(tmp_path, names, units):
    # A model saved under one backend, loaded under the other: same weights, same outputs.
    backend = keras.backend.backend()
    other = {"tensorflow": "jax", "jax": "tensorflow"}.get(backend)
    if other is None or find_spec(other) is None:
        pytest.skip(f"no second backend to compare with {backend}")
    clips = random_clips(2, seed=5)
    np.save(tmp_path / "clips.npy", clips)
    expected, paths = {}, []
    for name in names:
        model = models.build_model(
            name, FRAMES, HEIGHT, WIDTH, num_classes=CLASSES, units=units, conv_filters=FILTERS
        )
        paths.append(tmp_path / f"{name}.keras")
        model.save(paths[-1])
        expected[name] = run(model, clips)

    environment = {**os.environ, "KERAS_BACKEND": other, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", OTHER_BACKEND_SCRIPT, str(tmp_path / "clips.npy"), *map(str, paths)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == other
    for name, path in zip(names, paths, strict=True):
        outputs = np.load(f"{path}.out.npy")
        np.testing.assert_allclose(outputs, expected[name], rtol=0, atol=1e-5, err_msg=name)
