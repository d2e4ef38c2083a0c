"""The darkness and noise sweep: degradations of stored clips, level by level.

A night-camera user asks first how much darker or noisier their camera may be than the training
footage; :mod:`nightact.scoring.robustness` answers it with these levels. (The other question,
another camera altogether, is a shifted test corpus prepared as a store of its own and scored by
``nightact evaluate RUN --data``.)

The sweep (:data:`DARKNESS_LEVELS`, :data:`NOISE_LEVELS`, :func:`degrade`) works on stored uint8
clips in NumPy, deterministically from a seed: pixels in 0-1 go through ``x ** gamma * gain``,
then Gaussian noise of standard deviation ``noise`` is added, and the result is rounded back to
uint8. Level 0 is the clip itself; the last level of each sweep is near unrecognisable on the
synthetic night clips: at gamma 3.2 and gain 0.12 a figure lit at 90 of 255 over a background
of 10 ends up at 1 above a background of 0, and noise of 0.3 (77 of 255) buries it.

NumPy only: no deep-learning backend is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DARKNESS_LEVELS",
    "NOISE_LEVELS",
    "SWEEPS",
    "Degradation",
    "degrade",
]


@dataclass(frozen=True)
class Degradation:
    """One level of a sweep: ``round((x ** gamma) * gain + N(0, noise))`` on pixels in 0-1."""

    level: int
    gamma: float = 1.0
    gain: float = 1.0
    noise: float = 0.0


# Darker and darker, each step about halving the mid-tones; no added noise.
DARKNESS_LEVELS = (
    Degradation(0),
    Degradation(1, gamma=1.2, gain=0.8),
    Degradation(2, gamma=1.5, gain=0.6),
    Degradation(3, gamma=1.8, gain=0.45),
    Degradation(4, gamma=2.2, gain=0.3),
    Degradation(5, gamma=2.7, gain=0.2),
    Degradation(6, gamma=3.2, gain=0.12),
)
# Noisier and noisier at the clips' own brightness; 0.3 is 77 of 255.
NOISE_LEVELS = (
    Degradation(0),
    Degradation(1, noise=0.02),
    Degradation(2, noise=0.05),
    Degradation(3, noise=0.1),
    Degradation(4, noise=0.15),
    Degradation(5, noise=0.2),
    Degradation(6, noise=0.3),
)
SWEEPS = {"darkness": DARKNESS_LEVELS, "noise": NOISE_LEVELS}


def degrade(clips: np.ndarray, degradation: Degradation, seed: int = 0, first_row: int = 0):
    """A degraded copy of uint8 clips (batch, frames, h, w, 3).

    The noise of clip ``first_row + i`` comes from a generator seeded by ``(seed, level, row)``,
    so a clip gets the same noise whatever batch it is read in.
    """
    clips = np.asarray(clips)
    if clips.dtype != np.uint8:
        raise ValueError(f"clips must be uint8, got {clips.dtype}")
    if degradation == Degradation(degradation.level):
        return clips.copy()
    pixels = clips.astype(np.float32) / 255.0
    pixels = np.power(pixels, np.float32(degradation.gamma)) * np.float32(degradation.gain)
    if degradation.noise > 0:
        for offset in range(len(pixels)):
            generator = np.random.default_rng([seed, degradation.level, first_row + offset])
            noise = generator.standard_normal(pixels.shape[1:], dtype=np.float32)
            pixels[offset] += np.float32(degradation.noise) * noise
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
