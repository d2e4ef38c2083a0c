"""The stores on disk: a prepared clip store and its twin, the embedding store.

Everything about their format lives here (file names, split names, manifest columns and statuses,
opening a split); :mod:`nightact.data.prepare` and :mod:`nightact.data.embed` write them, and every
later stage reads them through this module. A clip store, written by ``nightact prepare SRC
STORE``::

    STORE/
      store.json          written last: the config, class names, split sizes, source fingerprint.
                          A store without it is unfinished and is never opened.
      classes.json        {"class_names": [...]}: label i is class_names[i], folders sorted by name.
      manifest.csv        one row per file found under SRC/<class>/ (see MANIFEST_COLUMNS).
      train.npy           uint8 (n, frames, height, width, 3), RGB, one row per clip; also val.npy,
      train_labels.npy    test.npy and their int64 labels. Open with np.load(mmap_mode="r").
      prepare_config.json the PrepareConfig, as JSON.
      leakage.csv         near-duplicate pairs across splits, from the check after the store is
      leakage.json        complete (nightact.data.leakage; skipped with check_leakage=False).
      .partial/           only while it is being written (PARTIAL).

An embedding store (``nightact embed``) has the same files, with ``"kind": "embeddings"`` in its
``store.json`` and float16 ``(n, frames, features)`` arrays; :func:`open_split` reads both kinds.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DTYPE",
    "FORMAT",
    "KIND",
    "MANIFEST_COLUMNS",
    "PARTIAL",
    "SHORT_CLIP_POLICIES",
    "SPLIT_NAMES",
    "STATUSES",
    "STORED_STATUSES",
    "STORE_FILE",
    "MANIFEST_FILE",
    "CLASSES_FILE",
    "Split",
    "is_embedding_store",
    "open_embedding_split",
    "open_split",
    "read_embedding_info",
    "read_manifest",
    "read_store_info",
    "read_store_record",
    "source_store",
]

STORE_FILE = "store.json"  # written last: a store without it is unfinished
MANIFEST_FILE = "manifest.csv"
CLASSES_FILE = "classes.json"

SPLIT_NAMES = ("train", "val", "test")


SHORT_CLIP_POLICIES = ("repeat-last", "skip")


MANIFEST_COLUMNS = (
    "path",  # relative to SRC
    "class",
    "label",
    "split",
    "row",  # row in STORE/<split>.npy; empty when the clip is not stored
    "decoded_frames",  # frames in the stream (what really decodes, for a damaged file)
    "header_frames",  # what the container header claims
    "fps",
    "width",
    "height",
    "rotation",  # degrees counter-clockwise applied to make the picture upright
    "indices",  # frame indices used, space-separated
    "file_size",
    "sha256",
    "status",  # one of STATUSES
    "error",  # why a file was skipped, failed or ignored; a note for short and truncated clips
    "group",  # clips of one group share a split (--group-by); the path itself when ungrouped
)


# Every status a manifest row can have: ok; short (stored, last frame repeated); truncated
# (stored from the frames that decode, fewer than the container's index promises); skipped,
# failed, ignored (not stored). STORED_STATUSES are those whose clip is in its split's array.
STATUSES = ("ok", "short", "truncated", "skipped", "failed", "ignored")
STORED_STATUSES = ("ok", "short", "truncated")


# Where a store is written until it is complete (prepare and embed both).
PARTIAL = ".partial"


@dataclass
class Split:
    """One split of a prepared store, memory-mapped: nothing is read until it is indexed."""

    name: str
    frames: np.ndarray  # read-only memmap, uint8 (n, frames, height, width, 3)
    labels: np.ndarray  # int64 (n,)
    class_names: list[str]
    paths: list[str]  # source file of each row, relative to SRC
    # K candidates per segment: a row holds frames * K pictures (see nightact.data.sampling).
    frames_per_segment: int = 1

    @property
    def segments(self) -> int:
        """N, the frames a model reads per clip."""
        return int(self.frames.shape[1]) // self.frames_per_segment

    def __len__(self) -> int:
        return len(self.labels)


def read_store_record(store: str | os.PathLike) -> dict:
    """The ``store.json`` of a finished store (clip or embedding store), as written."""
    store = Path(store)
    store_file = store / STORE_FILE
    if not store_file.exists():
        if (store / PARTIAL).exists():
            raise ValueError(
                f"{store}: the store is unfinished; run the command that made it again"
            )
        raise FileNotFoundError(f"{store}: not a prepared store (no store.json)")
    return json.loads(store_file.read_text(encoding="utf-8"))


def read_store_info(store: str | os.PathLike) -> dict:
    """Shape, classes and split sizes of a finished store."""
    info = read_store_record(store)
    settings = info["settings"]
    return {
        "frames": settings["frames"],
        # Stores made before K existed hold one frame per segment.
        "frames_per_segment": int(settings.get("frames_per_segment", 1)),
        "height": settings["height"],
        "width": settings["width"],
        "class_names": info["class_names"],
        "splits": info["splits"],
        "config": settings,
    }


def read_manifest(store: str | os.PathLike) -> list[dict]:
    with open(Path(store) / MANIFEST_FILE, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def open_split(store: str | os.PathLike, split: str) -> Split:
    """Open one split of a finished store as read-only memory-mapped arrays."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    store = Path(store)
    info = read_store_info(store)
    frames = np.load(store / f"{split}.npy", mmap_mode="r")
    labels = np.load(store / f"{split}_labels.npy")
    rows = [
        row for row in read_manifest(store) if row["split"] == split and row["row"] not in ("",)
    ]
    rows.sort(key=lambda row: int(row["row"]))
    if len(rows) != len(labels) or len(frames) != len(labels):
        raise ValueError(
            f"{store}: {split}.npy, {split}_labels.npy and manifest.csv disagree "
            f"({len(frames)}, {len(labels)}, {len(rows)} rows)"
        )
    return Split(
        name=split,
        frames=frames,
        labels=labels,
        class_names=list(info["class_names"]),
        paths=[row["path"] for row in rows],
        frames_per_segment=info["frames_per_segment"],
    )


# --- embedding stores ---------------------------------------------------------------------------

KIND = "embeddings"

FORMAT = 1

DTYPE = "float16"  # half the disk and page cache of float32; features lose nothing that matters


def open_embedding_split(embeddings: str | os.PathLike, split: str) -> Split:
    """Open one split of a finished embedding store, memory-mapped, as a :class:`Split`.

    ``frames`` is then the float16 (n, frames, features) array; labels, class names and paths are
    those of the clip store, so the batch reader and the evaluation read either kind of store.
    """
    info = read_embedding_info(embeddings)
    data = open_split(embeddings, split)
    expected = tuple(info["shapes"][split])
    if data.frames.shape != expected or data.frames.dtype != np.dtype(DTYPE):
        raise ValueError(
            f"{embeddings}: {split}.npy holds {data.frames.dtype} {data.frames.shape}, "
            f"store.json says {DTYPE} {expected}"
        )
    return data


def read_embedding_info(embeddings: str | os.PathLike) -> dict:
    """The ``embedding`` record of a finished embedding store, with its shapes and class names.

    Keys: everything in the record (backbone, network, weights, input, features, dtype, axes,
    shapes, source) plus ``class_names`` and ``settings`` (the clip store's).
    """
    path = Path(embeddings)
    info = read_store_record(path)
    if info.get("kind") != KIND:
        raise ValueError(f"{path}: a clip store, not an embedding store (run `nightact embed`)")
    return {
        **info["embedding"],
        "class_names": info["class_names"],
        "settings": info["settings"],
    }


def source_store(embeddings: str | os.PathLike) -> Path:
    """The clip store an embedding store was computed from; it must still be there."""
    store = Path(read_embedding_info(embeddings)["source"]["store"])
    if not (store / STORE_FILE).is_file():
        raise FileNotFoundError(
            f"{store}: the clip store that {embeddings} was embedded from is gone; "
            "pass --data STORE where it is now"
        )
    return store


def is_embedding_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished embedding store (as opposed to a clip store)."""
    store_file = Path(path) / STORE_FILE
    if not store_file.is_file():
        return False
    return json.loads(store_file.read_text(encoding="utf-8")).get("kind") == KIND
