"""Clip-consistent augmentation, checked against an independent NumPy computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nightact.data.augment import (
    AugmentConfig,
    augment_clips,
    draw_parameters,
    identity_parameters,
    mirror_clips,
    mirror_parameters,
    to_uint8,
    transform,
)


def reference_frame(frame: np.ndarray, flip, scale, top, left) -> np.ndarray:
    """Bilinear crop-and-stretch of one (h, w, 3) frame, written out pixel by pixel in NumPy."""
    height, width = frame.shape[:2]
    picture = frame.astype(np.float64)
    result = np.empty_like(picture)
    for y in range(height):
        for x in range(width):
            source_x = (width - 1 - x) if flip else x
            sx = scale * source_x + left * (1 - scale) * (width - 1)
            sy = scale * y + top * (1 - scale) * (height - 1)
            sx, sy = min(max(sx, 0.0), width - 1.0), min(max(sy, 0.0), height - 1.0)
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
            fx, fy = sx - x0, sy - y0
            result[y, x] = (1 - fy) * ((1 - fx) * picture[y0, x0] + fx * picture[y0, x1]) + fy * (
                (1 - fx) * picture[y1, x0] + fx * picture[y1, x1]
            )
    return result


def reference_clip(clip: np.ndarray, parameters: dict, index: int) -> np.ndarray:
    """The whole transform of clip ``index``, frame by frame, with that clip's one draw."""
    p = {name: float(values[index]) for name, values in parameters.items()}
    warped = np.stack(
        [reference_frame(frame, p["flip"], p["scale"], p["top"], p["left"]) for frame in clip]
    )
    x = (warped / 255.0) ** p["gamma"]
    mean = x.mean()
    x = ((x - mean) * p["contrast"] + mean) * p["gain"]
    return np.clip(x, 0.0, 1.0) * 255.0


@pytest.fixture
def clips():
    generator = np.random.default_rng(7)
    # Smooth pictures plus texture: interpolation errors would show, and frames differ.
    base = generator.integers(0, 256, size=(3, 4, 10, 14, 3)).astype(np.uint8)
    return base


def test_every_frame_of_a_clip_gets_the_clips_one_transform(clips):
    config = AugmentConfig(noise=(0.0, 0.0))
    # Rows chosen so one clip is mirrored and one is not.
    rows = np.arange(40)
    parameters = draw_parameters(config, seed=3, epoch=1, rows=rows)
    flipped = int(np.argmax(parameters["flip"]))
    kept = int(np.argmin(parameters["flip"]))
    chosen = {name: values[[flipped, kept, 5]] for name, values in parameters.items()}
    assert chosen["flip"][0] and not chosen["flip"][1]
    assert np.all(chosen["scale"] < 1.0) and np.any(np.abs(chosen["gamma"] - 1.0) > 0.05)

    result = keras.ops.convert_to_numpy(transform(clips, chosen))
    for index in range(len(clips)):
        expected = reference_clip(clips[index], chosen, index)
        for frame in range(clips.shape[1]):
            np.testing.assert_allclose(result[index, frame], expected[frame], atol=2e-3, rtol=0)


def test_parameters_are_one_draw_per_clip_seeded_by_seed_epoch_and_row():
    config = AugmentConfig()
    first = draw_parameters(config, seed=1, epoch=4, rows=[9, 2, 30])
    again = draw_parameters(config, seed=1, epoch=4, rows=[30, 9])
    for name in first:
        # A clip's draw does not depend on the batch it is read in.
        assert again[name][0] == first[name][2] and again[name][1] == first[name][0]
    other_epoch = draw_parameters(config, seed=1, epoch=5, rows=[9, 2, 30])
    assert not np.array_equal(other_epoch["gamma"], first["gamma"])
    many = draw_parameters(config, seed=0, epoch=0, rows=range(400))
    assert 0.35 < many["flip"].mean() < 0.65
    for name in ("scale", "gamma", "contrast", "gain", "noise"):
        low, high = getattr(config, name)
        assert low <= many[name].min() and many[name].max() <= high
    # Darker and brighter both occur.
    assert many["gamma"].min() < 0.8 and many["gamma"].max() > 1.5


def test_augmented_batch_is_reproducible_and_changes_with_the_epoch(clips):
    config = AugmentConfig()
    rows = [4, 11, 12]
    first = augment_clips(clips, rows, config, seed=2, epoch=0)
    assert first.dtype == np.uint8 and first.shape == clips.shape
    np.testing.assert_array_equal(first, augment_clips(clips, rows, config, seed=2, epoch=0))
    assert not np.array_equal(first, augment_clips(clips, rows, config, seed=2, epoch=1))
    assert not np.array_equal(first, augment_clips(clips, rows, config, seed=3, epoch=0))


def test_identity_parameters_change_nothing_and_mirror_is_exact(clips):
    identity = to_uint8(transform(clips, identity_parameters(len(clips)), noise_seed=5))
    np.testing.assert_array_equal(identity, clips)
    mirrored = to_uint8(transform(clips, mirror_parameters(len(clips))))
    np.testing.assert_array_equal(mirrored, clips[:, :, :, ::-1])
    np.testing.assert_array_equal(mirror_clips(clips), clips[:, :, :, ::-1])


def test_noise_has_the_drawn_strength_and_varies_between_frames():
    grey = np.full((2, 3, 32, 32, 3), 128, np.uint8)
    parameters = identity_parameters(2)
    parameters["noise"] = np.array([0.02, 0.05], np.float32)
    noisy = keras.ops.convert_to_numpy(transform(grey, parameters, noise_seed=11)) - 128.0
    for index, sigma in enumerate(parameters["noise"]):
        assert abs(noisy[index].std() / 255.0 - sigma) < 0.1 * sigma
    assert not np.allclose(noisy[0, 0], noisy[0, 1])


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.5, 1.2))
    with pytest.raises(ValueError, match="flip"):
        AugmentConfig(flip=1.5)
    with pytest.raises(ValueError, match="rows"):
        augment_clips(np.zeros((2, 1, 4, 4, 3), np.uint8), [1], AugmentConfig(), 0, 0)
    restored = AugmentConfig.from_dict(json.loads(json.dumps(AugmentConfig().to_dict())))
    assert restored == AugmentConfig()


def test_tensorflow_and_jax_give_the_same_transform(tmp_path, clips):
    backend = keras.config.backend()
    other = {"tensorflow": "jax", "jax": "tensorflow"}.get(backend)
    if other is None:
        pytest.skip(f"compares TensorFlow with JAX; running under {backend}")
    pytest.importorskip(other)
    config = AugmentConfig(noise=(0.0, 0.0))
    parameters = draw_parameters(config, seed=8, epoch=2, rows=[0, 1, 2])
    np.save(tmp_path / "clips.npy", clips)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        from nightact.data.augment import AugmentConfig, draw_parameters, transform
        assert keras.config.backend() == {other!r}
        parameters = draw_parameters(AugmentConfig(noise=(0.0, 0.0)), 8, 2, [0, 1, 2])
        clips = np.load({str(tmp_path / "clips.npy")!r})
        np.save({str(tmp_path / "other.npy")!r},
                keras.ops.convert_to_numpy(transform(clips, parameters)))
        """
    )
    environment = {**os.environ, "KERAS_BACKEND": other, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, timeout=300)
    ours = keras.ops.convert_to_numpy(transform(clips, parameters))
    np.testing.assert_allclose(np.load(tmp_path / "other.npy"), ours, atol=2e-3, rtol=0)


def _split(frames_per_segment: int):
    from nightact.core.store import Split

    generator = np.random.default_rng(1)
    frames = generator.integers(0, 256, size=(10, 3 * frames_per_segment, 8, 12, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    return Split("train", frames, labels, ["a", "b", "c"], [""] * 10, frames_per_segment)


def test_the_reader_augments_training_batches_only():
    from nightact.data.batches import ClipBatches

    split = _split(frames_per_segment=2)
    config = AugmentConfig()
    training = ClipBatches(split, 4, shuffle=True, seed=5, augment=config, drop_remainder=True)
    clips, _ = training[3]
    assert clips.shape == (4, 3, 8, 12, 3) and clips.dtype == np.uint8
    # The same batch again, and from a reader started at that epoch (a resume), is identical.
    np.testing.assert_array_equal(clips, training[3][0])
    resumed = ClipBatches(
        split, 4, shuffle=True, seed=5, augment=config, start_epoch=1, drop_remainder=True
    )
    np.testing.assert_array_equal(clips, resumed[1][0])
    assert not np.array_equal(clips, split.frames[training.rows(3)][:, ::2])

    # Validation, test and predict: candidate 0 of each segment, untouched, augment or not.
    reading = ClipBatches(split, 4, augment=config)
    np.testing.assert_array_equal(reading[0][0], split.frames[:4, ::2])
    plain_training = ClipBatches(split, 4, shuffle=True, seed=5, drop_remainder=True)
    np.testing.assert_array_equal(
        plain_training[3][0], split.frames[plain_training.rows(3)][:, ::2]
    )
    mirrored = ClipBatches(split, 4, candidate=1, mirror=True)
    np.testing.assert_array_equal(mirrored[0][0], split.frames[:4, 1::2, :, ::-1])
    with pytest.raises(ValueError, match="candidate"):
        ClipBatches(split, 4, candidate=2)
