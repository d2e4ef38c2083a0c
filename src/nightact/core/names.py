"""Names that several modules share, written once. Keras-free, so data commands and reports can
import them without loading a backend.
"""

from __future__ import annotations

__all__ = [
    "CLASS_NAMES",
    "LOSSES",
    "LSTM_KERNELS",
    "MIXED_DTYPES",
    "MODEL_LABELS",
    "MODEL_NAMES",
    "NUM_CLASSES",
    "ORIGINAL_MS_PER_STEP",
    "SYNTH_CONFIG_FILE",
    "VERSION",
    "model_key",
]

# The package's version, written here only: pyproject.toml reads it (setuptools' dynamic attr).
VERSION = "0.1.0"

# What `nightact synth` writes beside the class folders: its settings. Not a video, and not a
# stray file of the dataset either, so `prepare` passes over it without a word.
SYNTH_CONFIG_FILE = "synth_config.json"

# The six models, in the order tables, reports and the demo list them.
MODEL_NAMES = ("simple_rnn", "lstm", "gru", "cnn_simple_rnn", "cnn_lstm", "cnn_gru")

# How reports and tables spell each model.
MODEL_LABELS = {
    "simple_rnn": "SimpleRNN",
    "lstm": "LSTM",
    "gru": "GRU",
    "cnn_simple_rnn": "CNN + SimpleRNN",
    "cnn_lstm": "CNN + LSTM",
    "cnn_gru": "CNN + GRU",
}


def model_key(model: str, backbone: str | None = None) -> str:
    """The name that tells runs apart in tables: the model, prefixed by its backbone if any."""
    return f"{backbone}+{model}" if backbone else model


# Training losses: categorical cross-entropy, or the original's mean squared logarithmic error.
LOSSES = ("crossentropy", "msle")

# How the LSTM layers compute (docs/backends.md, "Mixed precision and the LSTM"). "auto" picks
# one of the others for the backend and the dtype policy; "cudnn" is Keras' own default (cuDNN
# where the backend and device allow it, the generic loop otherwise); "scan" is the generic loop
# always (lax.scan on JAX); "cudnn-float32" keeps the LSTM layers in float32 in a mixed model.
LSTM_KERNELS = ("auto", "cudnn", "scan", "cudnn-float32")

# The 16-bit float of mixed precision: float16 (the original's; the loss is scaled) or bfloat16.
MIXED_DTYPES = ("float16", "bfloat16")

# NoctAct-HAR's class folder names, in sorted order (which is the label order).
CLASS_NAMES = (
    "Drink",
    "Picking",
    "Push",
    "Run",
    "Throwing objects",
    "boxing",
    "lifting weights",
    "receiving the phone",
    "stand",
    "walking on stairs",
    "walking with flashlight",
    "waving",
)

# NoctAct-HAR's number of action classes (the synthetic dataset draws the same twelve).
NUM_CLASSES = len(CLASS_NAMES)

# The original project's published milliseconds per training step (batch 64, mixed_float16, on a
# GPU it does not name), read from the notebooks of "RNN with and without CNN"
# (github.com/tot-alin/RNN-with-and-without-CNN). Benchmarks print them beside their own figures.
ORIGINAL_MS_PER_STEP = {
    "simple_rnn": 130,
    "lstm": 94,
    "gru": 209,
    "cnn_simple_rnn": 184,
    "cnn_lstm": 121,
    "cnn_gru": 263,
}
