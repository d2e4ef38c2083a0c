"""nightact.scoring.darkness: the darkness and noise sweep."""

from __future__ import annotations

import numpy as np
import pytest

from nightact.scoring.darkness import DARKNESS_LEVELS, NOISE_LEVELS, Degradation, degrade
from nightact.sources.synthetic import SynthConfig, synthetic_frames


@pytest.fixture
def night_clips():
    """Synthetic night frames: dark background, a lit figure, sensor noise."""
    _, frames = synthetic_frames(
        SynthConfig("unused", min_seconds=0.3, max_seconds=0.4, size=(96, 128)), 5, 0
    )
    clip = np.stack(list(frames))[:4]
    return np.stack([clip, clip[:, ::-1]])


def test_level_zero_is_the_clip_and_darkness_only_darkens(night_clips):
    np.testing.assert_array_equal(degrade(night_clips, DARKNESS_LEVELS[0]), night_clips)
    means = [degrade(night_clips, level).astype(float).mean() for level in DARKNESS_LEVELS]
    assert all(later < earlier for earlier, later in zip(means, means[1:], strict=False))
    darkest = degrade(night_clips, DARKNESS_LEVELS[-1])
    # The lit figure ends a level or two above black: near unrecognisable.
    figure = night_clips > 60
    assert np.median(darkest[figure]) <= 2
    expected = np.rint(np.clip((night_clips / 255.0) ** 1.5 * 0.6, 0, 1) * 255)
    assert np.abs(degrade(night_clips, Degradation(9, 1.5, 0.6)) - expected).max() <= 1


def test_noise_is_reproducible_per_clip_and_grows_with_the_level(night_clips):
    level = NOISE_LEVELS[3]
    whole = degrade(night_clips, level, seed=4)
    np.testing.assert_array_equal(whole, degrade(night_clips, level, seed=4))
    # Clip 1 read on its own gets the same noise as in the batch.
    np.testing.assert_array_equal(whole[1:], degrade(night_clips[1:], level, seed=4, first_row=1))
    spreads = [
        np.abs(degrade(night_clips, lvl, seed=4).astype(float) - night_clips).mean()
        for lvl in NOISE_LEVELS
    ]
    assert spreads[0] == 0 and all(b > a for a, b in zip(spreads, spreads[1:], strict=False))
    with pytest.raises(ValueError, match="uint8"):
        degrade(night_clips.astype(np.float32), level)
