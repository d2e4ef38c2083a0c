"""Run a frozen backbone over every frame of a clip store once, and keep the features on disk.

A frozen backbone gives the same features every epoch, so computing them once turns each epoch of
a recurrent head into seconds. ``embed(EmbedConfig(store=STORE, backbone=..., out=EMB))`` writes
an embedding store that follows the clip store's conventions::

    EMB/
      store.json          written last, its presence marks the store complete: "kind":
                          "embeddings", the clip store's settings, fingerprint, class names and
                          split sizes, and the "embedding" record: backbone, network, weights
                          ({"name": "imagenet" | "none"} or {"name": "file", "path", "sha256"}),
                          input [height, width, 3], features, dtype, axes.
      train.npy           float16 (n, frames, features): row i embeds row i of STORE/train.npy.
      train_labels.npy    int64 (n,), copied from the clip store; also val.* and test.*
      classes.json        {"class_names": [...]}, copied
      manifest.csv        copied, so a row still names its source video
      embed_config.json   the EmbedConfig, as JSON

Every axis of a clip store's array but the last three (height, width, channels) is kept: a store
that holds several candidate frames per segment, ``(n, segments, candidates, h, w, 3)``, becomes
``(n, segments, candidates, features)``, and ``axes`` in the record names them.

While embedding, the arrays live in ``EMB/.partial/`` beside ``plan.json`` (the record being
written) and ``journal.jsonl``: one line per chunk of clips, appended only after the chunk's rows
were flushed to disk. An interrupted run resumes from the journal and recomputes any chunk without
a line. A folder holding another backbone's, another weights' or another store's embeddings is
refused unless ``overwrite`` is set; a finished store with the same record is left alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from nightact.core import files
from nightact.core.store import (
    CLASSES_FILE,
    DTYPE,
    FORMAT,
    KIND,
    MANIFEST_FILE,
    PARTIAL,
    SPLIT_NAMES,
    STORE_FILE,
    Split,
    is_embedding_store,
    open_split,
    read_store_record,
)
from nightact.nets import gpu
from nightact.nets.backbones import backbone_spec, build_backbone, same_weights, weights_record

__all__ = [
    "embed",
    "EmbedConfig",
    "EmbedSummary",
]

log = logging.getLogger(__name__)


_PLAN = "plan.json"
_JOURNAL = "journal.jsonl"
# Names of the leading axes of a clip store's array, by its number of dimensions.
_AXES = {
    5: ["clip", "frame", "feature"],
    6: ["clip", "segment", "candidate", "feature"],
}


@dataclass
class EmbedConfig:
    """Everything that decides an embed run; saved as EMB/embed_config.json."""

    store: str  # a prepared clip store (nightact prepare)
    backbone: str  # one of nightact.nets.backbones.BACKBONE_NAMES
    out: str  # the embedding store to write
    weights: str = "imagenet"  # "imagenet", "none" (random) or a path to a .weights.h5
    batch_size: int = 64  # frames per call of the backbone
    chunk_clips: int = 32  # clips made durable and journaled together

    def __post_init__(self) -> None:
        self.store = str(self.store)
        self.out = str(self.out)
        self.weights = str(self.weights)
        backbone_spec(self.backbone)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.chunk_clips < 1:
            raise ValueError(f"chunk_clips must be at least 1, got {self.chunk_clips}")


@dataclass
class EmbedSummary:
    """What an embed run did; ``table()`` renders it for people."""

    out: str
    backbone: str
    weights: dict
    splits: dict[str, tuple[int, ...]]  # split -> shape of its embedding array
    embedded_now: int = 0  # clips run through the backbone by this call
    seconds: float = 0.0
    already_done: bool = False

    def table(self) -> str:
        lines = [f"{'split':<6}  {'clips':>6}  shape"]
        for name, shape in self.splits.items():
            lines.append(f"{name:<6}  {shape[0]:>6}  {tuple(shape)}")
        weights = self.weights.get("path", self.weights["name"])
        lines.append("")
        if self.already_done:
            lines.append(f"{self.out} already holds these embeddings; nothing to do")
        else:
            rate = self.embedded_now / self.seconds if self.seconds > 0 else 0.0
            lines.append(
                f"embedded {self.embedded_now} clips with {self.backbone} ({weights}) into "
                f"{self.out} in {self.seconds:.1f} s ({rate:.1f} clips/s)"
            )
        return "\n".join(lines)


def embed(
    config: EmbedConfig,
    overwrite: bool = False,
    on_chunk: Callable[[str, int, int], None] | None = None,
) -> EmbedSummary:
    """Embed (or resume, or confirm) every split of ``config.store`` into ``config.out``.

    Args:
        config: the run's settings.
        overwrite: replace whatever embeddings ``config.out`` holds.
        on_chunk: called as ``on_chunk(split, start, stop)`` after rows ``start:stop`` of a split
            are durable and journaled (progress displays; tests interrupt a run with it).

    Raises:
        ValueError: ``config.out`` holds other embeddings or a clip store, or is the clip store.
        FileNotFoundError, WeightsUnavailableError: the store or the weights cannot be found.
    """
    started = time.perf_counter()
    store, out = Path(config.store), Path(config.out)
    if out.resolve() == store.resolve():
        raise ValueError(f"{out}: write the embeddings to another folder than the clip store")
    source_info = read_store_record(store)
    if source_info.get("kind") == KIND:
        raise ValueError(f"{store}: already an embedding store; embed a clip store instead")
    splits = {name: open_split(store, name) for name in SPLIT_NAMES}
    record = _record(config, source_info, splits)

    if overwrite:
        _remove(out)
    finished = _finished_record(out)
    if finished is not None:
        if _same_record(finished, record):
            return _summary(config, out, record, already_done=True)
        raise ValueError(
            f"{out} already holds embeddings by {_describe(finished)}, not by "
            f"{_describe(record)}; use another --out, or --overwrite to replace them"
        )

    partial = out / PARTIAL
    plan_file = partial / _PLAN
    if plan_file.exists():
        planned = json.loads(plan_file.read_text(encoding="utf-8"))
        if not _same_record(planned, record):
            raise ValueError(
                f"{out} holds unfinished embeddings by {_describe(planned)}, not by "
                f"{_describe(record)}; use another --out, or --overwrite to start again"
            )
        log.info("resuming the unfinished embeddings in %s", out)
        backbone = _build_backbone(config, splits)
    else:
        # Weights first: a failed download must not leave a plan that blocks other weights.
        backbone = _build_backbone(config, splits)
        partial.mkdir(parents=True, exist_ok=True)
        for name in SPLIT_NAMES:
            shape = tuple(record["shapes"][name])
            open_memmap(partial / f"{name}.npy", mode="w+", dtype=DTYPE, shape=shape).flush()
        # The plan is written after the arrays exist, so a plan on disk means they are usable.
        files.write_json_atomic(plan_file, record)

    journal_path = partial / _JOURNAL
    done = _read_journal(journal_path, record["shapes"])
    todo = [
        (name, start, stop)
        for name in SPLIT_NAMES
        for start, stop in _missing_ranges(done[name], config.chunk_clips)
    ]
    embedded_now = 0
    if todo:
        embedded_now = _embed_chunks(
            config, backbone, splits, partial, journal_path, todo, on_chunk
        )
    _finalize(config, store, out, record)
    summary = _summary(config, out, record, already_done=False)
    summary.embedded_now = embedded_now
    summary.seconds = time.perf_counter() - started
    return summary


# --- the record ----------------------------------------------------------------------------------


def _record(config: EmbedConfig, source_info: dict, splits: dict[str, Split]) -> dict:
    spec = backbone_spec(config.backbone)
    shapes = {}
    for name, data in splits.items():
        clip_shape = data.frames.shape
        if clip_shape[-1] != 3 or len(clip_shape) not in _AXES:
            raise ValueError(f"{config.store}: {name}.npy has an unexpected shape {clip_shape}")
        shapes[name] = [*clip_shape[:-3], spec.features]
    height, width = splits["train"].frames.shape[-3:-1]
    return {
        "backbone": spec.name,
        "network": spec.display_name,
        "weights": weights_record(config.weights),
        "input": [int(height), int(width), 3],
        "features": spec.features,
        "dtype": DTYPE,
        "axes": _AXES[len(splits["train"].frames.shape)],
        "shapes": shapes,
        "source": {
            "store": str(Path(config.store).resolve()),
            "fingerprint": source_info["fingerprint"],
            "settings": source_info["settings"],
        },
    }


def _same_record(first: dict, second: dict) -> bool:
    """Same backbone, same weights (wherever the file is), same clips: the same embeddings."""

    def identity(record: dict) -> dict:
        return {
            **{key: value for key, value in record.items() if key not in ("weights", "source")},
            "source": {key: value for key, value in record["source"].items() if key != "store"},
        }

    return identity(first) == identity(second) and same_weights(first["weights"], second["weights"])


def _describe(record: dict) -> str:
    weights = record["weights"]
    named = weights["name"] if weights["name"] != "file" else f"the file {weights['path']}"
    return f"{record['network']} with {named} weights of {record['source']['store']}"


def _finished_record(out: Path) -> dict | None:
    store_file = out / STORE_FILE
    if not store_file.exists():
        return None
    info = json.loads(store_file.read_text(encoding="utf-8"))
    if info.get("kind") != KIND:
        raise ValueError(f"{out}: holds a clip store; write the embeddings to another folder")
    return info["embedding"]


# --- embedding -----------------------------------------------------------------------------------


def _build_backbone(config: EmbedConfig, splits: dict[str, Split]):
    height, width = splits["train"].frames.shape[-3:-1]
    backbone = build_backbone(config.backbone, int(height), int(width), config.weights)
    gpu.warn_if_gpu_unused()
    return backbone


def _embed_chunks(
    config, backbone, splits, partial: Path, journal_path: Path, todo, on_chunk
) -> int:
    """Run the backbone over the chunks still to do, journaling each finished one."""
    total = sum(stop - start for _, start, stop in todo)
    arrays = {}
    progress = tqdm(total=total, unit="clip", desc=f"embed {config.backbone}", dynamic_ncols=True)
    try:
        with open(journal_path, "a", encoding="utf-8") as journal:
            for name, start, stop in todo:
                if name not in arrays:
                    arrays[name] = open_memmap(partial / f"{name}.npy", mode="r+")
                clips = np.asarray(splits[name].frames[start:stop])
                arrays[name][start:stop] = _features(backbone, clips, config.batch_size, name)
                # Durable before the journal says so: a crash must not leave trusted zeros.
                arrays[name].flush()
                journal.write(json.dumps({"split": name, "start": start, "stop": stop}) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                progress.update(stop - start)
                if on_chunk is not None:
                    on_chunk(name, start, stop)
    finally:
        progress.close()
        arrays.clear()
    return total


def _features(backbone, clips: np.ndarray, batch_size: int, split: str) -> np.ndarray:
    """Features of every frame of ``clips`` (..., h, w, 3), in the clips' leading shape."""
    leading = clips.shape[:-3]
    frames = clips.reshape(-1, *clips.shape[-3:])
    parts = []
    for index in range(0, len(frames), batch_size):
        batch = frames[index : index + batch_size]
        count = len(batch)
        if count < batch_size:
            # Every call gets the same shape, so the compiled function is traced only once.
            padding = np.zeros((batch_size - count, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, padding])
        parts.append(np.asarray(backbone.predict_on_batch(batch))[:count])
    features = np.concatenate(parts)
    half = features.astype(DTYPE)
    if not np.isfinite(half).all():
        raise ValueError(
            f"{split}: the backbone gave features beyond float16's range "
            f"(largest {np.abs(features).max():.3g}); these weights do not suit it"
        )
    return half.reshape(*leading, -1)


def _read_journal(journal_path: Path, shapes: dict) -> dict[str, np.ndarray]:
    """Which rows of each split are done, as boolean masks."""
    done = {name: np.zeros(shape[0], dtype=bool) for name, shape in shapes.items()}
    if not journal_path.exists():
        return done
    for line in journal_path.read_text(encoding="utf-8").splitlines():
        try:
            chunk = json.loads(line)
        except json.JSONDecodeError:
            # The last line of a run killed mid-write; that chunk is simply done again.
            continue
        done[chunk["split"]][chunk["start"] : chunk["stop"]] = True
    return done


def _missing_ranges(done: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """The rows not done, as (start, stop) ranges of at most ``chunk`` rows."""
    ranges = []
    missing = np.flatnonzero(~done)
    index = 0
    while index < len(missing):
        start = int(missing[index])
        stop = start
        while index < len(missing) and missing[index] == stop and stop - start < chunk:
            stop += 1
            index += 1
        ranges.append((start, stop))
    return ranges


# --- finishing -----------------------------------------------------------------------------------


def _finalize(config: EmbedConfig, store: Path, out: Path, record: dict) -> None:
    """Move the arrays into place and copy the clip store's metadata; store.json last."""
    partial = out / PARTIAL
    source_info = json.loads((store / STORE_FILE).read_text(encoding="utf-8"))
    for name in SPLIT_NAMES:
        files.replace_atomic(partial / f"{name}.npy", out / f"{name}.npy")
    copied = [f"{name}_labels.npy" for name in SPLIT_NAMES] + [CLASSES_FILE, MANIFEST_FILE]
    for file_name in copied:
        files.write_bytes_atomic(out / file_name, (store / file_name).read_bytes())
    files.write_json_atomic(out / "embed_config.json", dataclasses.asdict(config))
    info = {
        "format": FORMAT,
        "kind": KIND,
        "settings": source_info["settings"],
        "fingerprint": source_info["fingerprint"],
        "class_names": source_info["class_names"],
        "splits": {name: shape[0] for name, shape in record["shapes"].items()},
        "embedding": record,
    }
    # store.json last: its presence is what marks the store complete.
    files.write_json_atomic(out / STORE_FILE, info)
    shutil.rmtree(partial, ignore_errors=True)


def _summary(config: EmbedConfig, out: Path, record: dict, already_done: bool) -> EmbedSummary:
    return EmbedSummary(
        out=str(out),
        backbone=record["network"],
        weights=record["weights"],
        splits={name: tuple(shape) for name, shape in record["shapes"].items()},
        already_done=already_done,
    )


def _remove(out: Path) -> None:
    """Delete what embed writes in OUT, and nothing else the user may keep there."""
    if (out / STORE_FILE).exists() and not is_embedding_store(out):
        raise ValueError(f"{out}: holds a clip store; --overwrite replaces only embeddings")
    names = [STORE_FILE, CLASSES_FILE, MANIFEST_FILE, "embed_config.json"]
    for split in SPLIT_NAMES:
        names += [f"{split}.npy", f"{split}_labels.npy"]
    for name in names:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
