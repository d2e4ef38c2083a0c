"""support.shifted: the shifted-camera test corpus (test support, not installed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nightact.sources.synthetic import CLASS_NAMES, SynthConfig, synthetic_frames
from support.shifted import ShiftConfig, shift_frame, write_shifted_corpus, zoom_centre


def test_zoom_keeps_the_centre_and_stretches_it():
    ramp = np.tile(np.arange(9, dtype=np.float32)[None, :, None], (5, 1, 1))
    zoomed = zoom_centre(ramp, 2.0)
    # The centred half of a ramp 0..8 is 2..6, stretched over the nine columns.
    np.testing.assert_allclose(zoomed[0, :, 0], np.linspace(2, 6, 9), atol=1e-5)
    np.testing.assert_allclose(zoom_centre(ramp, 1.0), ramp, atol=1e-6)


def test_shift_frame_mirrors_and_darkens():
    generator = np.random.default_rng(0)
    frame = generator.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
    plain = ShiftConfig("unused", gamma=1.0, gain=1.0, zoom=1.0, noise=0.0, mirror=True)
    np.testing.assert_array_equal(shift_frame(frame, plain, generator), frame[:, ::-1])
    darker = ShiftConfig("unused", gamma=1.5, gain=0.6, zoom=1.0, noise=0.0, mirror=False)
    assert shift_frame(frame, darker, generator).astype(float).mean() < frame.mean() * 0.6


def test_shifted_corpus_is_another_camera(tmp_path):
    from nightact.core.videos import count_frames, read_clip

    config = ShiftConfig(
        tmp_path / "shifted", videos_per_class=1, min_seconds=0.8, max_seconds=0.9, size=(36, 64)
    )
    paths = write_shifted_corpus(config)
    assert [path.parent.name for path in paths] == list(CLASS_NAMES)
    assert json.loads((tmp_path / "shifted" / "shift_config.json").read_text())["seed"] == 1000
    plan, frames = synthetic_frames(
        SynthConfig("unused", seed=1000, min_seconds=0.8, max_seconds=0.9, size=(36, 64)), 0, 0
    )
    rendered = list(frames)
    # Half the frame rate: every second rendered frame is kept.
    assert count_frames(paths[0]) == len(rendered[::2])
    clip = read_clip(paths[0], frames=2, height=36, width=64)
    assert clip.fps == pytest.approx(plan.fps / 2, rel=0.01)
    assert clip.frames.mean() < np.stack(rendered).mean()
    # A second run keeps what is there; other settings are refused.
    assert write_shifted_corpus(config) == paths
    with pytest.raises(ValueError, match="other settings"):
        write_shifted_corpus(ShiftConfig(tmp_path / "shifted", videos_per_class=1, gamma=2.0))
