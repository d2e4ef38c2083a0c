"""``nightact prepare SRC STORE``: decode, sample and letterbox class-named videos into a store.

:func:`prepare` indexes ``SRC/<class>/**`` and draws the stratified split
(:mod:`nightact.data.splits`), then streams every clip into its row of the store, whose files and
format :mod:`nightact.core.store` describes and reads; at the end it looks for near-duplicates
across splits (:mod:`nightact.data.leakage`; ``check_leakage=False`` skips it).

With ``group_by`` (``--group-by``), the split is drawn over groups (:mod:`nightact.data.groups`),
each clip's group is in the manifest's ``group`` column, and the groups are kept in the plan so an
interrupted run resumes with the same ones.

While preparing, the arrays live in ``STORE/.partial/`` and are written row by row by worker
processes with positioned writes, so memory stays flat whatever the number of videos. A row counts
as done only once its line is in ``.partial/journal.jsonl``, appended after the row was made
durable; an interrupted run therefore resumes from the journal and never trusts a half-written row.
The parent makes rows durable and journals them a batch at a time: four clips per worker, or what
finished within a second (one sync per split array and one of the journal per batch). At the end
the arrays are compacted (rows of skipped files removed) and moved into place with atomic renames.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from nightact.core import cluster, files, runs, workers
from nightact.core.locks import folder_lock
from nightact.core.store import (
    CLASSES_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    PARTIAL,
    SHORT_CLIP_POLICIES,
    SPLIT_NAMES,
    STATUSES,
    STORE_FILE,
    STORED_STATUSES,
    open_split,
    read_manifest,
)
from nightact.core.videos import VIDEO_EXTENSIONS, VideoError, read_clip, truncation_note
from nightact.data.groups import assign_grouped_splits, assign_groups, parse_group_by
from nightact.data.leakage import LeakageConfig, check_store, write_report
from nightact.data.splits import Entry, assign_splits, index_videos

__all__ = [
    "ClipJob",
    "prepare",
    "PrepareConfig",
    "PrepareSummary",
    "store_bytes",
    "write_preview",
]

log = logging.getLogger(__name__)


_JOURNAL = "journal.jsonl"
_PLAN = "plan.json"
# A short clip is an expected property of a dataset, listed in the summary; every other status
# but ok (a damaged, skipped, failed file) gets a warning line as it is found.
_UNREMARKED_STATUSES = ("ok", "short")


@dataclass
class PrepareConfig:
    """Everything that decides what a prepared store contains."""

    src: str
    out: str
    frames: int = 10
    height: int = 240
    width: int = 320
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 31
    workers: int | None = None
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    short_clips: str = "repeat-last"
    # Candidate frames stored per segment (nightact.data.sampling): training with augmentation picks
    # one at random, everything else reads the first, the original's frame. Memory and disk
    # grow K times. 1: one frame per segment, the store exactly as before this setting existed.
    frames_per_segment: int = 1
    group_by: str = "none"  # none, near-duplicates or a regex with a capture group (groups.py)
    check_leakage: bool = True  # look for near-duplicates across splits at the end, and warn
    # Decode on a Ray cluster (nightact.core.cluster): its address, "local" for a new instance
    # here; None: worker processes on this machine. Not a content setting: the store is the same.
    ray: str | None = None

    def __post_init__(self) -> None:
        self.src = str(self.src)
        self.out = str(self.out)
        self.split = tuple(float(fraction) for fraction in self.split)
        self.extensions = tuple(
            ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in self.extensions
        )
        if self.frames <= 0:
            raise ValueError(f"frames must be positive, got {self.frames}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive, got {self.height}x{self.width}")
        if len(self.split) != 3 or any(fraction < 0 for fraction in self.split):
            raise ValueError(f"split must be three non-negative fractions, got {self.split}")
        # A store may be test-only (--split 0,0,1): another camera to score a run on.
        if abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {self.split}")
        if self.frames_per_segment < 1:
            raise ValueError(
                f"frames_per_segment must be at least 1, got {self.frames_per_segment}"
            )
        if self.short_clips not in SHORT_CLIP_POLICIES:
            raise ValueError(
                f"short_clips must be one of {SHORT_CLIP_POLICIES}, got {self.short_clips!r}"
            )
        if not self.extensions:
            raise ValueError("extensions must name at least one file extension")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        parse_group_by(self.group_by)

    def content_settings(self) -> dict:
        """The settings that decide the store's content (not where it is or how fast)."""
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "split": list(self.split),
            "seed": self.seed,
            "extensions": list(self.extensions),
            "short_clips": self.short_clips,
            # Absent for K=1, so a store made before the setting existed still matches.
            **(
                {"frames_per_segment": self.frames_per_segment}
                if self.frames_per_segment > 1
                else {}
            ),
            # Only when set, so that stores made before --group-by existed stay complete.
            **({"group_by": self.group_by} if self.group_by != "none" else {}),
        }


@dataclass
class PrepareSummary:
    """What a prepare run did; ``table()`` renders it for people."""

    store: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # class -> split -> stored clips
    problems: list[dict]  # manifest rows with status short, truncated, skipped, failed, ignored
    prepared: int  # clips stored in all splits
    processed_now: int = 0  # clips decoded by this run (0 when everything was already done)
    seconds: float = 0.0
    already_done: bool = False
    leakage: dict | None = None  # nightact.data.leakage summary of the check at the end, if it ran

    @property
    def status_counts(self) -> dict[str, int]:
        """How many files have each status other than ok, in the order of STATUSES."""
        counts = Counter(row["status"] for row in self.problems)
        return {status: counts[status] for status in STATUSES if counts[status]}

    def table(self) -> str:
        name_width = max([len("class"), *(len(name) for name in self.class_names)])
        lines = [
            f"{'class':<{name_width}}  " + "  ".join(f"{s:>6}" for s in SPLIT_NAMES) + "   total"
        ]
        totals = Counter()
        for name in self.class_names:
            row = self.counts.get(name, {})
            totals.update(row)
            cells = "  ".join(f"{row.get(s, 0):>6}" for s in SPLIT_NAMES)
            lines.append(f"{name:<{name_width}}  {cells}  {sum(row.values()):>6}")
        cells = "  ".join(f"{totals.get(s, 0):>6}" for s in SPLIT_NAMES)
        lines.append(f"{'total':<{name_width}}  {cells}  {sum(totals.values()):>6}")
        if self.problems:
            counted = ", ".join(f"{count} {status}" for status, count in self.status_counts.items())
            lines.append("")
            lines.append(f"{len(self.problems)} file(s) not stored as is ({counted}):")
            for row in self.problems:
                lines.append(f"  [{row['status']}] {row['path']}: {row['error']}")
        lines.append("")
        if self.already_done:
            lines.append(f"store {self.store} was already complete; nothing to do")
        else:
            rate = self.processed_now / self.seconds if self.seconds > 0 else 0.0
            lines.append(
                f"stored {self.prepared} clips in {self.store} "
                f"({self.processed_now} decoded now in {self.seconds:.1f} s, {rate:.1f} clips/s)"
            )
        if self.leakage is not None:
            found = self.leakage["pairs_across_splits"]
            lines.append(
                f"leakage check: {found} near-duplicate pairs across splits"
                + (f" (see {Path(self.store) / 'leakage.csv'})" if found else "")
                + f", {self.leakage['seconds']:.1f} s"
            )
        return "\n".join(lines)


# --- indexing and splitting ----------------------------------------------------------------------


def _fingerprint(entries: list[Entry]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.path}\0{entry.file_size}\n".encode())
    return digest.hexdigest()


# --- preparing -----------------------------------------------------------------------------------


def prepare(config: PrepareConfig, overwrite: bool = False) -> PrepareSummary:
    """Prepare (or resume, or confirm) the clip store ``config.out`` from ``config.src``.

    Holds the store's folder lock throughout (a second ``prepare`` into it is refused), and
    refuses up front when the disk lacks the store's size (clips x frames x height x width x 3
    bytes), naming both figures. A disk that fills anyway raises nightact.core.files.DiskFullError;
    the clips done so far stay in ``STORE/.partial`` and the same command resumes from them.
    """
    started = time.perf_counter()
    class_names, entries, ignored = index_videos(config.src, config.extensions)
    if not entries:
        raise ValueError(
            f"{config.src}: no videos found; expected SRC/<class name>/*"
            f"{{{','.join(config.extensions)}}}"
        )
    # On Ray, connected (or told why not) before anything is written.
    on_ray = config.ray is not None
    with cluster.connect(config.ray, cpus=config.workers) if on_ray else contextlib.nullcontext():
        with folder_lock(config.out):
            return _prepare(config, overwrite, started, class_names, entries, ignored)


def _prepare(
    config: PrepareConfig, overwrite: bool, started: float, class_names, entries, ignored
) -> PrepareSummary:
    out = Path(config.out)
    for row in ignored:
        log.info("ignored %s: %s", row["path"], row["error"])
    fingerprint = _fingerprint(entries)
    settings = config.content_settings()

    if overwrite:
        _remove_store(out)
    store_file = out / STORE_FILE
    if store_file.exists():
        info = runs.read_json(store_file, "store description")
        runs.require_same_settings(
            {**info["settings"], "fingerprint": info["fingerprint"]},
            {**settings, "fingerprint": fingerprint},
            where=out,
            what="a store prepared from other files or",
            remedy="use --overwrite to replace it, or another folder",
        )
        return _summary_from_manifest(out, class_names, already_done=True)

    partial = out / PARTIAL
    plan_file = partial / _PLAN
    saved_plan = runs.read_json(plan_file, "store plan") if plan_file.exists() else None
    groups = _groups(config, entries, saved_plan)
    if groups is None:
        splits = assign_splits(entries, config.split, config.seed)
    else:
        splits = assign_grouped_splits(entries, groups, config.split, config.seed)
    tasks = [(entry, name, row) for name in SPLIT_NAMES for row, entry in enumerate(splits[name])]
    plan = {"settings": settings, "fingerprint": fingerprint, "class_names": class_names}
    if groups is not None:
        # Kept in the plan: a resumed run must not redo (or redraw) the grouping.
        plan["groups"] = groups
    if saved_plan is not None:
        runs.require_same_settings(
            _flat_plan(saved_plan),
            _flat_plan(plan),
            where=out,
            what="an unfinished store started from other files or",
            remedy="use --overwrite to start again, or another folder",
        )
        log.info("resuming the unfinished store in %s", out)
    else:
        _check_store_space(config, out, {name: len(splits[name]) for name in SPLIT_NAMES})
        partial.mkdir(parents=True, exist_ok=True)
        for name in SPLIT_NAMES:
            rows_frames = config.frames * config.frames_per_segment
            shape = (len(splits[name]), rows_frames, config.height, config.width, 3)
            open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
        # The plan is written after the arrays exist, so a plan on disk means they are usable.
        files.write_json_atomic(plan_file, plan)

    journal_path = partial / _JOURNAL
    done = _read_journal(journal_path, Path(config.src))
    todo = [task for task in tasks if task[0].path not in done]
    try:
        processed_now = _process(config, todo, journal_path, done)
        summary = _finalize(config, out, class_names, tasks, done, ignored, fingerprint, groups)
    except files.DiskFullError:
        raise
    except OSError as error:
        if not files.is_disk_full(error):
            raise
        raise files.DiskFullError(
            partial,
            note=f"the {len(done)} clips done so far are kept; free some space and run the "
            "same command again to go on from them",
        ) from error
    summary.processed_now = processed_now
    # The decoding rate is prepare's own; the check reports its seconds on a line of its own.
    summary.seconds = time.perf_counter() - started
    if config.check_leakage:
        summary.leakage = _check_leakage(out)
    return summary


def _groups(config: PrepareConfig, entries: list[Entry], saved_plan: dict | None):
    """Each entry's group under ``config.group_by`` (None for "none"); a resumed run reuses the
    groups its plan recorded."""
    if config.group_by == "none":
        return None
    if saved_plan is not None and "groups" in saved_plan:
        return saved_plan["groups"]
    started = time.perf_counter()
    groups = assign_groups(entries, config.group_by, config.src, config.frames, config.workers)
    log.info(
        "--group-by %s: %d clips in %d groups (%.1f s)",
        config.group_by,
        len(groups),
        len(set(groups.values())),
        time.perf_counter() - started,
    )
    return groups


def _check_leakage(out: Path) -> dict:
    """Look for near-duplicate clips across the new store's splits; warn and write
    ``leakage.csv`` when there are any."""
    report = check_store(LeakageConfig(out))
    write_report(report)
    summary = report.summary()
    if summary["pairs_across_splits"]:
        log.warning(
            "%s: %d pairs of near-duplicate clips lie in different splits (%d clusters); the "
            "test score may measure memory. See %s, or prepare again with --group-by "
            "near-duplicates",
            out,
            summary["pairs_across_splits"],
            summary["clusters_across_splits"],
            out / "leakage.csv",
        )
    return summary


def store_bytes(config: PrepareConfig, clips: int) -> int:
    """The bytes ``clips`` clips take in a store: clips x frames x height x width x 3."""
    return clips * config.frames * config.height * config.width * 3


def _check_store_space(config: PrepareConfig, out: Path, counts: dict[str, int]) -> None:
    """Raise nightact.core.files.DiskSpaceError unless OUT's disk holds the whole store."""
    needed = store_bytes(config, sum(counts.values()))
    # A small margin: the manifest and JSON files are all the store holds besides the arrays.
    files.check_free_space(
        out, needed, f"a store of {sum(counts.values())} clips", margin_bytes=4 << 20
    )


def _flat_plan(plan: dict) -> dict:
    """A store plan with its settings lifted to the top, to compare setting by setting."""
    return {**plan.get("settings", {}), **{k: v for k, v in plan.items() if k != "settings"}}


def _process(config: PrepareConfig, todo: list, journal_path: Path, done: dict) -> int:
    """Decode the clips still to do, in worker processes or Ray tasks, journaling each one."""
    if not todo:
        return 0
    count = workers.worker_count(config.workers, len(todo))
    # Each worker's decoder takes its share of the CPUs, not all of them; a Ray task its one CPU.
    threads = 1 if config.ray is not None else workers.decoder_threads(count)
    # Ray's nodes find the videos by the same absolute path (shared storage).
    src = str(Path(config.src).resolve()) if config.ray is not None else config.src
    jobs = [
        ClipJob(
            src=src,
            partial=str(journal_path.parent),
            path=entry.path,
            split=split,
            row=row,
            frames=config.frames,
            height=config.height,
            width=config.width,
            short_clips=config.short_clips,
            frames_per_segment=config.frames_per_segment,
            decoder_threads=threads,
        )
        for entry, split, row in todo
    ]
    progress = tqdm(total=len(jobs), unit="clip", desc="prepare", dynamic_ncols=True)

    def record(results: list[dict]) -> None:
        for result in results:
            done[result["path"]] = result
            if result["status"] not in _UNREMARKED_STATUSES:
                log.warning("%s %s: %s", result["status"], result["path"], result["error"])
        progress.update(len(results))

    # Two syncs per clip held many workers back: each waited for its row's, and this process,
    # which takes one result at a time, for the journal's. A crash loses at most a batch.
    journal = _Journal(journal_path, batch=_CLIPS_PER_SYNC * count)
    try:
        for result in _results(config, jobs, count):
            record(journal.add(result))
        record(journal.commit())
    except BaseException:
        # The clips that came back have their rows written: keep them for the next run.
        record(journal.commit_on_error())
        raise
    finally:
        journal.close()
        progress.close()
        # In-process runs share the worker's cache of open arrays: drop it, so a later run
        # on a rewritten store never writes through a map of the old file.
        _close_arrays()
    return len(jobs)


def _results(config: PrepareConfig, jobs: list, count: int) -> Iterator[dict]:
    """Each job's manifest fields as it finishes, its row written.

    Worker processes on this machine write their rows themselves. Ray tasks, which may run on
    machines that cannot write into this store, send their frames back and the rows are written
    here, one at a time as they arrive: at most two clips per cluster CPU are ever held here.
    """
    if config.ray is None:
        yield from workers.map_unordered(_prepare_one, jobs, count)
        return
    # prepare() connected to the cluster before anything was written.
    for finished in cluster.map_unordered(_decode_one, jobs):
        if finished.error is not None:
            raise finished.error
        result, frames = finished.value
        if frames is not None:
            job = finished.job
            _write_row(str(Path(job.partial) / f"{job.split}.npy"), job.row, frames)
        yield result


# Clips per worker made durable and journaled together (see _Journal).
_CLIPS_PER_SYNC = 4


class _Journal:
    """The parent's half of "a clip is done": its row made durable, then its line journaled.

    Workers write rows without syncing them. For a batch of finished clips at a time (``batch``
    clips, or what came back within ``seconds``), the parent syncs the split arrays those rows are
    in, then appends their lines to the journal and syncs it: a sync per split and one of the
    journal per batch, instead of two per clip, and none of them in a worker. A crash between the
    two syncs loses journal lines, never trusts a row that is not on disk: those clips are done
    again.
    """

    def __init__(self, path: Path, batch: int = 1, seconds: float = 1.0):
        self.path, self.batch, self.seconds = path, max(1, batch), seconds
        self.handle = open(path, "a", encoding="utf-8")
        self.pending: list[dict] = []
        self.last = time.monotonic()
        self.failed = False  # a sync failed: pending rows may not be on disk, never journal them

    def add(self, result: dict) -> list[dict]:
        """Take one finished clip; return the clips journaled now (none until a batch is due)."""
        self.pending.append(result)
        if len(self.pending) >= self.batch or time.monotonic() - self.last >= self.seconds:
            return self.commit()
        return []

    def commit(self) -> list[dict]:
        """Make the pending clips' rows durable, then journal them; return them."""
        if not self.pending or self.failed:
            return []
        try:
            splits = {r["split"] for r in self.pending if r["status"] in STORED_STATUSES}
            for split in sorted(splits):
                descriptor = os.open(self.path.parent / f"{split}.npy", os.O_RDONLY)
                try:
                    # Syncs the file, whichever process wrote its pages.
                    os.fdatasync(descriptor)
                finally:
                    os.close(descriptor)
            self.handle.write("".join(json.dumps(result) + "\n" for result in self.pending))
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError:
            self.failed = True
            raise
        committed, self.pending = self.pending, []
        self.last = time.monotonic()
        return committed

    def commit_on_error(self) -> list[dict]:
        """:meth:`commit` while another error is on its way up: a failure here is dropped."""
        try:
            return self.commit()
        except OSError:
            return []

    def close(self) -> None:
        self.handle.close()


# Worker-side cache: array file -> (open descriptor, byte offset of row 0, bytes per row).
_open_arrays: dict[str, tuple[int, int, int]] = {}


def _npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """Shape and data offset of a uint8 .npy file, read from its header."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"{path}: unsupported .npy format version {version}")
        if dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 clips, found {dtype}")
        return shape, handle.tell()


def _write_row(array_path: str, row: int, frames: np.ndarray) -> None:
    """Write one clip into its row with plain file I/O (the parent makes it durable: _Journal).

    Writing through a memory map would count every touched page of the store in the worker's
    resident memory; positioned writes keep memory flat however large the store grows.
    """
    if array_path not in _open_arrays:
        shape, offset = _npy_layout(Path(array_path))
        row_bytes = int(np.prod(shape[1:]))
        _open_arrays[array_path] = (os.open(array_path, os.O_WRONLY), offset, row_bytes)
    descriptor, offset, row_bytes = _open_arrays[array_path]
    data = np.ascontiguousarray(frames, dtype=np.uint8)
    if data.nbytes != row_bytes:
        raise ValueError(f"{array_path}: clip of {data.shape} does not fit a row")
    os.pwrite(descriptor, data.tobytes(), offset + row * row_bytes)


def _close_arrays() -> None:
    for descriptor, _, _ in _open_arrays.values():
        os.close(descriptor)
    _open_arrays.clear()


class ClipJob(NamedTuple):
    """One video for a worker to decode into row ``row`` of ``PARTIAL/<split>.npy``."""

    src: str  # the videos' root folder
    partial: str  # the store's unfinished folder, holding the split arrays
    path: str  # the video, relative to src
    split: str
    row: int
    frames: int
    height: int
    width: int
    short_clips: str  # PrepareConfig.short_clips
    frames_per_segment: int = 1
    decoder_threads: int | None = None  # None: FFmpeg's choice (nightact.core.workers)


def _prepare_one(job: ClipJob) -> dict:
    """Worker: decode one video into its row; return its manifest fields. Never raises."""
    result, frames = _decode_one(job)
    if frames is None:
        return result
    try:
        _write_row(str(Path(job.partial) / f"{job.split}.npy"), job.row, frames)
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the whole run.
        result.update(status="failed", error=f"unexpected {type(error).__name__}: {error}")
    return result


def _decode_one(job: ClipJob) -> tuple[dict, np.ndarray | None]:
    """Decode one video: its manifest fields, and the frames of its row (None: nothing to store).

    Never raises: a file that cannot be read comes back as a status and its reason.
    """
    path, frames = job.path, job.frames
    source = Path(job.src) / path
    result = {"path": path, "split": job.split, "row": job.row, "status": "failed", "error": ""}
    try:
        stat = source.stat()
        result.update(file_size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        clip = read_clip(
            source,
            frames=frames,
            height=job.height,
            width=job.width,
            frames_per_segment=job.frames_per_segment,
            threads=job.decoder_threads,
        )
        result.update(
            decoded_frames=clip.decoded_frames,
            header_frames=clip.header_frames,
            fps=round(clip.fps, 3),
            width=clip.width,
            height=clip.height,
            rotation=clip.rotation,
            indices=" ".join(str(index) for index in clip.indices),
            sha256=files.sha256_of(source),
        )
        if (clip.short or clip.truncated) and job.short_clips == "skip":
            reason = (
                truncation_note(clip.decoded_frames, clip.promised_frames)
                if clip.truncated
                else f"only {clip.decoded_frames} decodable frames, fewer than {frames}"
            )
            result.update(status="skipped", error=f"{reason} (--short-clips skip)")
            return result, None
        result.update(_stored_status(clip))
        return result, clip.frames
    except VideoError as error:
        result["error"] = error.reason
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the whole run.
        result["error"] = f"unexpected {type(error).__name__}: {error}"
    return result, None


def _stored_status(clip) -> dict:
    """Status and note of a stored clip: truncated (the file is damaged) outranks short."""
    if clip.truncated:
        note = truncation_note(clip.decoded_frames, clip.promised_frames)
        if clip.short:
            note += "; the last one is repeated"
        return {"status": "truncated", "error": note}
    if clip.short:
        note = f"only {clip.decoded_frames} decodable frames; the last one is repeated"
        return {"status": "short", "error": note}
    return {"status": "ok"}


def _read_journal(journal_path: Path, src: Path) -> dict[str, dict]:
    """Finished clips from an earlier run, dropping any whose source file changed since."""
    done: dict[str, dict] = {}
    if not journal_path.exists():
        return done
    for line in journal_path.read_text(encoding="utf-8").splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            # The last line of a run killed mid-write; that clip is simply done again.
            continue
        try:
            stat = (src / result["path"]).stat()
        except OSError:
            continue
        if (stat.st_size, stat.st_mtime_ns) == (result.get("file_size"), result.get("mtime_ns")):
            done[result["path"]] = result
    return done


def _finalize(
    config: PrepareConfig,
    out: Path,
    class_names: list[str],
    tasks: list,
    done: dict,
    ignored: list[dict],
    fingerprint: str,
    groups: dict[str, str] | None = None,
) -> PrepareSummary:
    """Compact each split to its stored rows, then move everything into place atomically."""
    partial = out / PARTIAL
    manifest_rows = []
    split_sizes = {}
    for name in SPLIT_NAMES:
        split_tasks = [task for task in tasks if task[1] == name]
        stored = [
            (entry, row)
            for entry, _, row in split_tasks
            if done[entry.path]["status"] in STORED_STATUSES
        ]
        _compact(partial / f"{name}.npy", out / f"{name}.npy", [row for _, row in stored])
        labels = np.array([entry.label for entry, _ in stored], dtype=np.int64)
        _write_npy_atomic(out / f"{name}_labels.npy", labels)
        split_sizes[name] = len(stored)
        new_rows = {entry.path: new_row for new_row, (entry, _) in enumerate(stored)}
        for entry, _, _ in split_tasks:
            result = done[entry.path]
            row = dict.fromkeys(MANIFEST_COLUMNS, "")
            row.update({key: value for key, value in result.items() if key in MANIFEST_COLUMNS})
            row.update(
                path=entry.path,
                **{"class": entry.class_name},
                label=entry.label,
                split=name,
                row=new_rows.get(entry.path, ""),
                group=(groups or {}).get(entry.path, entry.path),
            )
            manifest_rows.append(row)
    manifest_rows.extend(ignored)
    manifest_rows.sort(key=lambda row: row["path"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(manifest_rows)
    files.write_text_atomic(out / MANIFEST_FILE, buffer.getvalue())
    files.write_json_atomic(out / CLASSES_FILE, {"class_names": class_names})
    files.write_json_atomic(out / "prepare_config.json", dataclasses.asdict(config))
    info = {
        "format": 1,
        "settings": config.content_settings(),
        "fingerprint": fingerprint,
        "class_names": class_names,
        "splits": split_sizes,
        "src": str(Path(config.src).resolve()),
    }
    # store.json last: its presence is what marks the store complete.
    files.write_json_atomic(out / STORE_FILE, info)
    shutil.rmtree(partial, ignore_errors=True)
    return _summary_from_manifest(out, class_names, already_done=False)


def _compact(source: Path, target: Path, rows: list[int]) -> None:
    """Copy the kept rows of ``source`` into a new .npy at ``target``, one row at a time."""
    shape, offset = _npy_layout(source)
    if rows == list(range(shape[0])):
        os.replace(source, target)
        return
    row_bytes = int(np.prod(shape[1:]))
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, *shape[1:]), np.uint8))
    header["shape"] = (len(rows), *shape[1:])
    with open(source, "rb") as reader, files.open_atomic(target) as writer:
        np.lib.format.write_array_header_1_0(writer, header)
        for row in rows:
            writer.write(os.pread(reader.fileno(), row_bytes, offset + row * row_bytes))


def _summary_from_manifest(out: Path, class_names: list[str], already_done: bool):
    rows = read_manifest(out)
    counts: dict[str, dict[str, int]] = {name: {} for name in class_names}
    for row in rows:
        if row["status"] in STORED_STATUSES:
            per_class = counts.setdefault(row["class"], {})
            per_class[row["split"]] = per_class.get(row["split"], 0) + 1
    problems = [row for row in rows if row["status"] != "ok"]
    prepared = sum(row["status"] in STORED_STATUSES for row in rows)
    return PrepareSummary(
        store=str(out),
        class_names=class_names,
        counts=counts,
        problems=problems,
        prepared=prepared,
        already_done=already_done,
    )


def _remove_store(out: Path) -> None:
    """Delete what prepare writes in OUT, and nothing else the user may keep there."""
    names = [STORE_FILE, CLASSES_FILE, MANIFEST_FILE, "prepare_config.json"]
    for split in SPLIT_NAMES:
        names += [f"{split}.npy", f"{split}_labels.npy", f"{split}.npy.tmp"]
    for name in names:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    with files.open_atomic(path) as handle:
        np.save(handle, array)


# --- reading a store -----------------------------------------------------------------------------


def write_preview(
    store: str | os.PathLike, split: str = "train", index: int = 0, out: str | None = None
) -> Path:
    """Draw one stored clip's frames side by side, titled with its class, to a PNG."""
    # The object-oriented Figure API needs no GUI backend and changes no global state.
    from matplotlib.figure import Figure

    data = open_split(store, split)
    if not 0 <= index < len(data):
        raise ValueError(f"{store}: {split} has {len(data)} clips; index {index} is out of range")
    clip = np.asarray(data.frames[index])
    class_name = data.class_names[int(data.labels[index])]
    # One row per segment when the store keeps several candidates of each.
    columns = data.frames_per_segment if data.frames_per_segment > 1 else min(5, len(clip))
    rows = -(-len(clip) // columns)
    aspect = clip.shape[1] / clip.shape[2]
    figure = Figure(figsize=(3 * columns, 3 * rows * aspect + 0.8), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for number, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if number < len(clip):
            axis.imshow(clip[number])
            per_segment = data.frames_per_segment
            if per_segment == 1:
                title = f"frame {number + 1}"
            else:
                title = f"segment {number // per_segment + 1}, candidate {number % per_segment}"
            axis.set_title(title, fontsize=9)
    figure.suptitle(f"{class_name}  ({split} #{index}: {data.paths[index]})", fontsize=12)
    path = Path(out) if out else Path(store) / f"preview-{split}-{index}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    return path
