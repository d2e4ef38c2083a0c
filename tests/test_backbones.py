"""Backbones: uint8 frames in, pooled features out, weights by name or from a file."""

from __future__ import annotations

import hashlib

import h5py
import keras
import numpy as np
import pytest

from nightact.nets.backbones import (
    BACKBONE_NAMES,
    BACKBONES,
    WeightsUnavailableError,
    build_backbone,
    build_network,
    network_of,
    weights_record,
)

# What each network's own first layers must do to 0-255 pixels (scale, offset; then the
# ImageNet normalisation for EfficientNetV2).
EXPECTED_SCALING = {
    "mobilenet_v3_small": (1 / 127.5, -1.0),
    "mobilenet_v3_large": (1 / 127.5, -1.0),
    "efficientnet_v2_b0": (1 / 255, 0.0),
}


# Building the larger networks takes several seconds each on a small CPU.
@pytest.mark.parametrize(
    "name",
    [
        name if name == "mobilenet_v3_small" else pytest.param(name, marks=pytest.mark.slow)
        for name in BACKBONE_NAMES
    ],
)
def test_backbone_reads_uint8_frames_and_scales_them_itself(name):
    backbone = build_backbone(name, 32, 48, weights="none")
    assert backbone.input.dtype == "uint8" and tuple(backbone.input.shape) == (None, 32, 48, 3)
    assert tuple(backbone.output.shape) == (None, BACKBONES[name].features)
    assert not backbone.trainable_weights

    network = network_of(backbone)
    rescaling = network.layers[1]
    assert isinstance(rescaling, keras.layers.Rescaling)
    scale, offset = EXPECTED_SCALING[name]
    assert rescaling.scale == pytest.approx(scale) and rescaling.offset == pytest.approx(offset)
    if name.startswith("efficientnet"):
        normalization = network.layers[2]
        assert isinstance(normalization, keras.layers.Normalization)
        assert np.allclose(np.ravel(normalization.mean), [0.485, 0.456, 0.406])

    # The wrapper only casts: it gives what the network gives on the same pixels as floats.
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    features = np.asarray(backbone.predict_on_batch(frames))
    direct = np.asarray(network.predict_on_batch(frames.astype("float32")))
    assert features.shape == (3, BACKBONES[name].features) and features.dtype == np.float32
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)


def test_weights_file_is_loaded_exactly(tmp_path):
    # Weights nobody else has: every variable of a fresh network set to seeded random values.
    network = build_network("mobilenet_v3_small", 32, 32, weights="none")
    rng = np.random.default_rng(5)
    values = [rng.normal(size=variable.shape).astype("float32") for variable in network.weights]
    for variable, value in zip(network.weights, values, strict=True):
        variable.assign(value)
    path = tmp_path / "mine.weights.h5"
    network.save_weights(path)
    with h5py.File(path, "r") as handle:
        stored = []
        handle.visititems(
            lambda _, item: stored.append(item) if isinstance(item, h5py.Dataset) else None
        )
        assert len(stored) == len(values)

    loaded = network_of(build_backbone("mobilenet_v3_small", 32, 32, weights=str(path)))
    assert len(loaded.weights) == len(values)
    for variable, value in zip(loaded.weights, values, strict=True):
        assert np.array_equal(np.asarray(variable), value), variable.path

    record = weights_record(path)
    assert record["name"] == "file" and record["path"] == str(path.resolve())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # builds MobileNetV3Large too
def test_a_file_of_another_network_is_refused_in_one_line(tmp_path):
    path = tmp_path / "large.weights.h5"
    build_network("mobilenet_v3_large", 32, 32).save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="does not hold MobileNetV3Small weights"):
        build_backbone("mobilenet_v3_small", 32, 32, weights=str(path))


def test_imagenet_without_internet_names_the_alternatives(tmp_path, monkeypatch):
    # A proxy nobody listens on makes the real download fail at once, as on a machine offline;
    # an empty cache folder makes sure Keras has no copy from earlier.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path / "keras"))
    with pytest.raises(WeightsUnavailableError) as raised:
        build_backbone("mobilenet_v3_small", 32, 32, weights="imagenet")
    message = str(raised.value)
    assert "\n" not in message
    assert "ImageNet weights of MobileNetV3Small" in message
    assert "--weights none" in message and ".weights.h5" in message


def test_bad_requests_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'resnet'; choose one of"):
        build_backbone("resnet", 64, 64)
    with pytest.raises(ValueError, match="at least 32x32, got 24x32"):
        build_backbone("mobilenet_v3_small", 24, 32)
    with pytest.raises(FileNotFoundError, match="missing.weights.h5: no such weights file"):
        weights_record(tmp_path / "missing.weights.h5")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: expected a Keras weights file"):
        weights_record(tmp_path / "notes.txt")
