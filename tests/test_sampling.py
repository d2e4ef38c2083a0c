"""Temporal segment sampling: candidates inside their segments, reproducible draws."""

from __future__ import annotations

import numpy as np
import pytest

from nightact.core.videos import sample_indices
from nightact.data.sampling import (
    candidate_indices,
    first_candidates,
    positions,
    random_candidates,
    select_frames,
    view_plan,
)


@pytest.mark.parametrize("segments", [1, 8, 10])
def test_one_candidate_per_segment_is_todays_rule_exactly(segments):
    for total in range(1, 400):
        expected = sample_indices(total, segments)
        assert candidate_indices(total, segments, 1)[:, 0].tolist() == expected


@pytest.mark.parametrize(("segments", "per_segment"), [(8, 3), (10, 2), (10, 4), (3, 5)])
def test_candidates_lie_inside_their_segment_and_the_first_is_the_originals(segments, per_segment):
    for total in range(segments * per_segment, 500):
        candidates = candidate_indices(total, segments, per_segment)
        assert candidates.shape == (segments, per_segment)
        for segment in range(segments):
            start = int(segment * total / segments)
            end = int((segment + 1) * total / segments) if segment < segments - 1 else total
            assert candidates[segment, 0] == start
            assert np.all((start <= candidates[segment]) & (candidates[segment] < end))
            # Spread: distinct and increasing when the segment has room.
            assert np.all(np.diff(candidates[segment]) > 0)


def test_short_clips_repeat_candidates_within_the_clip():
    candidates = candidate_indices(5, 4, 3)
    assert candidates.min() >= 0 and candidates.max() <= 4
    assert candidates[:, 0].tolist() == sample_indices(5, 4)


def test_training_draws_are_reproducible_from_seed_epoch_and_clip():
    first = random_candidates(10, 3, seed=1, epoch=2, clip=17)
    np.testing.assert_array_equal(first, random_candidates(10, 3, seed=1, epoch=2, clip=17))
    draws = np.stack([random_candidates(10, 3, 1, epoch, 17) for epoch in range(20)])
    assert draws.min() == 0 and draws.max() == 2
    assert len({tuple(row) for row in draws}) > 15
    assert not np.array_equal(first, random_candidates(10, 3, seed=1, epoch=2, clip=18))
    np.testing.assert_array_equal(random_candidates(10, 1, 1, 2, 17), np.zeros(10))
    np.testing.assert_array_equal(first_candidates(4), np.zeros(4))


def test_select_frames_reads_the_chosen_candidate_of_each_segment():
    segments, per_segment = 4, 3
    # Every stored frame holds its own position, so the selection can be read back.
    stored = np.broadcast_to(
        np.arange(segments * per_segment, dtype=np.uint8)[None, :, None, None, None],
        (2, segments * per_segment, 2, 2, 3),
    ).copy()
    choices = np.array([[0, 2, 1, 0], [1, 1, 2, 2]])
    picked = select_frames(stored, segments, per_segment, choices)
    assert picked.shape == (2, segments, 2, 2, 3)
    np.testing.assert_array_equal(picked[:, :, 0, 0, 0], positions(choices, per_segment))
    np.testing.assert_array_equal(picked[0, :, 0, 0, 0], [0, 5, 7, 9])
    same = select_frames(stored, segments, per_segment, np.zeros(segments, int))
    np.testing.assert_array_equal(same[1, :, 0, 0, 0], [0, 3, 6, 9])
    with pytest.raises(ValueError, match="segments"):
        select_frames(stored, 5, 3, np.zeros(5, int))
    with pytest.raises(ValueError, match="candidates"):
        positions(np.array([3]), 3)


def test_view_plans_start_with_the_originals_frames_and_never_repeat():
    assert view_plan(1, 3, mirror=True) == [(0, False)]
    assert view_plan(3, 3, mirror=False) == [(0, False), (1, False), (2, False)]
    assert view_plan(2, 1, mirror=True) == [(0, False), (0, True)]
    for per_segment in range(1, 5):
        for mirror in (False, True):
            limit = per_segment * (2 if mirror else 1)
            for views in range(1, limit + 1):
                plan = view_plan(views, per_segment, mirror)
                assert plan[0] == (0, False) and len(set(plan)) == views
                assert all(0 <= candidate < per_segment for candidate, _ in plan)
            with pytest.raises(ValueError, match="distinct view"):
                view_plan(limit + 1, per_segment, mirror)
