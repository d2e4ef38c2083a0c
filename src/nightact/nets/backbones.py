"""Pretrained image networks that turn each frame into one feature vector.

A backbone here is a ``keras.applications`` network without its classifier (``include_top=False``)
and with global average pooling, wrapped so that it reads what the clip store holds::

    frame  uint8 (batch, height, width, 3), RGB 0-255
      -> "to_float" Rescaling(1.0): only a cast to float32; the networks below scale themselves
      -> the keras.applications network, its own preprocessing first (see BACKBONES)
      -> features float32 (batch, features)

Weights are one of:

- ``"imagenet"``: Keras downloads them once into ``~/.keras/models`` (needs internet then). When
  the download fails, :class:`WeightsUnavailableError` says so in one line and names the
  alternatives; there is never a silent fallback to random weights.
- ``"none"``: random weights. Their features are almost constant on night clips (a GRU on them
  stays at chance), so they are good for timing and for checking the plumbing, not for learning.
- a path to a weights file of the same ``keras.applications`` network: a ``.weights.h5`` written
  by ``network.save_weights`` (for example on a machine with internet), or the legacy ``.h5``
  file that Keras itself downloads for ``"imagenet"``, copied by hand.

Only the list of names and the weights record are needed by the CLI; Keras is imported when a
network is built, so ``nightact embed --help`` starts at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from nightact.core.names import MODEL_LABELS

__all__ = [
    "BACKBONE_NAMES",
    "BACKBONES",
    "MIN_SIZE",
    "WEIGHT_NAMES",
    "backbone_spec",
    "BackboneSpec",
    "build_backbone",
    "build_network",
    "model_label",
    "network_of",
    "same_weights",
    "weights_record",
    "WeightsUnavailableError",
]

log = logging.getLogger(__name__)

# keras.applications networks refuse frames smaller than this on either side.
MIN_SIZE = 32
WEIGHT_NAMES = ("imagenet", "none")


class WeightsUnavailableError(RuntimeError):
    """The requested backbone weights could not be obtained (no internet, no such file)."""


@dataclass(frozen=True)
class BackboneSpec:
    """One supported network: how to build it and what its input and output are."""

    name: str  # the CLI's name, e.g. "mobilenet_v3_small"
    application: str  # the keras.applications class, e.g. "MobileNetV3Small"
    features: int  # width of the pooled feature vector
    # How the network's built-in preprocessing scales the 0-255 pixels it is given; the wrapper
    # therefore only casts. Written down so a reader need not open Keras to know.
    preprocessing: str

    @property
    def display_name(self) -> str:
        return self.application


BACKBONES = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            576,
            "Rescaling(1/127.5, offset=-1): 0-255 to [-1, 1]",
        ),
        BackboneSpec(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            960,
            "Rescaling(1/127.5, offset=-1): 0-255 to [-1, 1]",
        ),
        BackboneSpec(
            "efficientnet_v2_b0",
            "EfficientNetV2B0",
            1280,
            "Rescaling(1/255) then Normalization by the ImageNet mean and variance",
        ),
    )
}
BACKBONE_NAMES = tuple(BACKBONES)


def model_label(model: str, backbone: str | None = None) -> str:
    """How reports spell a model: "GRU", "CNN + GRU", or "MobileNetV3Small + GRU" on a backbone."""
    label = MODEL_LABELS.get(model, model)
    if not backbone:
        return label
    spec = BACKBONES.get(backbone)
    return f"{spec.display_name if spec else backbone} + {label}"


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone by its CLI name; a clear error naming the choices otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    return BACKBONES[name]


def weights_record(weights: str | os.PathLike) -> dict:
    """What identifies a choice of weights, for the embedding store and the run.

    ``{"name": "imagenet"}``, ``{"name": "none"}``, or for a file ``{"name": "file", "path":
    absolute path, "sha256": hex digest}``. Two records are the same weights when they are equal
    without the path (a file moved elsewhere holds the same weights).
    """
    if str(weights) in WEIGHT_NAMES:
        return {"name": str(weights)}
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such weights file; --weights takes imagenet, none, or a path to a "
            ".weights.h5 file"
        )
    if not path.name.endswith(".h5"):
        raise ValueError(f"{path}: expected a Keras weights file ending in .weights.h5 or .h5")
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"name": "file", "path": str(path.resolve()), "sha256": digest}


def same_weights(first: dict, second: dict) -> bool:
    """Whether two weights records name the same weights (a file's path does not matter)."""

    def identity(record: dict) -> dict:
        return {key: value for key, value in record.items() if key != "path"}

    return identity(first) == identity(second)


def build_network(name: str, height: int, width: int, weights: str | os.PathLike = "none"):
    """The bare ``keras.applications`` network, float input 0-255, pooled features out.

    Raises:
        ValueError: unknown name, or frames smaller than 32x32.
        FileNotFoundError: ``weights`` is neither a known name nor an existing file.
        WeightsUnavailableError: the ImageNet weights could not be downloaded, or the file does
            not hold this network's weights.
    """
    spec = backbone_spec(name)
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(
            f"{spec.display_name} needs frames of at least {MIN_SIZE}x{MIN_SIZE}, "
            f"got {height}x{width}; prepare the store with a larger --size"
        )
    record = weights_record(weights)
    import warnings

    import keras

    constructor = getattr(keras.applications, spec.application)
    arguments = dict(
        input_shape=(height, width, 3),
        include_top=False,
        pooling="avg",
        include_preprocessing=True,
        weights=None,
    )
    # The ImageNet weights fit any frame size (the network is convolutional up to the pooling);
    # Keras warns that they were trained at 224x224, which is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input_shape.*")
        if record["name"] == "none":
            return constructor(**arguments)
        if record["name"] == "imagenet":
            try:
                return constructor(**{**arguments, "weights": "imagenet"})
            except Exception as error:  # noqa: BLE001 - a download fails in many ways.
                raise WeightsUnavailableError(
                    f"could not get the ImageNet weights of {spec.display_name} "
                    f"({_first_line(error)}); without internet use --weights none (random, for "
                    "tests) or --weights PATH to a local .weights.h5 of this network"
                ) from error
        network = constructor(**arguments)
    try:
        network.load_weights(record["path"])
    except Exception as error:  # noqa: BLE001 - h5py and Keras raise many kinds here.
        raise WeightsUnavailableError(
            f"{record['path']}: does not hold {spec.display_name} weights ({_first_line(error)})"
        ) from error
    return network


def build_backbone(name: str, height: int, width: int, weights: str | os.PathLike = "none"):
    """The frame encoder: uint8 frames (batch, height, width, 3) -> float32 (batch, features).

    The network is frozen (``trainable=False``); its batch normalisation then always uses the
    statistics it was trained with, also inside a model that is being trained.
    """
    import keras
    from keras import layers

    network = build_network(name, height, width, weights)
    network.trainable = False
    frame = keras.Input(shape=(height, width, 3), dtype="uint8", name="frame")
    # Rescaling casts the uint8 pixels to float; scale 1 because the network scales them itself.
    pixels = layers.Rescaling(1.0, name="to_float")(frame)
    features = network(pixels)
    return keras.Model(frame, features, name=f"{name}_encoder")


def network_of(backbone):
    """The ``keras.applications`` network inside a model made by :func:`build_backbone`."""
    for layer in backbone.layers:
        if hasattr(layer, "layers"):
            return layer
    raise ValueError(f"{backbone.name}: no keras.applications network inside")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
