"""Groups of clips that must stay in one split, and a stratified split drawn over groups.

Clips cut from one recording (UCF101's "groups") or copies of one recording (NoctAct-HAR's
modified videos) must never be divided between train and test: the test score would then measure
memory. ``--group-by`` names how a clip's group is found:

``none``
    every clip is its own group (a plain stratified split).
``near-duplicates``
    connected components of the pairs found by :mod:`nightact.data.leakage`. That needs pixels
    before the split is drawn, so :func:`near_duplicate_groups` runs a pre-pass: it decodes each
    video's N sampled frames at a small size (``PREPASS_SIZE``) and compares their signatures.
any other value
    a regular expression; a clip's group is the first capture group of its first match in the
    path relative to SRC (UCF101: ``v_(.*_g\\d+)_c\\d+``). A path that does not match is a group
    of its own, with a warning.

:func:`assign_grouped_splits` then draws the split over groups, per class, seeded: each class's
groups are shuffled with their own generator, every split with a non-zero fraction first gets one
group of each class that has enough groups, and the rest go one by one to the split furthest below
its share of the class's clips.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nightact.core.store import SPLIT_NAMES
from nightact.core.videos import VideoError, read_clip
from nightact.core.workers import decoder_threads, map_unordered, worker_count
from nightact.data.leakage import (
    LeakageConfig,
    clip_signature,
    connected_components,
    find_near_duplicates,
)
from nightact.data.splits import Entry, split_counts

__all__ = [
    "GROUP_BY_NAMES",
    "PREPASS_SIZE",
    "PREPASS_THRESHOLD",
    "assign_grouped_splits",
    "assign_groups",
    "groups_from_pairs",
    "near_duplicate_groups",
    "parse_group_by",
    "regex_groups",
]

log = logging.getLogger(__name__)

GROUP_BY_NAMES = ("none", "near-duplicates")
PREPASS_SIZE = (60, 80)  # (height, width) of the frames the near-duplicate pre-pass decodes
# Below the check's threshold: a missed pair leaks, a false one only merges two groups.
PREPASS_THRESHOLD = 0.8


def parse_group_by(value: str) -> str:
    """Check a ``--group-by`` value: a name of ``GROUP_BY_NAMES`` or a regex with a group."""
    if value in GROUP_BY_NAMES:
        return value
    try:
        pattern = re.compile(value)
    except re.error as error:
        raise ValueError(
            f"--group-by {value!r} is not a valid regular expression: {error}"
        ) from None
    if pattern.groups < 1:
        raise ValueError(
            f"--group-by {value!r} has no capture group; put the part that names the group in "
            r"parentheses, e.g. 'v_(.*_g\d+)_c\d+'"
        )
    return value


def regex_groups(paths: Sequence[str], pattern: str) -> dict[str, str]:
    """Group of each path: the first capture group of ``pattern``'s first match in it."""
    compiled = re.compile(parse_group_by(pattern))
    groups, unmatched = {}, []
    for path in paths:
        match = compiled.search(path)
        if match is None or match.group(1) is None:
            unmatched.append(path)
            groups[path] = path
        else:
            groups[path] = match.group(1)
    if unmatched:
        log.warning(
            "%d of %d paths do not match --group-by %r and form groups of their own (first: %s)",
            len(unmatched),
            len(paths),
            pattern,
            unmatched[0],
        )
    return groups


def groups_from_pairs(paths: Sequence[str], pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Group of each path: the smallest path of its connected component under ``pairs``."""
    ordered = sorted(paths)
    index = {path: position for position, path in enumerate(ordered)}
    # Component ids are the smallest member's index, and the paths are sorted: its path.
    component = connected_components(len(ordered), [(index[a], index[b]) for a, b in pairs])
    return {path: ordered[component[index[path]]] for path in paths}


def _prepass_one(job: tuple) -> tuple[str, np.ndarray | None, str]:
    """Worker: one video's N frames at the pre-pass size, or the reason it failed."""
    source, path, frames, threads = job
    try:
        clip = read_clip(
            Path(source) / path,
            frames=frames,
            height=PREPASS_SIZE[0],
            width=PREPASS_SIZE[1],
            threads=threads,
        )
        return path, clip.frames, ""
    except VideoError as error:
        return path, None, error.reason
    except Exception as error:  # noqa: BLE001 - a bad file is reported, not fatal.
        return path, None, f"unexpected {type(error).__name__}: {error}"


def near_duplicate_groups(
    src: str | os.PathLike,
    entries: Sequence[Entry],
    frames: int = 10,
    workers: int | None = None,
    config: LeakageConfig | None = None,
) -> tuple[dict[str, str], list]:
    """Group each entry by near-duplicates: decode, sign and compare every video (a pre-pass).

    Returns the groups and the pairs found (:class:`nightact.data.leakage.Pair`, with empty splits).
    Videos that fail to decode here are their own group (prepare reports them).
    """
    config = config or LeakageConfig(store=str(src), threshold=PREPASS_THRESHOLD)
    workers = worker_count(workers, len(entries))
    threads = decoder_threads(workers)
    jobs = [(str(src), entry.path, frames, threads) for entry in entries]
    results = list(
        tqdm(
            map_unordered(_prepass_one, jobs, workers),
            total=len(jobs),
            desc="near-duplicates",
            unit="video",
        )
    )
    # Finishing order varies with the workers; the comparison should not.
    results.sort(key=lambda result: result[0])
    clips, signatures = [], []
    for path, pixels, error in results:
        if pixels is None:
            log.info("near-duplicate pre-pass skipped %s: %s", path, error)
            continue
        clips.append((path, ""))
        signatures.append(clip_signature(pixels, config.grid))
    report = find_near_duplicates(clips, signatures, config)
    paths = [entry.path for entry in entries]
    groups = groups_from_pairs(paths, [(pair.path_a, pair.path_b) for pair in report.pairs])
    return groups, report.pairs


def assign_groups(
    entries: Sequence[Entry],
    group_by: str,
    src: str | os.PathLike | None = None,
    frames: int = 10,
    workers: int | None = None,
) -> dict[str, str]:
    """Group of every entry's path under ``group_by`` (none, near-duplicates or a regex)."""
    group_by = parse_group_by(group_by)
    paths = [entry.path for entry in entries]
    if group_by == "none":
        return {path: path for path in paths}
    if group_by == "near-duplicates":
        if src is None:
            raise ValueError("--group-by near-duplicates needs the source folder")
        return near_duplicate_groups(src, entries, frames, workers)[0]
    return regex_groups(paths, group_by)


def assign_grouped_splits(
    entries: Sequence[Entry],
    groups: dict[str, str],
    fractions: tuple[float, ...],
    seed: int,
) -> dict[str, list[Entry]]:
    """Stratified split over groups: a group's clips always share one split.

    A group belongs to the class most of its clips have (the lowest label on a tie), so a group
    that spans classes stays whole. Deterministic from ``seed`` and each class's own groups.
    """
    members: dict[str, list[Entry]] = {}
    for entry in entries:
        members.setdefault(groups.get(entry.path, entry.path), []).append(entry)
    by_class: dict[int, list[str]] = {}
    for group, group_entries in members.items():
        labels = [entry.label for entry in group_entries]
        majority = min(set(labels), key=lambda label: (-labels.count(label), label))
        by_class.setdefault(majority, []).append(group)
    wanted = [i for i, fraction in enumerate(fractions) if fraction > 0]
    splits: dict[str, list[Entry]] = {name: [] for name in SPLIT_NAMES}
    for label, class_groups in sorted(by_class.items()):
        class_groups = sorted(class_groups)
        order = np.random.default_rng([seed, label]).permutation(len(class_groups))
        shuffled = [class_groups[i] for i in order]
        sizes = [len(members[group]) for group in shuffled]
        target = split_counts(sum(sizes), fractions)
        filled = [0] * len(fractions)
        chosen: list[int] = []
        start = 0
        if len(shuffled) >= len(wanted):
            # One group for each split first, smallest splits first, so none is left empty.
            for split in sorted(wanted, key=lambda i: (fractions[i], i)):
                chosen.append(split)
                filled[split] += sizes[start]
                start += 1
        for size in sizes[start:]:
            # The split furthest below its target, relative to that target.
            split = max(wanted, key=lambda i: ((target[i] - filled[i]) / max(target[i], 1), -i))
            chosen.append(split)
            filled[split] += size
        for group, split in zip(shuffled, chosen, strict=True):
            splits[SPLIT_NAMES[split]].extend(members[group])
    for name in SPLIT_NAMES:
        splits[name].sort(key=lambda entry: entry.path)
    return splits
