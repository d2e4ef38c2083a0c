"""The six video classifiers of the original project, rebuilt with the Keras functional API.

Every model reads a clip as uint8 pixels of shape (batch, frames, height, width, 3) and returns
softmax probabilities over the classes. Two families share one recurrent head:

- RNN only (``simple_rnn``, ``lstm``, ``gru``): each frame is flattened to one long vector
  (230,400 numbers at 240x320) and the recurrent stack reads ten such vectors.
- CNN + RNN (``cnn_simple_rnn``, ``cnn_lstm``, ``cnn_gru``): one Conv2D + MaxPooling2D, applied to
  every frame with the same weights by ``TimeDistributed``, shrinks each frame to a 22,528-number
  feature vector first.

The recurrent head is RNN(128) -> Dropout -> RNN(64) -> Dropout -> RNN(32) -> Dropout -> Dense
softmax, with Keras' defaults otherwise. At the original shape (10 x 240 x 320 x 3, 12 classes)
the trainable parameter counts equal the original's exactly; ``tests/test_models.py`` checks that.

Design choices and why:

- Pixels are scaled to [0, 1] inside the model (``Rescaling(1/255)``), so prepared clips, which are
  stored as uint8, and ``predict`` feed the model directly, and a saved model carries its own
  preprocessing.
- Only stock Keras layers are used, so ``keras.saving.load_model`` opens a saved ``.keras`` file
  without custom objects, under either backend.
- The recurrent layers keep Keras' default activations, no recurrent dropout and ``unroll=False``:
  those are the conditions under which LSTM and GRU run on the fused cuDNN kernels on a GPU.
  ``unroll=True`` (which the original's CNN GRU used) is still available; it trades memory for a
  loop-free graph and gives the same outputs.
- The softmax layer computes in float32 (``dtype="float32"``), so under the ``mixed_float16``
  policy the probabilities, and the loss computed from them, keep full precision.
- How the LSTM layers compute is a choice (``lstm_kernel``, see :func:`choose_lstm_kernel`): JAX
  sends an LSTM to cuDNN through ``jax.experimental.rnn``, which takes float32 only, so under
  mixed precision on JAX the layers run Keras' generic loop instead. The weights are the same
  in every case: a checkpoint loads into any of them.
"""

from __future__ import annotations

import gc
import logging
import math

import keras
from keras import layers

from nightact.core.names import LSTM_KERNELS, MODEL_NAMES, NUM_CLASSES

__all__ = [
    "attach_backbone",
    "build_head",
    "build_model",
    "choose_lstm_kernel",
    "count_trainable_parameters",
    "describe_models",
    "features_per_step",
    "format_model_table",
    "frame_features_cnn",
    "frame_features_flat",
    "recurrent_head",
    "settle_loaded_lstms",
]

log = logging.getLogger(__name__)


# The recurrent layer class behind each cell name.
_RECURRENT_LAYERS = {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}


def build_model(
    name: str,
    frames: int = 10,
    height: int = 240,
    width: int = 320,
    num_classes: int = NUM_CLASSES,
    units: tuple[int, ...] = (128, 64, 32),
    dropout: float = 0.5,
    conv_filters: int = 256,
    conv_kernel: int = 15,
    conv_stride: int = 15,
    unroll: bool = False,
    lstm_kernel: str = "auto",
) -> keras.Model:
    """Build one of the six models by name (see ``MODEL_NAMES``).

    Args:
        name: ``simple_rnn``, ``lstm``, ``gru`` or the same with a ``cnn_`` prefix.
        frames, height, width: the clip shape the model reads, as uint8 RGB.
        num_classes: width of the softmax output.
        units: widths of the stacked recurrent layers; every layer but the last returns its
            whole sequence to the next one.
        dropout: rate of the Dropout after every recurrent layer (and after the pooling in the
            CNN models).
        conv_filters, conv_kernel, conv_stride: the per-frame Conv2D of the CNN models (padding
            "same", ReLU), followed by 2x2 max pooling.
        unroll: unroll every recurrent layer over the frames instead of looping. Off by default
            because unrolled LSTM/GRU layers cannot use cuDNN.
        lstm_kernel: how the LSTM layers compute, one of ``LSTM_KERNELS`` ("auto": what
            :func:`choose_lstm_kernel` picks under the dtype policy in force). No effect on the
            other cells, nor on the weights.

    Returns:
        An uncompiled ``keras.Model`` named ``name``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    _check_shape(frames, height, width, num_classes, units, dropout)

    pixels = keras.Input(shape=(frames, height, width, 3), dtype="uint8", name="pixels")
    scaled = layers.Rescaling(1.0 / 255.0, name="rescale")(pixels)
    if name.startswith("cnn_"):
        cell = name.removeprefix("cnn_")
        features = frame_features_cnn(scaled, conv_filters, conv_kernel, conv_stride, dropout)
    else:
        cell = name
        features = frame_features_flat(scaled)
    probabilities = recurrent_head(features, cell, units, dropout, num_classes, unroll, lstm_kernel)
    return keras.Model(pixels, probabilities, name=name)


def build_head(
    cell: str,
    frames: int,
    features: int,
    num_classes: int,
    units: tuple[int, ...] = (128, 64, 32),
    dropout: float = 0.5,
    unroll: bool = False,
    lstm_kernel: str = "auto",
) -> keras.Model:
    """The recurrent head alone, reading frame embeddings (batch, frames, features).

    The same stack as the six models (:func:`recurrent_head`), for features computed once by a
    frozen backbone (:mod:`nightact.data.embed`). Named after its cell.
    """
    if cell not in _RECURRENT_LAYERS:
        raise ValueError(
            f"a head on embeddings is one of {', '.join(_RECURRENT_LAYERS)}, got {cell!r}"
        )
    _check_shape(frames, 1, 1, num_classes, units, dropout)
    embeddings = keras.Input(shape=(frames, features), name="embeddings")
    probabilities = recurrent_head(
        embeddings, cell, units, dropout, num_classes, unroll, lstm_kernel
    )
    return keras.Model(embeddings, probabilities, name=cell)


def attach_backbone(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """One model from uint8 clips to probabilities: the backbone on every frame, then the head.

    ``backbone`` is a frame encoder (:func:`nightact.nets.backbones.build_backbone`), ``head`` a
    model of :func:`build_head`; their layers (and weights) are shared, not copied. The features are
    rounded to float16 on the way, as the embedding store keeps them, so the model gives what the
    head gave on the stored embeddings. Only stock Keras layers: it loads with plain Keras.
    """
    frames = head.input.shape[1]
    height, width = backbone.input.shape[1:3]
    pixels = keras.Input(shape=(frames, height, width, 3), dtype="uint8", name="pixels")
    features = layers.TimeDistributed(backbone, name="frame_features")(pixels)
    x = layers.Activation("linear", dtype="float16", name="as_stored")(features)
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(pixels, x, name=f"{backbone.name.removesuffix('_encoder')}_{head.name}")


def frame_features_flat(frames):
    """Flatten every frame of (batch, frames, h, w, c) to one vector: (batch, frames, h*w*c).

    A Reshape does what ``TimeDistributed(Flatten())`` would, as one cheap view of the tensor.
    """
    _, steps, height, width, channels = frames.shape
    return layers.Reshape((steps, height * width * channels), name="flatten_frames")(frames)


def frame_features_cnn(frames, filters: int, kernel: int, stride: int, dropout: float):
    """Apply one Conv2D + MaxPooling2D + Dropout + Flatten to every frame with shared weights.

    ``TimeDistributed`` folds the time axis into the batch axis, runs the wrapped layer on each
    frame, and unfolds it again, so one set of convolution weights serves all frames.
    """
    conv = layers.Conv2D(filters, kernel, strides=stride, padding="same", activation="relu")
    x = layers.TimeDistributed(conv, name="frame_conv")(frames)
    pool = layers.MaxPooling2D(pool_size=2, strides=2, padding="same")
    x = layers.TimeDistributed(pool, name="frame_pool")(x)
    x = layers.TimeDistributed(layers.Dropout(dropout), name="frame_dropout")(x)
    return layers.TimeDistributed(layers.Flatten(), name="frame_flatten")(x)


def recurrent_head(
    features,
    cell: str,
    units: tuple[int, ...],
    dropout: float,
    num_classes: int,
    unroll: bool,
    lstm_kernel: str = "auto",
):
    """Stack recurrent layers of one cell type on (batch, steps, features) and classify.

    Layers are named ``rnn_1``, ``rnn_2``, ... so their weights can be found by name (for
    example by ``nightact explain`` or ``nightact.nets.explain.forward_from_layer``).
    """
    recurrent_layer = _RECURRENT_LAYERS[cell]
    options = _lstm_options(lstm_kernel)  # checked for every cell, used by LSTM layers only
    if cell != "lstm":
        options = {}
    x = features
    for index, width in enumerate(units, start=1):
        last = index == len(units)
        recurrent = recurrent_layer(
            width, return_sequences=not last, unroll=unroll, name=f"rnn_{index}", **options
        )
        x = recurrent(x)
        x = layers.Dropout(dropout, name=f"dropout_{index}")(x)
    # float32 softmax: stable probabilities and loss under mixed_float16.
    classifier = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )
    return classifier(x)


def choose_lstm_kernel(policy: str | None = None, backend: str | None = None) -> str:
    """What ``lstm_kernel="auto"`` is under a dtype policy and a backend (default: those in force).

    "scan" where the layers compute in 16 bits on JAX, "cudnn" (Keras' own default) otherwise.
    JAX's cuDNN LSTM (``jax.experimental.rnn``, which Keras uses on a GPU) takes float32 only
    and fails on float16 and bfloat16; Keras' generic loop (``lax.scan``) has no such limit, and
    on an H200 JAX's scan GRU took a third of the time of its cuDNN LSTM (docs/backends.md). It
    is chosen on a CPU too, where it computes the same, so the choice does not depend on where
    a run starts. On TensorFlow cuDNN takes float16, and the original trained that way.
    """
    policy = policy or keras.config.dtype_policy().name
    backend = backend or keras.config.backend()
    if backend == "jax" and keras.dtype_policies.get(policy).compute_dtype != "float32":
        return "scan"
    return "cudnn"


def settle_loaded_lstms(model: keras.Model) -> list[str]:
    """Turn cuDNN off in a loaded model's LSTM layers where it cannot run; return their names.

    Keras does not save ``use_cudnn`` (3.15), so every loaded LSTM asks for cuDNN again; a layer
    that computes in float16 or bfloat16 would then fail on a JAX GPU. Such layers get what
    :func:`choose_lstm_kernel` picks for their own policy here. Nothing else changes.
    """
    changed = []
    for layer in _all_layers(model):
        if not isinstance(layer, layers.LSTM) or layer.use_cudnn is False:
            continue
        if choose_lstm_kernel(layer.dtype_policy.name) == "scan":
            layer.use_cudnn = False
            changed.append(layer.name)
    return changed


def _all_layers(model):
    """Every layer in ``model``, inside nested models and ``TimeDistributed`` wrappers too."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, layers.TimeDistributed):
            layer = layer.layer
            yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _lstm_options(lstm_kernel: str) -> dict:
    """The LSTM layer arguments that make ``lstm_kernel``; the weights are the same in all."""
    if lstm_kernel not in LSTM_KERNELS:
        raise ValueError(
            f"unknown lstm_kernel {lstm_kernel!r}; choose one of {', '.join(LSTM_KERNELS)}"
        )
    if lstm_kernel == "auto":
        lstm_kernel = choose_lstm_kernel()
    if lstm_kernel == "scan":
        return {"use_cudnn": False}
    if lstm_kernel == "cudnn-float32":
        # Inputs are cast to float32 at the layer and its outputs back by the next layer.
        return {"dtype": "float32"}
    return {}


def features_per_step(model: keras.Model) -> int:
    """Width of the vector the first recurrent layer reads at each time step."""
    return int(model.get_layer("rnn_1").input.shape[-1])


def count_trainable_parameters(model: keras.Model) -> int:
    """Number of trainable scalars in the model."""
    return int(sum(math.prod(weight.shape) for weight in model.trainable_weights))


def describe_models(
    frames: int = 10,
    height: int = 240,
    width: int = 320,
    num_classes: int = NUM_CLASSES,
    names: tuple[str, ...] = MODEL_NAMES,
    **build_kwargs,
) -> list[dict]:
    """Build each model in turn and describe it, one dict per model.

    Keys: ``name``, ``parameters`` (trainable), ``size_mb`` (the weights in float32, in MB of
    2**20 bytes, as Keras' ``summary()`` reports them), ``input_shape`` and ``output_shape``
    (batch axis as None) and ``features_per_step`` (the width each recurrent step reads).

    The RNN-only models are large at the original shape (the LSTM has 118 M parameters, 450 MB);
    each model is released before the next is built, so at most one is in memory.
    """
    rows = []
    for name in names:
        model = build_model(name, frames, height, width, num_classes, **build_kwargs)
        parameters = count_trainable_parameters(model)
        rows.append(
            {
                "name": name,
                "parameters": parameters,
                "size_mb": parameters * 4 / 2**20,
                "input_shape": tuple(model.input.shape),
                "output_shape": tuple(model.output.shape),
                "features_per_step": features_per_step(model),
            }
        )
        log.debug("built %s: %d parameters", name, parameters)
        del model
        gc.collect()
    return rows


def format_model_table(rows: list[dict]) -> str:
    """Render the rows of :func:`describe_models` as an aligned text table."""

    def shape(values) -> str:
        return "(" + ", ".join("None" if value is None else str(value) for value in values) + ")"

    header = ("model", "parameters", "size MB", "input shape", "output shape", "RNN input/step")
    body = [
        (
            row["name"],
            f"{row['parameters']:,}",
            f"{row['size_mb']:.1f}",
            shape(row["input_shape"]),
            shape(row["output_shape"]),
            f"{row['features_per_step']:,}",
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]
    # Names and shapes read left to right; numbers line up on the right.
    left = {0, 3, 4}

    def render(line) -> str:
        cells = [
            text.ljust(width) if column in left else text.rjust(width)
            for column, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def _check_shape(frames, height, width, num_classes, units, dropout) -> None:
    if min(frames, height, width) < 1:
        raise ValueError(
            f"frames, height and width must be positive, got {frames}x{height}x{width}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not units or min(units) < 1:
        raise ValueError(f"units must be one or more positive widths, got {units!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
