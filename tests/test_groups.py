"""Group assignment (--group-by) and the stratified split drawn over groups."""

from __future__ import annotations

import numpy as np
import pytest

from nightact.core.store import SPLIT_NAMES
from nightact.data.groups import (
    assign_grouped_splits,
    groups_from_pairs,
    parse_group_by,
    regex_groups,
)
from nightact.data.splits import Entry

UCF_PATTERN = r"v_(.*_g\d+)_c\d+"


def _ucf_entries(seed: int, classes: int = 3, groups_per_class: int = 12) -> list[Entry]:
    """UCF101-style names: v_<Class>_g<group>_c<clip>.avi, 1 to 5 clips per group."""
    rng = np.random.default_rng(seed)
    entries = []
    for label in range(classes):
        name = f"Class{label}"
        for group in range(1, groups_per_class + 1):
            for clip in range(1, int(rng.integers(1, 6)) + 1):
                path = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
                entries.append(Entry(path=path, class_name=name, label=label, file_size=1))
    return entries


def test_regex_takes_the_first_capture_group_and_keeps_misfits_alone(caplog):
    paths = ["Run/v_Run_g01_c01.avi", "Run/v_Run_g01_c02.avi", "Run/v_Run_g02_c01.avi", "x.avi"]
    groups = regex_groups(paths, UCF_PATTERN)
    assert groups == {
        "Run/v_Run_g01_c01.avi": "Run_g01",
        "Run/v_Run_g01_c02.avi": "Run_g01",
        "Run/v_Run_g02_c01.avi": "Run_g02",
        "x.avi": "x.avi",
    }
    assert "1 of 4 paths do not match" in caplog.text


def test_group_by_values_are_checked():
    assert parse_group_by("none") == "none"
    assert parse_group_by("near-duplicates") == "near-duplicates"
    with pytest.raises(ValueError, match="no capture group"):
        parse_group_by(r"v_.*_g\d+")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        parse_group_by("v_(unclosed")


def test_groups_from_pairs_are_connected_components():
    groups = groups_from_pairs(["a", "b", "c", "d", "e"], [("b", "c"), ("d", "c")])
    assert groups == {"a": "a", "b": "b", "c": "b", "d": "b", "e": "e"}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_grouped_split_never_separates_a_group(seed):
    entries = _ucf_entries(seed)
    groups = regex_groups([entry.path for entry in entries], UCF_PATTERN)
    splits = assign_grouped_splits(entries, groups, (0.6, 0.2, 0.2), seed)
    split_of = {entry.path: name for name, members in splits.items() for entry in members}
    assert sorted(split_of) == sorted(entry.path for entry in entries)
    splits_per_group: dict[str, set] = {}
    for path, split in split_of.items():
        splits_per_group.setdefault(groups[path], set()).add(split)
    assert all(len(found) == 1 for found in splits_per_group.values())
    # Every class keeps clips in every split, and train holds roughly its share.
    for label in range(3):
        for name in SPLIT_NAMES:
            assert any(entry.label == label for entry in splits[name])
    share = len(splits["train"]) / len(entries)
    assert 0.45 <= share <= 0.75
    # Seeded: the same seed gives the same split.
    assert assign_grouped_splits(entries, groups, (0.6, 0.2, 0.2), seed) == splits


def test_a_group_spanning_classes_follows_its_majority():
    entries = [
        Entry("A/x1.mp4", "A", 0, 1),
        Entry("A/x2.mp4", "A", 0, 1),
        Entry("B/x3.mp4", "B", 1, 1),
        *[Entry(f"B/y{i}.mp4", "B", 1, 1) for i in range(6)],
        *[Entry(f"A/z{i}.mp4", "A", 0, 1) for i in range(6)],
    ]
    groups = {entry.path: entry.path for entry in entries}
    groups.update({"A/x1.mp4": "x", "A/x2.mp4": "x", "B/x3.mp4": "x"})
    splits = assign_grouped_splits(entries, groups, (0.5, 0.25, 0.25), 0)
    where = {e.path: name for name, members in splits.items() for e in members}
    assert where["A/x1.mp4"] == where["A/x2.mp4"] == where["B/x3.mp4"]


def test_ungrouped_split_keeps_exact_proportions():
    entries = [Entry(f"C/{i:03d}.mp4", "C", 0, 1) for i in range(20)]
    splits = assign_grouped_splits(entries, {}, (0.7, 0.15, 0.15), 31)
    assert [len(splits[name]) for name in SPLIT_NAMES] == [14, 3, 3]
