"""SimpleRNN, LSTM and GRU forward passes in plain NumPy, written from the equations.

These functions exist to be read: each one is the loop a recurrent layer runs, one time step at a
time, with the weights laid out exactly as Keras stores them, so they can be fed the weights of a
trained (or freshly built) Keras layer and give the same numbers (``tests/test_explain.py`` checks
1e-5). Besides every hidden state they return every gate's activation at every step, which the
Keras layers keep to themselves; ``nightact explain --plot`` draws them. ``docs/rnn_cells.md``
walks through the equations and points back here.

Keras' weight layout (``layer.get_weights()`` returns them in this order):

- ``kernel`` W, shape (features, gates * units): multiplies the input x_t.
- ``recurrent_kernel`` U, shape (units, gates * units): multiplies the previous state h_{t-1}.
- ``bias`` b: (gates * units,), except the GRU with ``reset_after=True`` (Keras' default, and the
  one cuDNN runs), whose bias is (2, 3 * units): row 0 is added to x_t W, row 1 to h_{t-1} U.

The gates sit side by side along the last axis, ``units`` columns each: SimpleRNN has one block;
LSTM has four, in the order i (input), f (forget), c (candidate cell), o (output); GRU has three,
z (update), r (reset), h (candidate state). Textbooks often write one matrix acting on the
concatenation [h_{t-1}, x_t]; that matrix is U stacked on top of W.

GRU update, two conventions. Keras computes h_t = z * h_{t-1} + (1 - z) * h~_t, so its z is the
share of the old state that is *kept*. Cho et al. (2014) and many textbooks write
h_t = (1 - z') * h_{t-1} + z' * h~_t, where z' is the share that is *replaced*. The two are the same
network: z' = 1 - z, and since 1 - sigmoid(a) = sigmoid(-a), negating the z columns of W, U and b
turns one into the other (:func:`textbook_gru_weights`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "CELL_NAMES",
    "GATES",
    "cell_name",
    "CellTrace",
    "equations",
    "forward_from_layer",
    "gru_forward",
    "hard_sigmoid",
    "lstm_forward",
    "plot_gates",
    "random_weights",
    "shape_demo",
    "ShapeDemo",
    "sigmoid",
    "simple_rnn_forward",
    "textbook_gru_weights",
]

log = logging.getLogger(__name__)

CELL_NAMES = ("simple_rnn", "lstm", "gru")
_KERAS_CLASS = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}

# Gate names per cell in Keras' column order, with the letter the equations use.
GATES = {
    "simple_rnn": (),
    "lstm": (("input", "i"), ("forget", "f"), ("candidate", "g"), ("output", "o")),
    "gru": (("update", "z"), ("reset", "r"), ("candidate", "h~")),
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + exp(-x)), written to avoid overflow for large |x|."""
    positive = x >= 0
    exp_minus_abs = np.exp(-np.abs(x))
    return np.where(positive, 1.0 / (1.0 + exp_minus_abs), exp_minus_abs / (1.0 + exp_minus_abs))


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras 3's piecewise-linear sigmoid: clip(x / 6 + 1/2, 0, 1)."""
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0)


# The activations a Keras recurrent layer may name that these functions reproduce.
ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


@dataclass
class CellTrace:
    """Everything one forward pass computed, per time step.

    ``outputs`` holds h_1 ... h_T (what ``return_sequences=True`` returns); ``final_state`` is h_T
    and ``final_carry`` the LSTM's c_T (what ``return_state=True`` adds). ``carries`` holds
    c_1 ... c_T for the LSTM. ``gates`` maps each gate's name to its activations, all shaped
    (batch, steps, units).
    """

    cell: str
    outputs: np.ndarray
    final_state: np.ndarray
    final_carry: np.ndarray | None = None
    carries: np.ndarray | None = None
    gates: dict[str, np.ndarray] = field(default_factory=dict)


def simple_rnn_forward(
    inputs: np.ndarray,
    kernel: np.ndarray,
    recurrent_kernel: np.ndarray,
    bias: np.ndarray | None = None,
    initial_state: np.ndarray | None = None,
    activation: str = "tanh",
) -> CellTrace:
    """Run a SimpleRNN over ``inputs`` (batch, steps, features).

    h_t = tanh(x_t W + h_{t-1} U + b), with W = kernel (features, units),
    U = recurrent_kernel (units, units), b = bias (units,).
    """
    x, units = _check_inputs(inputs, kernel, recurrent_kernel, gates=1, cell="simple_rnn")
    act = _activation(activation)
    bias = _bias(bias, (units,), "simple_rnn")
    h = _initial(initial_state, x.shape[0], units, "initial_state")
    kernel, recurrent_kernel = _f64(kernel), _f64(recurrent_kernel)

    outputs = []
    for t in range(x.shape[1]):
        h = act(x[:, t] @ kernel + h @ recurrent_kernel + bias)
        outputs.append(h)
    return CellTrace("simple_rnn", np.stack(outputs, axis=1), final_state=h)


def lstm_forward(
    inputs: np.ndarray,
    kernel: np.ndarray,
    recurrent_kernel: np.ndarray,
    bias: np.ndarray | None = None,
    initial_state: np.ndarray | None = None,
    initial_carry: np.ndarray | None = None,
    activation: str = "tanh",
    recurrent_activation: str = "sigmoid",
) -> CellTrace:
    """Run an LSTM over ``inputs`` (batch, steps, features).

    With a_t = x_t W + h_{t-1} U + b split into four blocks [i | f | c | o]:
    i_t = sigmoid(a_i), f_t = sigmoid(a_f), g_t = tanh(a_c), o_t = sigmoid(a_o),
    c_t = f_t * c_{t-1} + i_t * g_t, h_t = o_t * tanh(c_t).
    W = kernel (features, 4 units), U = recurrent_kernel (units, 4 units), b = bias (4 units,).
    """
    x, units = _check_inputs(inputs, kernel, recurrent_kernel, gates=4, cell="lstm")
    act, gate_act = _activation(activation), _activation(recurrent_activation)
    bias = _bias(bias, (4 * units,), "lstm")
    h = _initial(initial_state, x.shape[0], units, "initial_state")
    c = _initial(initial_carry, x.shape[0], units, "initial_carry")
    kernel, recurrent_kernel = _f64(kernel), _f64(recurrent_kernel)

    outputs, carries = [], []
    gates = {name: [] for name, _ in GATES["lstm"]}
    for t in range(x.shape[1]):
        a = x[:, t] @ kernel + h @ recurrent_kernel + bias
        a_i, a_f, a_c, a_o = np.split(a, 4, axis=-1)
        i, f, g, o = gate_act(a_i), gate_act(a_f), act(a_c), gate_act(a_o)
        c = f * c + i * g
        h = o * act(c)
        for name, value in zip(gates, (i, f, g, o), strict=True):
            gates[name].append(value)
        outputs.append(h)
        carries.append(c)
    return CellTrace(
        "lstm",
        np.stack(outputs, axis=1),
        final_state=h,
        final_carry=c,
        carries=np.stack(carries, axis=1),
        gates={name: np.stack(values, axis=1) for name, values in gates.items()},
    )


def gru_forward(
    inputs: np.ndarray,
    kernel: np.ndarray,
    recurrent_kernel: np.ndarray,
    bias: np.ndarray | None = None,
    initial_state: np.ndarray | None = None,
    reset_after: bool = True,
    update: str = "keras",
    activation: str = "tanh",
    recurrent_activation: str = "sigmoid",
) -> CellTrace:
    """Run a GRU over ``inputs`` (batch, steps, features).

    Blocks [z | r | h] of W = kernel (features, 3 units) and U = recurrent_kernel (units, 3 units):
    z_t = sigmoid(x_t W_z + h_{t-1} U_z + b_z), r_t = sigmoid(x_t W_r + h_{t-1} U_r + b_r), and

    - reset_after=True (Keras' default, cuDNN's form; bias (2, 3 units), input row then
      recurrent row): h~_t = tanh(x_t W_h + b_h + r_t * (h_{t-1} U_h + b'_h));
    - reset_after=False (Cho et al.'s form; bias (3 units,)):
      h~_t = tanh(x_t W_h + (r_t * h_{t-1}) U_h + b_h).

    ``update="keras"``: h_t = z_t * h_{t-1} + (1 - z_t) * h~_t (z keeps the old state).
    ``update="textbook"``: h_t = (1 - z_t) * h_{t-1} + z_t * h~_t (z lets the new state in);
    give it :func:`textbook_gru_weights` of a Keras layer to get the layer's outputs.
    """
    if update not in ("keras", "textbook"):
        raise ValueError(f"update must be 'keras' or 'textbook', got {update!r}")
    x, units = _check_inputs(inputs, kernel, recurrent_kernel, gates=3, cell="gru")
    act, gate_act = _activation(activation), _activation(recurrent_activation)
    if reset_after:
        bias = _bias(bias, (2, 3 * units), "gru (reset_after=True)")
        input_bias, recurrent_bias = bias[0], bias[1]
    else:
        input_bias = _bias(bias, (3 * units,), "gru (reset_after=False)")
        recurrent_bias = np.zeros(3 * units)
    h = _initial(initial_state, x.shape[0], units, "initial_state")
    kernel, recurrent_kernel = _f64(kernel), _f64(recurrent_kernel)
    w_zr, w_h = kernel[:, : 2 * units], kernel[:, 2 * units :]
    u_zr, u_h = recurrent_kernel[:, : 2 * units], recurrent_kernel[:, 2 * units :]

    outputs = []
    gates = {name: [] for name, _ in GATES["gru"]}
    for t in range(x.shape[1]):
        a_zr = x[:, t] @ w_zr + input_bias[: 2 * units] + h @ u_zr + recurrent_bias[: 2 * units]
        z, r = np.split(gate_act(a_zr), 2, axis=-1)
        if reset_after:
            recurrent_h = r * (h @ u_h + recurrent_bias[2 * units :])
        else:
            recurrent_h = (r * h) @ u_h
        candidate = act(x[:, t] @ w_h + input_bias[2 * units :] + recurrent_h)
        if update == "keras":
            h = z * h + (1.0 - z) * candidate
        else:
            h = (1.0 - z) * h + z * candidate
        for name, value in zip(gates, (z, r, candidate), strict=True):
            gates[name].append(value)
        outputs.append(h)
    return CellTrace(
        "gru",
        np.stack(outputs, axis=1),
        final_state=h,
        gates={name: np.stack(values, axis=1) for name, values in gates.items()},
    )


def textbook_gru_weights(
    kernel: np.ndarray, recurrent_kernel: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Convert Keras GRU weights to the textbook update convention by negating the z block.

    sigmoid(-a) = 1 - sigmoid(a), so the textbook gate z' = 1 - z comes from the same weights with
    the z columns (the first ``units``) of W, U and b negated. Works for both bias layouts.
    """
    units = np.shape(recurrent_kernel)[0]
    converted = []
    for weights in (kernel, recurrent_kernel, bias):
        if weights is None:
            converted.append(None)
            continue
        flipped = np.array(weights, dtype=np.float64, copy=True)
        flipped[..., :units] *= -1.0
        converted.append(flipped)
    return converted[0], converted[1], converted[2]


def cell_name(layer) -> str:
    """``simple_rnn``, ``lstm`` or ``gru`` for a Keras recurrent layer; ValueError otherwise."""
    from keras import layers

    for name, layer_class in (
        ("simple_rnn", layers.SimpleRNN),
        ("lstm", layers.LSTM),
        ("gru", layers.GRU),
    ):
        if isinstance(layer, layer_class):
            return name
    raise ValueError(
        f"layer {getattr(layer, 'name', layer)!r} is a {type(layer).__name__}, "
        "not a SimpleRNN, LSTM or GRU layer"
    )


def forward_from_layer(
    layer,
    inputs: np.ndarray,
    initial_state: np.ndarray | None = None,
    initial_carry: np.ndarray | None = None,
) -> CellTrace:
    """Run the NumPy twin of a built Keras SimpleRNN, LSTM or GRU layer on ``inputs``.

    Reads the layer's weights and its activation settings; the result matches
    ``layer(inputs, initial_state=...)`` in inference mode (dropout off).
    """
    name = cell_name(layer)
    if not layer.built:
        raise ValueError(f"layer {layer.name!r} has no weights yet; call or build it first")
    config = layer.get_config()
    if config.get("go_backwards"):
        raise ValueError(f"layer {layer.name!r} runs backwards; only forward layers are supported")
    weights = layer.get_weights()
    kernel, recurrent_kernel = weights[0], weights[1]
    bias = weights[2] if config["use_bias"] else None
    if name == "simple_rnn":
        return simple_rnn_forward(
            inputs, kernel, recurrent_kernel, bias, initial_state, config["activation"]
        )
    if name == "lstm":
        return lstm_forward(
            inputs,
            kernel,
            recurrent_kernel,
            bias,
            initial_state,
            initial_carry,
            config["activation"],
            config["recurrent_activation"],
        )
    return gru_forward(
        inputs,
        kernel,
        recurrent_kernel,
        bias,
        initial_state,
        reset_after=config["reset_after"],
        activation=config["activation"],
        recurrent_activation=config["recurrent_activation"],
    )


@dataclass
class ShapeDemo:
    """A Keras layer run on random data next to its NumPy twin (see :func:`shape_demo`)."""

    cell: str
    inputs: np.ndarray  # (batch, steps, features)
    weight_shapes: dict[str, tuple[int, ...]]
    keras_outputs: dict[str, np.ndarray]  # "sequence", "final_state" and, for LSTM, "final_carry"
    trace: CellTrace
    max_abs_difference: float  # largest |Keras - NumPy| over all returned tensors
    reset_after: bool = True

    def summary(self) -> str:
        """The shapes the layer returned and how close the NumPy twin came, as text."""
        batch, steps, features = self.inputs.shape
        extra = ", reset_after=False" if self.cell == "gru" and not self.reset_after else ""
        lines = [
            f"{_KERAS_CLASS[self.cell]}(units={self.trace.final_state.shape[-1]}, "
            f"return_sequences=True, return_state=True{extra}) on inputs of shape "
            f"{(batch, steps, features)} (batch, steps, features):",
            f"  whole sequence h_1..h_T  {self.keras_outputs['sequence'].shape}",
            f"  final state h_T          {self.keras_outputs['final_state'].shape}",
        ]
        if "final_carry" in self.keras_outputs:
            lines.append(f"  final carry c_T          {self.keras_outputs['final_carry'].shape}")
        lines.append(
            f"NumPy forward pass (nightact.nets.explain) agrees with Keras to "
            f"{self.max_abs_difference:.1e} (largest absolute difference)."
        )
        return "\n".join(lines)


def random_weights(layer, seed: int = 0, scale: float = 0.5) -> None:
    """Give a built layer uniform random weights in [-scale, scale], biases included.

    Keras initialises biases to zero; random ones exercise every term of the equations.
    """
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.uniform(-scale, scale, size=w.shape).astype(np.float32) for w in layer.get_weights()]
    )


def shape_demo(
    cell: str,
    batch: int = 16,
    steps: int = 5,
    features: int = 3,
    units: int = 4,
    seed: int = 0,
    reset_after: bool = True,
) -> ShapeDemo:
    """Run a Keras layer with return_sequences and return_state on random data, and its twin.

    The defaults are the original project's demonstration: 16 sequences of 5 steps of 3 features
    into 4 units give (16, 5, 4) for the whole sequence and (16, 4) for the final state (and for
    the LSTM's final carry).
    """
    import keras
    from keras import layers

    if cell not in CELL_NAMES:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELL_NAMES)}")
    if min(batch, steps, features, units) < 1:
        raise ValueError("batch, steps, features and units must all be positive")
    options = {"return_sequences": True, "return_state": True}
    if cell == "gru":
        options["reset_after"] = reset_after
    layer = getattr(layers, _KERAS_CLASS[cell])(units, **options)
    layer.build((batch, steps, features))
    random_weights(layer, seed)
    inputs = np.random.default_rng(seed + 1).normal(size=(batch, steps, features))
    inputs = inputs.astype(np.float32)

    returned = [keras.ops.convert_to_numpy(value) for value in layer(inputs)]
    names = ["sequence", "final_state", "final_carry"][: len(returned)]
    keras_outputs = dict(zip(names, returned, strict=True))
    trace = forward_from_layer(layer, inputs)
    ours = {"sequence": trace.outputs, "final_state": trace.final_state}
    if trace.final_carry is not None:
        ours["final_carry"] = trace.final_carry
    difference = max(float(np.max(np.abs(keras_outputs[key] - ours[key]))) for key in names)
    weight_names = [weight.path.rsplit("/", 1)[-1] for weight in layer.weights]
    weight_shapes = {
        name: tuple(w.shape) for name, w in zip(weight_names, layer.get_weights(), strict=True)
    }
    return ShapeDemo(
        cell, inputs, weight_shapes, keras_outputs, trace, difference, reset_after=reset_after
    )


def equations(cell: str, features: int = 3, units: int = 4, reset_after: bool = True) -> str:
    """The cell's equations as text, with the shape of every weight and where the code is."""
    if cell not in CELL_NAMES:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELL_NAMES)}")
    n, gates = units, max(1, len(GATES[cell]))
    if cell == "gru" and reset_after:
        bias = f"{_dims(2, 3 * n)}  row 0 goes with W, row 1 with U"
    else:
        bias = _dims(gates * n)
    order = {
        "simple_rnn": "a single block",
        "lstm": "i, f, c, o; block c makes the candidate g_t",
        "gru": "z, r, h; block h makes the candidate h~_t",
    }[cell]
    lines = [
        f"{_KERAS_CLASS[cell]}: {features} features -> {n} units. "
        f"layer.get_weights() holds ({order}):",
        f"  kernel W            {_dims(features, gates * n)}",
        f"  recurrent_kernel U  {_dims(n, gates * n)}",
        f"  bias b              {bias}",
        f"At each step t, x_t is {_dims('batch', features)}; h_(t-1) "
        + ("and c_(t-1) are " if cell == "lstm" else "is ")
        + f"{_dims('batch', n)}:",
    ]
    block = [f"[{k * n}:{(k + 1) * n}]" for k in range(gates)]
    if cell == "simple_rnn":
        steps = [("h_t = tanh(x_t W + h_(t-1) U + b)", "hidden state")]
    elif cell == "lstm":
        steps = [
            ("a_t = x_t W + h_(t-1) U + b", f"{_dims('batch', 4 * n)}"),
            (f"i_t = sigmoid(a_t{block[0]})", "input gate"),
            (f"f_t = sigmoid(a_t{block[1]})", "forget gate"),
            (f"g_t = tanh(a_t{block[2]})", "candidate cell"),
            (f"o_t = sigmoid(a_t{block[3]})", "output gate"),
            ("c_t = f_t * c_(t-1) + i_t * g_t", "carry (cell state)"),
            ("h_t = o_t * tanh(c_t)", "hidden state"),
        ]
    else:
        if reset_after:
            candidate = ("h~_t = tanh(x_t W_h + b_h + r_t * (h_(t-1) U_h + b'_h))", "reset after")
        else:
            candidate = ("h~_t = tanh(x_t W_h + b_h + (r_t * h_(t-1)) U_h)", "reset before")
        steps = [
            ("z_t = sigmoid(x_t W_z + h_(t-1) U_z + b_z)", "update gate"),
            ("r_t = sigmoid(x_t W_r + h_(t-1) U_r + b_r)", "reset gate"),
            candidate,
            ("h_t = z_t * h_(t-1) + (1 - z_t) * h~_t", "Keras: z keeps the old state"),
        ]
    width = max(len(equation) for equation, _ in steps) + 3
    lines += [f"  {equation.ljust(width)}{note}" for equation, note in steps]
    if cell == "simple_rnn" or cell == "lstm":
        lines.append("The textbook's W [h_(t-1), x_t] is this with U stacked on top of W.")
    if cell == "gru":
        if reset_after:
            lines.append("(b_z, b_r: both bias rows summed; b_h row 0, b'_h row 1.)")
        lines += [
            "Textbook form: h_t = (1 - z'_t) * h_(t-1) + z'_t * h~_t with z' = 1 - z: the same",
            "network with the z columns of W, U and b negated (textbook_gru_weights).",
        ]
    lines.append(f"Code: nightact.nets.explain.{cell}_forward")
    return "\n".join(lines)


def _dims(*dims) -> str:
    """(batch, 3) rather than ('batch', 3)."""
    return "(" + ", ".join(str(dim) for dim in dims) + ("," if len(dims) == 1 else "") + ")"


def plot_gates(trace: CellTrace, path: str | Path, sample: int = 0, title: str | None = None):
    """Draw one heatmap per gate (and the states) over time for one sequence; write a PNG.

    Rows are units, columns time steps. Gates squashed by a sigmoid share the colour range
    [0, 1]; tanh outputs and states share [-1, 1] (an LSTM carry can leave it; its own range is
    used then).
    """
    # The object-oriented Figure API draws with the Agg canvas without touching pyplot's global
    # state, so this works in headless runs and never opens a window.
    from matplotlib.figure import Figure

    if not 0 <= sample < trace.outputs.shape[0]:
        raise ValueError(f"sample {sample} is outside the batch of {trace.outputs.shape[0]}")
    letters = dict(GATES[trace.cell])
    panels = [
        (f"{name} {letters[name]}", values, name != "candidate")
        for name, values in trace.gates.items()
    ]
    if trace.carries is not None:
        panels.append(("carry c", trace.carries, False))
    panels.append(("hidden state h", trace.outputs, False))

    steps, units = trace.outputs.shape[1], trace.outputs.shape[2]
    figure = Figure(
        figsize=(max(2.8, 0.4 * steps + 1.8) * len(panels), 0.25 * units + 2.4),
        layout="constrained",
    )
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (label, values, is_sigmoid_gate) in zip(axes, panels, strict=True):
        matrix = values[sample].T  # (units, steps)
        if is_sigmoid_gate:
            low, high, colours = 0.0, 1.0, "viridis"
        else:
            bound = max(1.0, float(np.max(np.abs(matrix))))
            low, high, colours = -bound, bound, "coolwarm"
        image = axis.imshow(matrix, aspect="auto", vmin=low, vmax=high, cmap=colours)
        axis.set_title(label)
        axis.set_xlabel("time step")
        axis.set_ylabel("unit")
        if steps <= 20:
            axis.set_xticks(range(steps), [str(step + 1) for step in range(steps)])
        if units <= 20:
            axis.set_yticks(range(units))
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(title or f"{_KERAS_CLASS[trace.cell]} activations, sequence {sample}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" keeps tick labels and titles inside the image.
    figure.savefig(path, dpi=120, bbox_inches="tight")
    log.debug("wrote %s", path)
    return path


def _check_inputs(inputs, kernel, recurrent_kernel, gates: int, cell: str):
    x = _f64(inputs)
    if x.ndim != 3:
        raise ValueError(f"{cell}: inputs must be (batch, steps, features), got shape {x.shape}")
    units = np.shape(recurrent_kernel)[0]
    expected_kernel = (x.shape[-1], gates * units)
    if np.shape(kernel) != expected_kernel:
        raise ValueError(
            f"{cell}: kernel must be {expected_kernel} for {x.shape[-1]} features and "
            f"{units} units, got {np.shape(kernel)}"
        )
    if np.shape(recurrent_kernel) != (units, gates * units):
        raise ValueError(
            f"{cell}: recurrent_kernel must be {(units, gates * units)}, "
            f"got {np.shape(recurrent_kernel)}"
        )
    return x, units


def _bias(bias, shape: tuple[int, ...], cell: str) -> np.ndarray:
    if bias is None:
        return np.zeros(shape)
    if np.shape(bias) != shape:
        raise ValueError(f"{cell}: bias must have shape {shape}, got {np.shape(bias)}")
    return _f64(bias)


def _initial(state, batch: int, units: int, what: str) -> np.ndarray:
    if state is None:
        return np.zeros((batch, units))
    if np.shape(state) != (batch, units):
        raise ValueError(f"{what} must have shape {(batch, units)}, got {np.shape(state)}")
    return _f64(state)


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(
            f"activation {name!r} is not implemented here; use one of {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _f64(array) -> np.ndarray:
    # Keras computes in float32; float64 here keeps our side of the comparison exact.
    return np.asarray(array, dtype=np.float64)
