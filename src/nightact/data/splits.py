"""The videos of a class-named folder and their stratified split.

``SRC/<class>/**/<video>``: labels are the sorted class folder names (:func:`index_videos`); each
class is shuffled with its own seeded generator and cut by largest-remainder counts
(:func:`assign_splits`), so the split is deterministic from the seed and every split with a
non-zero fraction gets at least one clip of each class that has enough clips.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightact.core.names import SYNTH_CONFIG_FILE
from nightact.core.store import MANIFEST_COLUMNS, SPLIT_NAMES
from nightact.core.videos import VIDEO_EXTENSIONS, visible_files

__all__ = ["Entry", "assign_splits", "index_videos", "split_counts"]


@dataclass
class Entry:
    """One file found under SRC/<class>/."""

    path: str  # relative to SRC, with forward slashes
    class_name: str
    label: int
    file_size: int


def index_videos(
    src: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS
) -> tuple[list[str], list[Entry], list[dict]]:
    """Find SRC/<class>/**/<video>; labels are the sorted class folder names.

    Returns the class names, the video entries sorted by path, and the files and folders that
    were passed over (manifest-shaped rows with status "ignored" and the reason).
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such folder")
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: not a folder")
    extensions = {ext.lower() for ext in extensions}
    ignored: list[dict] = []
    videos_by_class: dict[str, list[Path]] = {}
    for child in sorted(src.iterdir()):
        if child.name.startswith("."):
            continue
        relative = child.relative_to(src).as_posix()
        if child.is_file():
            if child.name != SYNTH_CONFIG_FILE:
                ignored.append(_ignored_row(relative, "file outside any class folder"))
            continue
        files = visible_files(child)
        videos = [path for path in files if path.suffix.lower() in extensions]
        for path in files:
            if path.suffix.lower() not in extensions:
                ignored.append(
                    _ignored_row(
                        path.relative_to(src).as_posix(),
                        f"extension {path.suffix or '(none)'} is not one of --extensions",
                    )
                )
        if videos:
            videos_by_class[child.name] = videos
        else:
            ignored.append(_ignored_row(relative + "/", "class folder without any video"))
    class_names = sorted(videos_by_class)
    entries = [
        Entry(
            path=path.relative_to(src).as_posix(),
            class_name=name,
            label=label,
            file_size=path.stat().st_size,
        )
        for label, name in enumerate(class_names)
        for path in videos_by_class[name]
    ]
    return class_names, entries, ignored


def _ignored_row(path: str, reason: str) -> dict:
    row = dict.fromkeys(MANIFEST_COLUMNS, "")
    row.update(path=path, status="ignored", error=reason)
    return row


def split_counts(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Whole counts per split that sum to ``total``, by largest remainder.

    Every split with a non-zero fraction gets at least one item when there are enough items, so a
    small class still appears in validation and test.
    """
    exact = [total * fraction for fraction in fractions]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, fraction in enumerate(fractions) if fraction > 0]
    if total >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def assign_splits(
    entries: list[Entry], fractions: tuple[float, ...], seed: int
) -> dict[str, list[Entry]]:
    """Stratified split: each class is shuffled with its own seeded generator and cut by counts.

    The result depends only on the seed and each class's own files, so adding a class does not
    reshuffle the others. Rows within a split are ordered by path for readability; training
    shuffles anyway.
    """
    by_class: dict[int, list[Entry]] = {}
    for entry in entries:
        by_class.setdefault(entry.label, []).append(entry)
    splits: dict[str, list[Entry]] = {name: [] for name in SPLIT_NAMES}
    for label, members in sorted(by_class.items()):
        members = sorted(members, key=lambda entry: entry.path)
        order = np.random.default_rng([seed, label]).permutation(len(members))
        start = 0
        for name, count in zip(SPLIT_NAMES, split_counts(len(members), fractions), strict=True):
            splits[name].extend(members[i] for i in order[start : start + count])
            start += count
    for name in SPLIT_NAMES:
        splits[name].sort(key=lambda entry: entry.path)
    return splits
