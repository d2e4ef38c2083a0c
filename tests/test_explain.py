"""The NumPy cells against Keras' own layers, against hand arithmetic, and the explain command."""

from __future__ import annotations

import math

import keras
import matplotlib.image
import numpy as np
import pytest
from keras import layers

from nightact.cli import main
from nightact.nets import explain as cells

TOLERANCE = 1e-5

# (cell, Keras layer class, extra layer options)
LAYERS = {
    "simple_rnn": (layers.SimpleRNN, {}),
    "lstm": (layers.LSTM, {}),
    "gru": (layers.GRU, {}),
    "gru_reset_before": (layers.GRU, {"reset_after": False}),
    "gru_without_bias": (layers.GRU, {"use_bias": False}),
}


def _random_layer(key: str, features: int, units: int, seed: int, **options):
    layer_class, extra = LAYERS[key]
    layer = layer_class(units, **extra, **options)
    layer.build((None, None, features))
    rng = np.random.default_rng(seed)
    # Random biases too (Keras starts them at zero), so every term of the equations counts.
    layer.set_weights(
        [rng.uniform(-0.6, 0.6, size=w.shape).astype("float32") for w in layer.get_weights()]
    )
    return layer


def _numpy(values):
    return [keras.ops.convert_to_numpy(value) for value in values]


@pytest.mark.parametrize("key", list(LAYERS))
def test_numpy_cell_matches_keras_sequences_and_states(key):
    # The original's demo shape: 16 sequences, 5 steps, 3 features, 4 units; a random start state.
    batch, steps, features, units = 16, 5, 3, 4
    layer = _random_layer(key, features, units, seed=1, return_sequences=True, return_state=True)
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(batch, steps, features)).astype("float32")
    start = rng.uniform(-1, 1, size=(batch, units)).astype("float32")
    carry = rng.uniform(-1, 1, size=(batch, units)).astype("float32")
    initial_state = [start, carry] if key == "lstm" else [start]

    returned = _numpy(layer(inputs, initial_state=initial_state))
    trace = cells.forward_from_layer(
        layer, inputs, initial_state=start, initial_carry=carry if key == "lstm" else None
    )

    sequence, final_state = returned[0], returned[1]
    assert sequence.shape == (16, 5, 4)
    assert final_state.shape == (16, 4)
    np.testing.assert_allclose(trace.outputs, sequence, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(trace.final_state, final_state, rtol=0, atol=TOLERANCE)
    if key == "lstm":
        assert len(returned) == 3 and returned[2].shape == (16, 4)
        np.testing.assert_allclose(trace.final_carry, returned[2], rtol=0, atol=TOLERANCE)
    else:
        assert len(returned) == 2 and trace.final_carry is None
    # Every gate is recorded at every step, sigmoid gates strictly between 0 and 1.
    for name, values in trace.gates.items():
        assert values.shape == (16, 5, 4)
        if name != "candidate":
            assert values.min() > 0 and values.max() < 1


def test_last_output_only_equals_final_state():
    layer = _random_layer("gru_reset_before", features=5, units=3, seed=3)
    inputs = np.random.default_rng(4).normal(size=(2, 7, 5)).astype("float32")
    last = keras.ops.convert_to_numpy(layer(inputs))
    trace = cells.forward_from_layer(layer, inputs)
    assert last.shape == (2, 3)
    assert trace.outputs.shape == (2, 7, 3)
    np.testing.assert_allclose(trace.final_state, last, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(trace.outputs[:, -1], trace.final_state)


@pytest.mark.parametrize("cell", cells.CELL_NAMES)
def test_shape_demo_gives_the_original_shapes(cell):
    demo = cells.shape_demo(cell)
    assert demo.inputs.shape == (16, 5, 3)
    assert demo.keras_outputs["sequence"].shape == (16, 5, 4)
    assert demo.keras_outputs["final_state"].shape == (16, 4)
    assert ("final_carry" in demo.keras_outputs) == (cell == "lstm")
    if cell == "lstm":
        assert demo.keras_outputs["final_carry"].shape == (16, 4)
    assert demo.max_abs_difference < TOLERANCE
    gates = {"simple_rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert demo.weight_shapes["kernel"] == (3, 4 * gates)
    assert demo.weight_shapes["recurrent_kernel"] == (4, 4 * gates)
    assert demo.weight_shapes["bias"] == ((2, 12) if cell == "gru" else (4 * gates,))
    # The printed equations quote the layer's real weight shapes.
    text = cells.equations(cell, features=3, units=4)
    for name, shape in demo.weight_shapes.items():
        assert str(shape) in text.split(name, 1)[1].splitlines()[0]


def test_simple_rnn_by_hand():
    # One unit, one feature: h_t = tanh(w x_t + u h_(t-1) + b), written out with scalars.
    w, u, b = 0.7, -1.3, 0.2
    xs = [0.5, -1.0, 2.0]
    expected, h = [], 0.0
    for x in xs:
        h = math.tanh(w * x + u * h + b)
        expected.append(h)
    trace = cells.simple_rnn_forward(
        np.array(xs).reshape(1, 3, 1), np.array([[w]]), np.array([[u]]), np.array([b])
    )
    np.testing.assert_allclose(trace.outputs.ravel(), expected, rtol=1e-12)


def test_lstm_one_step_by_hand():
    # One unit, one feature, zero start: c_1 = i g, h_1 = o tanh(c_1); forget plays no part.
    x = 0.8
    kernel = np.array([[0.5, -0.4, 1.1, 0.3]])  # columns i, f, c, o
    bias = np.array([0.1, 0.2, -0.3, 0.4])
    recurrent = np.array([[9.0, 9.0, 9.0, 9.0]])  # multiplies h_0 = 0, so it must not matter
    a_i, a_f, a_c, a_o = (kernel[0] * x + bias).tolist()

    def logistic(value):
        return 1.0 / (1.0 + math.exp(-value))

    i, f, g, o = logistic(a_i), logistic(a_f), math.tanh(a_c), logistic(a_o)
    trace = cells.lstm_forward(np.array([[[x]]]), kernel, recurrent, bias)
    assert trace.gates["input"].item() == pytest.approx(i)
    assert trace.gates["forget"].item() == pytest.approx(f)
    assert trace.gates["candidate"].item() == pytest.approx(g)
    assert trace.gates["output"].item() == pytest.approx(o)
    assert trace.final_carry.item() == pytest.approx(i * g)
    assert trace.final_state.item() == pytest.approx(o * math.tanh(i * g))


@pytest.mark.parametrize("key", ["gru", "gru_reset_before"])
def test_gru_textbook_update_is_the_same_network(key):
    layer = _random_layer(key, features=3, units=4, seed=5, return_sequences=True)
    inputs = np.random.default_rng(6).normal(size=(3, 6, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(layer(inputs))
    kernel, recurrent, bias = layer.get_weights()
    reset_after = key == "gru"

    keras_form = cells.gru_forward(inputs, kernel, recurrent, bias, reset_after=reset_after)
    textbook = cells.gru_forward(
        inputs,
        *cells.textbook_gru_weights(kernel, recurrent, bias),
        reset_after=reset_after,
        update="textbook",
    )
    np.testing.assert_allclose(textbook.outputs, expected, rtol=0, atol=TOLERANCE)
    # Same states, and the textbook's update gate is one minus Keras'.
    np.testing.assert_allclose(textbook.outputs, keras_form.outputs, atol=1e-12)
    np.testing.assert_allclose(textbook.gates["update"], 1 - keras_form.gates["update"], atol=1e-12)
    np.testing.assert_allclose(textbook.gates["reset"], keras_form.gates["reset"], atol=1e-12)


def test_forward_from_layer_refuses_what_it_cannot_reproduce():
    with pytest.raises(ValueError, match="not a SimpleRNN, LSTM or GRU"):
        cells.forward_from_layer(layers.Dense(3), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="no weights yet"):
        cells.forward_from_layer(layers.LSTM(3), np.zeros((1, 2, 3)))
    odd = layers.SimpleRNN(2, activation="selu")
    odd.build((None, None, 3))
    with pytest.raises(ValueError, match="selu"):
        cells.forward_from_layer(odd, np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="kernel must be"):
        cells.lstm_forward(np.zeros((1, 2, 3)), np.zeros((3, 6)), np.zeros((2, 8)))


def test_plot_gates_writes_a_png(tmp_path):
    trace = cells.shape_demo("lstm", batch=2, steps=6, units=3).trace
    path = cells.plot_gates(trace, tmp_path / "plots" / "lstm.png", sample=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    # Six panels side by side (four gates, carry, hidden state): far wider than tall.
    assert image.shape[1] > 3 * image.shape[0]
    with pytest.raises(ValueError, match="outside the batch"):
        cells.plot_gates(trace, tmp_path / "bad.png", sample=2)


def test_explain_command_prints_shapes_and_equations(tmp_path, capsys):
    plot = tmp_path / "gates.png"
    assert main(["explain", "lstm", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "whole sequence h_1..h_T  (16, 5, 4)" in out
    assert "final state h_T          (16, 4)" in out
    assert "final carry c_T          (16, 4)" in out
    assert "kernel W            (3, 16)" in out
    assert "c_t = f_t * c_(t-1) + i_t * g_t" in out
    assert plot.stat().st_size > 0

    assert main(["explain", "gru", "--reset-before", "--units", "2"]) == 0
    out = capsys.readouterr().out
    assert "bias b              (6,)" in out and "reset before" in out

    assert main(["explain", "lstm", "--reset-before"]) == 2
    assert "gru cell only" in capsys.readouterr().err
