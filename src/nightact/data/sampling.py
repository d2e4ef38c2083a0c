"""Temporal segment sampling: which stored frame of each segment a clip shows the model.

A clip is cut into N equal segments (N = the store's ``frames``). With ``K`` candidates per
segment, a store keeps N*K frames per clip, grouped by segment::

    stored clip, N=4, K=3 (frame positions 0..11 in the row)

    segment     0           1           2           3
    candidate   0  1  2     0  1  2     0  1  2     0  1  2
    position    0  1  2     3  4  5     6  7  8     9 10 11

Candidate k of segment i is source frame ``int((i*K + k) * total / (N*K))``: the N*K evenly spaced
indices of the original's rule, grouped by K. Candidate 0 of segment i is therefore
``int(i * total / N)``, the original's own frame, and the others are spread evenly inside the
segment; with K=1 the indices are exactly today's.

Training shows one random candidate per segment, drawn again for every clip in every epoch from
``(seed, epoch, clip)`` (TSN's segment sampling), so a model sees more of each clip's motion;
validation, test and predict show candidate 0, the original's frames. Multi-view testing
(:func:`view_plan`) averages over several candidates, and mirrored copies when flips were
trained.

NumPy only: the data commands use it without a deep-learning backend.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "candidate_indices",
    "first_candidates",
    "positions",
    "random_candidates",
    "select_frames",
    "view_plan",
]


def candidate_indices(total: int, segments: int, per_segment: int = 1) -> np.ndarray:
    """Source frame indices of every candidate, shape (segments, per_segment).

    ``[i, k] = int((i*K + k) * total / (N*K))``, the very last one clamped to ``total - 1`` as
    the original clamps its last index; ``[i, 0] == int(i * total / N)``. With fewer than N*K
    frames some candidates repeat (a short clip's candidates may all be one frame).
    """
    if total <= 0:
        raise ValueError(f"a clip needs at least one frame, got total={total}")
    if segments <= 0 or per_segment <= 0:
        raise ValueError(
            f"segments and per_segment must be positive, got {segments} and {per_segment}"
        )
    count = segments * per_segment
    # The same float expression as videos.sample_indices, so K=1 equals it bit for bit.
    flat = [int(j * total / count) for j in range(count)]
    flat[-1] = min(flat[-1], total - 1)
    return np.asarray(flat, dtype=np.int64).reshape(segments, per_segment)


def random_candidates(
    segments: int, per_segment: int, seed: int, epoch: int, clip: int
) -> np.ndarray:
    """One random candidate per segment for training, shape (segments,), values in [0, K).

    Drawn from its own generator seeded by ``(seed, epoch, clip)``: the same clip in the same
    epoch always gets the same frames, whatever the batch it falls in or the thread reading it,
    so a resumed run reads exactly what an uninterrupted one would have.
    """
    _check_positive(segments, per_segment)
    if per_segment == 1:
        return np.zeros(segments, dtype=np.int64)
    generator = np.random.default_rng([seed, epoch, clip, 0x5E6])
    return generator.integers(0, per_segment, size=segments, dtype=np.int64)


def first_candidates(segments: int) -> np.ndarray:
    """Candidate 0 of every segment: the original's frames (validation, test, predict)."""
    return np.zeros(segments, dtype=np.int64)


def positions(choices: np.ndarray, per_segment: int) -> np.ndarray:
    """Frame positions in a stored (N*K)-frame row of the chosen candidates, one per segment."""
    choices = np.asarray(choices, dtype=np.int64)
    if choices.size and (choices.min() < 0 or choices.max() >= per_segment):
        raise ValueError(f"candidates must lie in [0, {per_segment}), got {choices.tolist()}")
    return np.arange(choices.shape[-1], dtype=np.int64) * per_segment + choices


def select_frames(
    clips: np.ndarray, segments: int, per_segment: int, choices: np.ndarray
) -> np.ndarray:
    """Pick one candidate per segment from stored rows.

    Args:
        clips: (batch, N*K, height, width, 3) stored rows.
        segments, per_segment: N and K.
        choices: (segments,) one choice for all clips, or (batch, segments) one per clip.

    Returns:
        (batch, N, height, width, 3), a new array.
    """
    if clips.shape[1] != segments * per_segment:
        raise ValueError(
            f"clips hold {clips.shape[1]} frames, not {segments} segments x {per_segment}"
        )
    if per_segment == 1:
        return np.ascontiguousarray(clips)
    picked = positions(choices, per_segment)
    if picked.ndim == 1:
        return np.ascontiguousarray(clips[:, picked])
    return np.stack([clip[row] for clip, row in zip(clips, picked, strict=True)])


def view_plan(views: int, per_segment: int, mirror: bool) -> list[tuple[int, bool]]:
    """The (candidate, mirrored) pair of each test view; view 0 is (0, False), the original's.

    With V <= K the candidates are spread over the K, ``v*K // V``, and when flips were trained
    every odd view is mirrored. Beyond K (only with mirroring) the K candidates come again with
    the other orientation, so V=2 with K=1 is the clip and its mirror image. There are K distinct
    views, 2K with mirroring; more would repeat one and are refused.
    """
    _check_positive(views, per_segment)
    distinct = per_segment * (2 if mirror else 1)
    if views > distinct:
        raise ValueError(
            f"{views} views asked, but a store with {per_segment} candidate(s) per segment has "
            f"only {distinct} distinct view(s)" + ("" if mirror else " (flips were not trained)")
        )
    if views <= per_segment:
        return [(view * per_segment // views, mirror and view % 2 == 1) for view in range(views)]
    first = [(candidate, candidate % 2 == 1) for candidate in range(per_segment)]
    return first + [(candidate, candidate % 2 == 0) for candidate in range(views - per_segment)]


def _check_positive(count: int, per_segment: int) -> None:
    if count <= 0 or per_segment <= 0:
        raise ValueError(f"counts must be positive, got {count} and {per_segment}")
