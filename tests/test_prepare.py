"""The prepare pipeline: index, stratified split, clip store on disk, resume, bad files, preview."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import decodable_frames, read_barcode, write_barcode_video, write_truncated_mp4
from nightact.cli import main
from nightact.core.store import (
    MANIFEST_COLUMNS,
    STORED_STATUSES,
    open_split,
    read_manifest,
    read_store_info,
)
from nightact.core.videos import read_clip, sample_indices, write_video
from nightact.data.prepare import PrepareConfig, prepare, write_preview
from nightact.data.splits import assign_splits, index_videos, split_counts

CLASSES = ("Throwing objects", "boxing", "walking on stairs")


def _make_source(root: Path, per_class: int = 6, frames: int = 12) -> Path:
    """Tiny real videos: class k's pictures have brightness set by k, so labels can be checked."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        for number in range(per_class):
            count = int(rng.integers(frames, frames + 8))
            level = 40 + 80 * label
            pictures = [np.full((32, 48, 3), level + i, dtype=np.uint8) for i in range(count)]
            write_video(root / name / f"clip_{number:02d}.mp4", pictures, fps=12)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _make_source(tmp_path_factory.mktemp("videos"))


def _config(src, out, **overrides) -> PrepareConfig:
    settings = dict(src=src, out=out, frames=4, height=16, width=24, workers=1)
    settings.update(overrides)
    return PrepareConfig(**settings)


def test_split_counts_sum_up_and_leave_no_split_empty():
    assert split_counts(20, (0.7, 0.15, 0.15)) == [14, 3, 3]
    assert split_counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    assert split_counts(2, (0.7, 0.15, 0.15)) == [2, 0, 0]
    for total in range(1, 60):
        fractions = (0.6, 0.25, 0.15)
        counts = split_counts(total, fractions)
        assert sum(counts) == total
        assert all(abs(n - total * f) <= 1.5 for n, f in zip(counts, fractions, strict=True))
    assert split_counts(10, (1.0, 0.0, 0.0)) == [10, 0, 0]


def test_index_uses_sorted_folder_names_and_reports_what_it_passes_over(tmp_path):
    src = _make_source(tmp_path / "src", per_class=1)
    (src / "notes.txt").write_text("hello")
    (src / "synth_config.json").write_text("{}")  # `nightact synth`'s record: passed over quietly
    (src / "boxing" / "readme.md").write_text("hello")
    (src / "empty class").mkdir()
    hidden = src / "boxing" / ".partial-123" / "half.mp4"
    hidden.parent.mkdir()
    hidden.write_bytes(b"half a video")
    class_names, entries, ignored = index_videos(src)
    assert not any(".partial" in entry.path for entry in entries)
    assert class_names == sorted(CLASSES)
    assert [entry.label for entry in entries] == [0, 1, 2]
    reasons = {row["path"]: row["error"] for row in ignored}
    assert "outside any class folder" in reasons["notes.txt"]
    assert "synth_config.json" not in reasons
    assert "extension .md" in reasons["boxing/readme.md"]
    assert "without any video" in reasons["empty class/"]


def test_split_is_stratified_and_deterministic(tmp_path):
    src = _make_source(tmp_path / "src", per_class=20, frames=2)
    _, entries, _ = index_videos(src)
    splits = assign_splits(entries, (0.7, 0.15, 0.15), seed=5)
    for name, expected in zip(("train", "val", "test"), (14, 3, 3), strict=True):
        assert Counter(entry.class_name for entry in splits[name]) == dict.fromkeys(
            CLASSES, expected
        )
    assert len({entry.path for members in splits.values() for entry in members}) == 60
    again = assign_splits(entries, (0.7, 0.15, 0.15), seed=5)
    other = assign_splits(entries, (0.7, 0.15, 0.15), seed=6)
    paths = {name: [entry.path for entry in members] for name, members in splits.items()}
    assert paths == {name: [entry.path for entry in members] for name, members in again.items()}
    assert paths != {name: [entry.path for entry in members] for name, members in other.items()}


def test_prepare_writes_a_store_whose_rows_are_the_decoded_clips(source, tmp_path):
    out = tmp_path / "store"
    summary = prepare(_config(source, out, workers=2))
    assert summary.prepared == 18
    info = read_store_info(out)
    assert info["class_names"] == sorted(CLASSES)
    assert info["splits"] == {"train": 12, "val": 3, "test": 3}
    rows = read_manifest(out)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    for split_name in ("train", "val", "test"):
        split = open_split(out, split_name)
        assert split.frames.shape == (len(split), 4, 16, 24, 3)
        assert split.frames.dtype == np.uint8
        assert not split.frames.flags.writeable
        for row in range(len(split)):
            path = source / split.paths[row]
            expected = read_clip(path, frames=4, height=16, width=24).frames
            np.testing.assert_array_equal(split.frames[row], expected)
            assert split.class_names[split.labels[row]] == path.parent.name
    by_path = {row["path"]: row for row in rows}
    clip_row = by_path["boxing/clip_00.mp4"]
    assert clip_row["status"] == "ok" and clip_row["class"] == "boxing"
    assert int(clip_row["decoded_frames"]) >= 12
    assert clip_row["indices"] == " ".join(
        str(i) for i in [int(i * int(clip_row["decoded_frames"]) / 4) for i in range(4)]
    )
    assert len(clip_row["sha256"]) == 64
    saved = json.loads((out / "prepare_config.json").read_text())
    assert saved["frames"] == 4 and saved["height"] == 16
    assert not (out / ".partial").exists()


def test_bad_files_are_reported_and_skipped_while_the_rest_is_prepared(source, tmp_path):
    src = tmp_path / "src"
    _make_source(src, per_class=4)
    good = (src / "boxing" / "clip_00.mp4").read_bytes()
    (src / "boxing" / "zero.mp4").write_bytes(b"")
    (src / "boxing" / "text.mp4").write_text("definitely not a video\n")
    (src / "boxing" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (src / "boxing" / "clip.txt").write_bytes(good)  # a video with the wrong extension
    out = tmp_path / "store"
    code = main(["prepare", str(src), str(out), "--frames", "4", "--size", "16x24"])
    assert code == 0
    rows = {row["path"]: row for row in read_manifest(out)}
    assert rows["boxing/zero.mp4"]["status"] == "failed"
    assert "empty" in rows["boxing/zero.mp4"]["error"]
    assert rows["boxing/text.mp4"]["status"] == "failed"
    assert "not a readable video" in rows["boxing/text.mp4"]["error"]
    assert rows["boxing/truncated.mp4"]["status"] == "failed"
    assert rows["boxing/clip.txt"]["status"] == "ignored"
    assert sum(row["status"] == "ok" for row in rows.values()) == 12
    stored = sum(len(open_split(out, name)) for name in ("train", "val", "test"))
    assert stored == 12
    for row in rows.values():
        assert (row["row"] == "") == (row["status"] not in STORED_STATUSES)


def test_nothing_preparable_exits_non_zero(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "boxing").mkdir(parents=True)
    (src / "boxing" / "broken.mp4").write_text("no")
    assert main(["prepare", str(src), str(tmp_path / "store")]) == 1
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "store2")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_short_clips_follow_the_policy(tmp_path):
    src = tmp_path / "src"
    write_barcode_video(src / "a" / "long.mp4", 20)
    write_barcode_video(src / "a" / "short.mp4", 3)
    write_barcode_video(src / "b" / "long.mp4", 20)
    kept = prepare(_config(src, tmp_path / "kept", split=(1.0, 0.0, 0.0), height=64, width=96))
    assert kept.prepared == 3
    train = open_split(tmp_path / "kept", "train")
    row = train.paths.index("a/short.mp4")
    assert [read_barcode(frame) for frame in train.frames[row]] == [0, 1, 2, 2]
    statuses = {row["path"]: row["status"] for row in read_manifest(tmp_path / "kept")}
    assert statuses["a/short.mp4"] == "short"
    skipped = prepare(_config(src, tmp_path / "skip", split=(1.0, 0.0, 0.0), short_clips="skip"))
    assert skipped.prepared == 2
    statuses = {row["path"]: row["status"] for row in read_manifest(tmp_path / "skip")}
    assert statuses["a/short.mp4"] == "skipped"


def test_a_truncated_file_is_stored_marked_warned_about_and_counted(tmp_path, caplog):
    src = tmp_path / "src"
    write_barcode_video(src / "a" / "long.mp4", 20)
    write_barcode_video(src / "b" / "long.mp4", 20)
    # Its index is intact and promises 49 frames; about half of them are still in the file.
    cut = write_truncated_mp4(src / "a" / "cut.mp4", count=49)
    decoded = decodable_frames(cut)
    note = f"only {decoded} of the 49 frames its index promises decode"
    settings = dict(split=(1.0, 0.0, 0.0), height=64, width=96, check_leakage=False)
    with caplog.at_level(logging.WARNING, logger="nightact.data.prepare"):
        kept = prepare(_config(src, tmp_path / "kept", **settings))
    assert [record.getMessage() for record in caplog.records] == [f"truncated a/cut.mp4: {note}"]
    row = {row["path"]: row for row in read_manifest(tmp_path / "kept")}["a/cut.mp4"]
    assert row["status"] == "truncated" and row["error"] == note
    assert (int(row["decoded_frames"]), int(row["header_frames"])) == (decoded, 49)
    # Stored, and sampled over the frames that decode.
    train = open_split(tmp_path / "kept", "train")
    assert kept.prepared == len(train) == 3
    stored = train.frames[train.paths.index("a/cut.mp4")]
    assert [read_barcode(frame) for frame in stored] == sample_indices(decoded, 4)
    assert kept.status_counts == {"truncated": 1}
    assert "1 file(s) not stored as is (1 truncated):" in kept.table()
    assert f"  [truncated] a/cut.mp4: {note}" in kept.table()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nightact.data.prepare"):
        skipped = prepare(_config(src, tmp_path / "skip", short_clips="skip", **settings))
    reason = f"{note} (--short-clips skip)"
    assert [record.getMessage() for record in caplog.records] == [f"skipped a/cut.mp4: {reason}"]
    row = {row["path"]: row for row in read_manifest(tmp_path / "skip")}["a/cut.mp4"]
    assert (row["status"], row["error"], row["row"]) == ("skipped", reason, "")
    assert skipped.prepared == 2
    assert "a/cut.mp4" not in open_split(tmp_path / "skip", "train").paths
    assert skipped.status_counts == {"skipped": 1}


def test_second_run_does_nothing_and_other_settings_are_refused(source, tmp_path):
    out = tmp_path / "store"
    prepare(_config(source, out))
    before = (out / "train.npy").stat().st_mtime_ns
    again = prepare(_config(source, out))
    assert again.already_done and again.prepared == 18
    assert (out / "train.npy").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings"):
        prepare(_config(source, out, frames=5))
    replaced = prepare(_config(source, out, frames=5), overwrite=True)
    assert replaced.prepared == 18
    assert open_split(out, "train").frames.shape[1] == 5


def test_interrupted_run_resumes_without_redoing_finished_clips(source, tmp_path):
    out = tmp_path / "store"
    command = [
        sys.executable, "-m", "nightact.cli", "prepare", str(source), str(out),
        "--frames", "4", "--size", "16x24", "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / ".partial" / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(journal.read_text().splitlines())
    assert 4 <= finished < 18, "the run should have been stopped part way"
    assert not (out / "store.json").exists()
    with pytest.raises(ValueError, match="unfinished"):
        open_split(out, "train")

    resumed = prepare(_config(source, out))
    assert resumed.processed_now == 18 - finished
    fresh = tmp_path / "fresh"
    prepare(_config(source, fresh))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), np.load(fresh / f"{name}.npy"))
    with open(out / "manifest.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 18


# Each job a quarter of a second slower, in the spawned workers too (they import this module by
# name), so that a Ctrl-C lands while most clips are still to do, however fast the machine.
SLOW_JOBS = """
import time
from nightact.data import prepare
real_prepare_one = prepare._prepare_one
def slow_prepare_one(job):
    time.sleep(0.25)
    return real_prepare_one(job)
"""

# `nightact prepare` with the slow jobs, SIGINT handled as a terminal's Ctrl-C: a process started
# in the background by a non-interactive shell inherits SIGINT ignored, and Python then installs
# no KeyboardInterrupt handler. The command notices the Ctrl-C half a second late, as one busy
# writing a row would, which leaves any worker that reacts to it the time to show it.
INTERRUPTIBLE_PREPARE = """
import signal, sys, time
def noticed_late(signum, frame):
    time.sleep(0.5)
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, noticed_late)
import slow_jobs
from nightact.data import prepare
prepare._prepare_one = slow_jobs.slow_prepare_one
from nightact.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_prepare_and_its_workers_in_one_line_and_a_rerun_resumes(tmp_path):
    src = _make_source(tmp_path / "src")
    (tmp_path / "slow_jobs.py").write_text(SLOW_JOBS)
    out = tmp_path / "store"
    command = [
        sys.executable, "-c", INTERRUPTIBLE_PREPARE, "prepare", str(src), str(out),
        "--frames", "4", "--size", "16x24", "--workers", "2",
    ]  # fmt: skip
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), str(tmp_path)]),
        "TQDM_DISABLE": "1",  # the progress bar is not what this test reads
    }
    # Its own process group, which a terminal's Ctrl-C reaches whole: the command and workers.
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True
    )
    journal = out / ".partial" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == [
        "nightact prepare: interrupted; run the same command again to go on where it stopped"
    ]
    finished = len(journal.read_text().splitlines())
    assert 2 <= finished < 18, "the run should have been stopped part way"
    # The workers went with the command, and its lock file with its lock.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes outlived the interrupted command")
    assert not (out / ".lock").exists()

    resumed = prepare(_config(src, out))
    assert resumed.processed_now == 18 - finished and resumed.prepared == 18


def test_a_source_file_changed_since_it_was_journaled_is_prepared_again(tmp_path, monkeypatch):
    import nightact.data.prepare as dataset

    src = tmp_path / "src"
    _make_source(src, per_class=3)
    out = tmp_path / "store"
    real_prepare_one = dataset._prepare_one
    calls = []

    def interrupted_after_four(job):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(job[2])
        return real_prepare_one(job)

    monkeypatch.setattr(dataset, "_prepare_one", interrupted_after_four)
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(src, out))
    monkeypatch.setattr(dataset, "_prepare_one", real_prepare_one)
    assert len((out / ".partial" / "journal.jsonl").read_text().splitlines()) == 4

    changed = src / calls[0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    summary = prepare(_config(src, out))
    assert summary.processed_now == 9 - 4 + 1
    assert summary.prepared == 9


def test_preview_writes_a_png_of_the_clip(source, tmp_path):
    out = tmp_path / "store"
    prepare(_config(source, out))
    png = write_preview(out, split="val", index=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 2000
    with pytest.raises(ValueError, match="out of range"):
        write_preview(out, split="val", index=99)
    assert main(["preview", str(out), "--split", "test", "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()


def test_data_commands_never_import_the_deep_learning_stack(tmp_path):
    # A blocker makes any import of these packages fail, as on a machine without them.
    script = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"tensorflow", "keras", "jax", "torch", "sklearn"}}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Blocker())
from nightact.cli import main
assert main(["synth", {str(tmp_path / "videos")!r}, "--videos-per-class", "1",
             "--min-seconds", "1", "--max-seconds", "1.5", "--workers", "1"]) == 0
assert main(["prepare", {str(tmp_path / "videos")!r}, {str(tmp_path / "store")!r},
             "--frames", "3", "--size", "12x16", "--workers", "1"]) == 0
assert main(["preview", {str(tmp_path / "store")!r}]) == 0
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "videos").rglob("*.mp4"))) == 12


def test_candidate_frames_per_segment_are_stored_segment_by_segment(tmp_path):
    from nightact.data.sampling import candidate_indices

    src = tmp_path / "src"
    write_barcode_video(src / "a" / "long.mp4", 40)
    write_barcode_video(src / "a" / "middling.mp4", 6)
    write_barcode_video(src / "b" / "short.mp4", 3)
    settings = dict(frames=4, split=(1.0, 0.0, 0.0), height=64, width=96)
    prepare(_config(src, tmp_path / "store", frames_per_segment=3, **settings))
    info = read_store_info(tmp_path / "store")
    assert info["frames"] == 4 and info["frames_per_segment"] == 3
    train = open_split(tmp_path / "store", "train")
    assert train.frames.shape[1:] == (12, 64, 96, 3) and train.segments == 4
    barcodes = {
        path: [read_barcode(frame) for frame in train.frames[row]]
        for row, path in enumerate(train.paths)
    }
    assert barcodes["a/long.mp4"] == candidate_indices(40, 4, 3).ravel().tolist()
    # 4 to 11 frames: not short, some candidates repeat.
    assert barcodes["a/middling.mp4"] == candidate_indices(6, 4, 3).ravel().tolist()
    # Fewer frames than segments: every frame once, the last repeated, each filling a segment.
    assert barcodes["b/short.mp4"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    statuses = {row["path"]: row["status"] for row in read_manifest(tmp_path / "store")}
    assert statuses == {"a/long.mp4": "ok", "a/middling.mp4": "ok", "b/short.mp4": "short"}


def test_one_frame_per_segment_is_the_store_as_before(tmp_path):
    src = tmp_path / "src"
    write_barcode_video(src / "a" / "long.mp4", 40)
    write_barcode_video(src / "b" / "long.mp4", 23)
    settings = dict(frames=5, split=(1.0, 0.0, 0.0), height=64, width=96)
    prepare(_config(src, tmp_path / "store", **settings))
    train = open_split(tmp_path / "store", "train")
    assert train.frames_per_segment == 1 and train.frames.shape[1] == 5
    for row, total in enumerate([40, 23]):
        expected = [int(i * total / 5) for i in range(5)]
        assert [read_barcode(frame) for frame in train.frames[row]] == expected
    # Nothing new in store.json: a store made before K existed is the same store.
    settings_saved = json.loads((tmp_path / "store" / "store.json").read_text())["settings"]
    assert "frames_per_segment" not in settings_saved
    again = prepare(_config(src, tmp_path / "store", frames_per_segment=1, **settings))
    assert again.already_done


def test_a_test_only_store_can_be_prepared(source, tmp_path):
    summary = prepare(_config(source, tmp_path / "store", split=(0.0, 0.0, 1.0)))
    assert summary.prepared == 18
    assert len(open_split(tmp_path / "store", "train")) == 0
    assert len(open_split(tmp_path / "store", "test")) == 18
    with pytest.raises(ValueError, match="sum to 1"):
        PrepareConfig(src="s", out="o", split=(0.0, 0.0, 0.5))
    with pytest.raises(ValueError, match="frames_per_segment"):
        PrepareConfig(src="s", out="o", frames_per_segment=0)


def test_one_worker_and_two_write_the_same_store(tmp_path, monkeypatch):
    # One worker decodes on FFmpeg's own thread count; two each take half the CPUs, and the
    # parent syncs their rows in batches. None of it may change a byte of the store.
    from nightact.core import workers
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    src = tmp_path / "videos"
    write_synthetic_dataset(
        SynthConfig(src, videos_per_class=1, min_seconds=1, max_seconds=2, size=(96, 128))
    )
    jobs = []
    real_map = workers.map_unordered

    def recording_map(function, given, count=None):
        jobs.extend(given)
        return real_map(function, given, count)

    monkeypatch.setattr(workers, "map_unordered", recording_map)
    stores = {}
    for count in (1, 2):
        stores[count] = tmp_path / f"store-{count}"
        prepare(_config(src, stores[count], frames=6, height=48, width=64, workers=count))
    assert [job.decoder_threads for job in jobs] == [None] * 12 + [
        max(1, (os.cpu_count() or 1) // 2)
    ] * 12
    for name in ("train.npy", "val.npy", "test.npy", "train_labels.npy", "manifest.csv"):
        assert (stores[1] / name).read_bytes() == (stores[2] / name).read_bytes(), name
    assert open_split(stores[1], "train").frames.std() > 10  # textured frames, not flat ones


def _results(*rows):
    return [
        {"path": f"c{index}.mp4", "split": split, "row": index, "status": status}
        for index, (split, status) in enumerate(rows)
    ]


def test_the_journal_lists_a_clip_only_after_its_row_is_synced(tmp_path, monkeypatch):
    import nightact.data.prepare as dataset

    for split in ("train", "val"):
        np.save(tmp_path / f"{split}.npy", np.zeros((4, 2), np.uint8))
    path = tmp_path / "journal.jsonl"
    synced = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(descriptor):
        # What the journal held when the rows were synced.
        synced.append((os.readlink(f"/proc/self/fd/{descriptor}"), path.read_text().count("\n")))
        real_fdatasync(descriptor)

    monkeypatch.setattr(dataset.os, "fdatasync", recording_fdatasync)
    journal = dataset._Journal(path, batch=3, seconds=3600)
    results = _results(("train", "ok"), ("val", "failed"), ("train", "short"), ("val", "ok"))
    assert journal.add(results[0]) == [] and journal.add(results[1]) == []
    assert path.read_text() == "" and synced == []
    assert journal.add(results[2]) == results[:3]
    # The failed clip wrote no row: only train's array is synced, before any line is written.
    assert synced == [(str(tmp_path / "train.npy"), 0)]
    assert [json.loads(line) for line in path.read_text().splitlines()] == results[:3]
    assert journal.add(results[3]) == []
    assert journal.commit() == results[3:]
    assert synced[1:] == [(str(tmp_path / "val.npy"), 3)]
    journal.close()


def test_after_a_failed_sync_the_waiting_clips_are_never_journaled(tmp_path, monkeypatch):
    import errno

    import nightact.data.prepare as dataset

    np.save(tmp_path / "train.npy", np.zeros((4, 2), np.uint8))
    path = tmp_path / "journal.jsonl"

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    journal = dataset._Journal(path, batch=2)
    journal.add(_results(("train", "ok"))[0])
    monkeypatch.setattr(dataset.os, "fdatasync", full_disk)
    with pytest.raises(OSError, match="No space"):
        journal.add(_results(("train", "ok"), ("train", "ok"))[1])
    monkeypatch.undo()
    # Linux may drop the unwritten pages after a failed sync, so a second sync could succeed
    # without the rows: those clips must be done again.
    assert journal.commit_on_error() == [] and journal.commit() == []
    journal.close()
    assert path.read_text() == ""


def test_a_prepare_on_ray_resumes_a_plain_one_into_the_same_bytes(tmp_path, monkeypatch):
    # The decoding moves to Ray tasks (a real local instance of 2 CPUs), the rows are written
    # here as the frames come back: the store must not change by a byte, damaged files and an
    # interrupted run included.
    pytest.importorskip("ray")
    import nightact.data.prepare as dataset

    src = tmp_path / "src"
    _make_source(src, per_class=4)
    good = (src / "boxing" / "clip_00.mp4").read_bytes()
    (src / "boxing" / "text.mp4").write_text("definitely not a video\n")
    (src / "boxing" / "cut.mp4").write_bytes(good[: len(good) // 3])
    write_truncated_mp4(src / "boxing" / "truncated.mp4", count=49)
    plain = tmp_path / "plain"
    prepare(_config(src, plain, workers=2))

    real_prepare_one = dataset._prepare_one
    calls = []

    def interrupted_after_four(job):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(job.path)
        return real_prepare_one(job)

    out = tmp_path / "ray"
    monkeypatch.setattr(dataset, "_prepare_one", interrupted_after_four)
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(src, out))
    monkeypatch.setattr(dataset, "_prepare_one", real_prepare_one)
    # Back in the command line's hands: its own Ray instance, of 2 CPUs.
    assert main(["prepare", str(src), str(out), "--frames", "4", "--size", "16x24",
                 "--ray", "--workers", "2"]) == 0  # fmt: skip
    rows = {row["path"]: row for row in read_manifest(out)}
    assert [rows[path]["status"] for path in ("boxing/text.mp4", "boxing/cut.mp4")] == [
        "failed",
        "failed",
    ]
    assert rows["boxing/truncated.mp4"]["status"] == "truncated"
    names = ("train.npy", "val.npy", "test.npy", "train_labels.npy", "manifest.csv")
    for name in (*names, "store.json", "classes.json"):
        assert (plain / name).read_bytes() == (out / name).read_bytes(), name
    assert json.loads((out / "prepare_config.json").read_text())["ray"] == "local"
