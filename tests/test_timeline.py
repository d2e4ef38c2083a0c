"""nightact.serve.timeline on real videos: joined synthetic actions, barcodes, live streams."""

from __future__ import annotations

import csv
import dataclasses
import http.server
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import (
    cut_file,
    decodable_frames,
    read_barcode,
    remux_mp4,
    write_barcode_video,
    write_truncated_mp4,
)
from nightact.core.videos import VideoError, count_frames, read_clip, sample_indices, write_video
from nightact.serve.timeline import (
    UNCERTAIN,
    TimelineConfig,
    WindowSampler,
    _FrameSource,
    is_live_source,
    load_engine,
    run_timeline,
    timeline,
    training_clip_seconds,
)
from trained_run import CLASSES, FRAMES, HEIGHT, WIDTH, tiny_run, trained_run, write_long_video

SRC = Path(__file__).resolve().parents[1] / "src"

# Nine actions, each two fresh clips long (about 2.4-4 s).
SEGMENTS = [
    ("Run", 2),
    ("stand", 2),
    ("walking with flashlight", 2),
    ("stand", 2),
    ("Run", 2),
    ("walking with flashlight", 2),
    ("Run", 2),
    ("walking with flashlight", 2),
    ("stand", 2),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model that learned three actions (about a minute to train): for the slow tests."""
    return trained_run(tmp_path_factory.getbasetemp() / "trained-run")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An untrained model as a run folder, made in seconds: for everything but learning."""
    return tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "night.mp4"
    return path, write_long_video(path, SEGMENTS)


@pytest.fixture(scope="module")
def live_video(tmp_path_factory):
    """A 5-7 s MPEG-TS file, the container live cameras stream."""
    path = tmp_path_factory.mktemp("live") / "camera.ts"
    return path, write_long_video(
        path, [("walking with flashlight", 1), ("Run", 2), ("stand", 1)], 200
    )


@pytest.fixture(scope="module")
def onnx_model(run, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from trained_run import export_onnx

    return export_onnx(run, tmp_path_factory.mktemp("onnx") / "model.onnx")


def agreement(rows: list[dict], truth: list, step: float = 0.05) -> float:
    """Share of the video's time where the window centred nearest says the true class."""
    centres = np.array([(row["start"] + row["end"]) / 2 for row in rows])
    times = np.arange(0.0, truth[-1][1], step)
    hits = []
    for moment in times:
        true_class = next(name for start, end, name in truth if start <= moment < end)
        hits.append(rows[int(np.argmin(np.abs(centres - moment)))]["label"] == true_class)
    return float(np.mean(hits))


def read_json(out: Path) -> dict:
    return json.loads((out / "timeline.json").read_text())


# --- windows, without a model ------------------------------------------------------------------


def test_windows_sample_each_window_like_prepare_from_one_decode(tmp_path):
    video = write_barcode_video(tmp_path / "barcode.mp4", 120, fps=25)
    source = _FrameSource(str(video), live=False, reconnects=0)
    sampler = WindowSampler(1.0, 0.5, 8, 64, 96, allow_short=True)
    windows, largest_buffer = [], 0
    for frame in source.frames():
        windows += sampler.push(frame)
        largest_buffer = max(largest_buffer, len(sampler.buffer))
    windows += sampler.finish(1 / 25)

    # Independently: frame i is shown at i/25 s; window k holds the frames in [k/2, k/2 + 1).
    times = np.arange(120) / 25
    # The last window ends with the last frame (at 4.8 s) and spans a whole window.
    assert [window.start for window in windows[:-1]] == [k * 0.5 for k in range(len(windows) - 1)]
    assert windows[-2].end == 4.5
    assert (windows[-1].start, windows[-1].end) == pytest.approx((3.8, 4.8))
    for window in windows:
        inside = np.flatnonzero((times >= window.start - 1e-9) & (times < window.end - 1e-9))
        expected = [int(inside[i]) for i in sample_indices(len(inside), 8)]
        assert window.frame_numbers == expected
        assert [read_barcode(picture) for picture in window.clip] == expected
    # Every frame decoded once, though each lies in two windows; memory held about one window.
    assert source.decoded == 120 == count_frames(video)
    assert largest_buffer <= 25 + 2


def test_a_window_as_long_as_the_video_gives_the_clip_prepare_makes(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (30, 48, 80, 3), dtype=np.uint8)  # 1.2 s, wider than 4:3
    video = write_video(tmp_path / "clip.mp4", frames, fps=25)
    sampler = WindowSampler(2.0, 1.0, FRAMES, HEIGHT, WIDTH, allow_short=True)
    windows = []
    for frame in _FrameSource(str(video), False, 0).frames():
        windows += sampler.push(frame)
    windows += sampler.finish(1 / 25)
    assert len(windows) == 1
    prepared = read_clip(video, FRAMES, HEIGHT, WIDTH)
    assert windows[0].frame_numbers == prepared.indices
    assert np.array_equal(windows[0].clip, prepared.frames)


def test_live_sources_are_recognised(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert is_live_source("rtsp://camera/stream") and is_live_source("http://host/a.ts")
    assert is_live_source("/dev/video0") and is_live_source(str(pipe))
    assert not is_live_source(str(tmp_path)) and not is_live_source("file:///a.mp4")


# --- timelines with a trained model ------------------------------------------------------------


@pytest.mark.slow
def test_the_timeline_follows_the_actions_of_a_long_video(trained, long_video, tmp_path):
    video, truth = long_video
    out = tmp_path / "out"
    [result] = timeline(trained, video, out, progress=False)

    window = training_clip_seconds(trained)
    assert 1.0 < window < 2.2  # the training clips' median length, the default window
    document = read_json(out)
    rows = document["windows"]
    assert document["settings"]["window"] == window
    assert document["settings"]["stride"] == window / 2
    # Seen: 0.79 of the 30 s (windows straddling a change of action are often wrong).
    score = agreement(rows, truth)
    assert score >= 0.7, [(row["start"], row["label"]) for row in rows]
    assert result.decoded_frames == count_frames(video)


def test_every_frame_is_decoded_once_and_every_file_is_written(run, long_video, tmp_path):
    video, truth = long_video
    out = tmp_path / "out"
    [result] = timeline(run, video, out, progress=False)
    document = read_json(out)
    rows = document["windows"]
    window = document["settings"]["window"]
    assert window == 2.0 and document["settings"]["stride"] == 1.0  # no store: the fallback

    # Single decode: every frame once, while each lies in two windows.
    assert result.decoded_frames == count_frames(video)
    assert result.windows == len(rows) >= truth[-1][1] / (window / 2) - 2
    assert result.stopped == "end of stream" and result.realtime_factor > 0

    with open(out / "timeline.csv", newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == [
        "start", "end", "label", "probability", "top1", "top1_probability", "top2",
        "top2_probability", "top3", "top3_probability",
    ]  # fmt: skip
    assert len(lines) == len(rows) + 1
    for line, row in zip(lines[1:], rows, strict=True):
        assert line[2] == row["label"] == line[4] and set(line[4::2]) == set(CLASSES)
        probabilities = [float(value) for value in line[5::2]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert float(line[3]) == pytest.approx(max(row["probabilities"]), abs=1e-4)
    config = json.loads((out / "timeline_config.json").read_text())
    assert config["window"] == window and config["model"] == str(run)
    assert rows[-1]["end"] == pytest.approx(truth[-1][1], abs=0.05)

    from PIL import Image

    with Image.open(out / "timeline.png") as image:
        assert image.size[0] > 1000 and image.size[1] > 150


def test_smoothing_averages_the_last_windows_and_min_prob_says_uncertain(run, long_video, tmp_path):
    video, _ = long_video
    settings = {"window": 1.5, "stride": 1.0, "smooth": 3, "progress": False}
    timeline(run, video, tmp_path / "first", **settings)
    # A threshold between the windows' probabilities, so both branches are taken.
    threshold = float(
        np.median([row["probability"] for row in read_json(tmp_path / "first")["windows"]])
    )
    timeline(run, video, tmp_path / "second", min_prob=threshold, **settings)
    rows = read_json(tmp_path / "second")["windows"]
    raw = np.array([row["raw_probabilities"] for row in rows])
    for index, row in enumerate(rows):
        expected = raw[max(0, index - 2) : index + 1].mean(axis=0)
        assert np.allclose(row["probabilities"], expected, atol=1e-6)
        best = int(np.argmax(expected))
        label = CLASSES[best] if expected[best] >= threshold else UNCERTAIN
        assert row["label"] == label
    assert [row["start"] for row in rows[:3]] == [0.0, 1.0, 2.0]
    labels = {row["label"] for row in rows}
    assert UNCERTAIN in labels and labels - {UNCERTAIN}


def test_the_annotated_video_shows_the_label_on_every_frame(run, live_video, tmp_path):
    video, _ = live_video
    [result] = timeline(run, video, tmp_path, annotate=True, progress=False)
    annotated = tmp_path / "annotated.mp4"
    assert count_frames(annotated) == result.decoded_frames == count_frames(video)
    with av.open(str(annotated)) as written, av.open(str(video)) as original:
        last_written = list(written.decode(video=0))[-1].to_ndarray(format="rgb24")
        last_original = list(original.decode(video=0))[-1].to_ndarray(format="rgb24")
    assert last_written.shape == last_original.shape

    def yellow(picture):  # the label's colour; night footage has none
        red, green, blue = (picture[..., channel].astype(int) for channel in range(3))
        return (red > 180) & (green > 180) & (blue < 90)

    assert yellow(last_written[:20]).sum() > 5 and yellow(last_original).sum() == 0
    assert yellow(last_written[25:]).sum() == 0  # only the label strip at the top changed


def test_the_onnx_engine_gives_the_keras_timeline(run, onnx_model, long_video, tmp_path):
    video, _ = long_video
    timeline(run, video, tmp_path / "keras", progress=False)
    timeline(onnx_model, video, tmp_path / "onnx", engine="onnx", progress=False)
    keras_rows = read_json(tmp_path / "keras")["windows"]
    onnx_rows = read_json(tmp_path / "onnx")["windows"]
    assert [row["start"] for row in onnx_rows] == [row["start"] for row in keras_rows]
    assert [row["label"] for row in onnx_rows] == [row["label"] for row in keras_rows]
    difference = np.abs(
        np.array([row["raw_probabilities"] for row in onnx_rows])
        - np.array([row["raw_probabilities"] for row in keras_rows])
    )
    assert difference.max() <= 1e-4


def test_too_few_frames_in_a_window_is_said_clearly(run, tmp_path, caplog):
    # 4 frames per second: a 1.4 s window holds 5-6 frames, fewer than the model's 8.
    frames = np.random.default_rng(1).integers(0, 256, (16, 48, 64, 3), dtype=np.uint8)
    video = write_video(tmp_path / "slow.mp4", frames, fps=4)
    predictor = load_engine(run)
    config = TimelineConfig(str(run), str(video), str(tmp_path / "pad"), window=1.4)
    with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
        [padded] = run_timeline(config, predictor, progress=False)
    assert padded.windows > 0 and all(
        row["short"] for row in read_json(tmp_path / "pad")["windows"]
    )
    assert "fewer than the model's 8; the last is repeated" in caplog.text

    strict = dataclasses.replace(predictor, allow_short=False)
    config = dataclasses.replace(config, out=str(tmp_path / "skip"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
        [skipped] = run_timeline(config, strict, progress=False)
    assert skipped.windows == 0 and skipped.skipped == padded.windows
    reasons = {window["reason"] for window in read_json(tmp_path / "skip")["skipped_windows"]}
    assert all("fewer than the model's 8" in reason for reason in reasons)
    assert "slow.mp4: window 0.0-1.4 s skipped: 6 frames, fewer than the model's 8" in caplog.text


def test_a_truncated_file_is_warned_about_in_one_line(run, tmp_path, caplog):
    cut = write_truncated_mp4(tmp_path / "cut.mp4", count=49)
    decoded = decodable_frames(cut)
    note = f"truncated: only {decoded} of the 49 frames its index promises decode"
    predictor = load_engine(run)
    config = TimelineConfig(str(run), str(cut), str(tmp_path / "cut"), window=0.4)
    with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
        [result] = run_timeline(config, predictor, progress=False)
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"{cut}: {note}")
    assert warning.endswith(f"; the timeline ends at {result.media_seconds:.1f} s")
    assert result.warning.startswith(note) and result.windows > 0
    assert read_json(tmp_path / "cut")["result"]["warning"] == result.warning

    # Whole files, and one whose edit list hides 5 frames, are read without a word.
    whole = write_barcode_video(tmp_path / "whole.mp4", 49)
    trimmed = remux_mp4(whole, tmp_path / "trimmed.mp4", trim_frames=5)
    caplog.clear()
    for video in (whole, trimmed):
        config = dataclasses.replace(config, source=str(video), out=str(tmp_path / video.stem))
        with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
            [result] = run_timeline(config, predictor, progress=False)
        assert result.warning is None and result.windows > 0
    assert result.decoded_frames == 44
    assert caplog.records == []

    # A Matroska header counts no frames: a cut one promises nothing and is not called truncated.
    cut_mkv = cut_file(write_barcode_video(tmp_path / "cut.mkv", 60))
    config = dataclasses.replace(config, source=str(cut_mkv), out=str(tmp_path / "mkv"))
    with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
        [result] = run_timeline(config, predictor, progress=False)
    assert 0 < result.decoded_frames < 60 and result.windows > 0
    assert "truncated" not in (result.warning or "")
    assert len(caplog.records) <= 1  # at most the decoder's error, once


def test_a_missing_or_broken_file_names_the_file_and_leaves_nothing(run, tmp_path):
    with pytest.raises(VideoError, match=r"absent\.mp4: file not found"):
        timeline(run, tmp_path / "absent.mp4", tmp_path / "new" / "out", progress=False)
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("the user's")
    with pytest.raises(VideoError, match=r"text\.mp4: not a readable video"):
        timeline(run, tmp_path / "text.mp4", tmp_path / "kept", progress=False)
    # No empty timeline, no folder made for it; a folder that was there keeps only its own.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept", "text.mp4"]
    assert [path.name for path in (tmp_path / "kept").iterdir()] == ["notes.txt"]


def test_a_run_that_fails_part_way_leaves_no_file(run, long_video, tmp_path):
    video, _ = long_video
    predictor = load_engine(run)
    calls = []

    class BreaksOnTheThirdBatch:
        def predict_on_batch(self, clips):
            calls.append(len(clips))
            if len(calls) == 3:
                raise RuntimeError("the accelerator went away")
            return predictor.model.predict_on_batch(clips)

    broken = dataclasses.replace(predictor, model=BreaksOnTheThirdBatch())
    config = TimelineConfig(str(run), str(video), str(tmp_path / "out"), batch_size=1)
    with pytest.raises(RuntimeError, match="went away"):
        run_timeline(config, broken, progress=False)
    # Two rows had been written to the CSV before the failure; none of it stays.
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_a_folder_gets_one_timeline_per_video(run, tmp_path):
    folder = tmp_path / "videos"
    write_long_video(folder / "a.mp4", [("Run", 1)])
    # A copy, not a second encode: at this tiny size (48x64) x264 may encode the same frames a
    # little differently after other work in the process (tests/test_videos.py says more).
    (folder / "night").mkdir()
    shutil.copyfile(folder / "a.mp4", folder / "night" / "b.mp4")
    (folder / "notes.txt").write_text("not a video")
    (folder / "broken" / "c.mp4").parent.mkdir()
    (folder / "broken" / "c.mp4").write_text("not a video either")
    results = timeline(run, folder, tmp_path / "out", progress=False)
    assert [Path(result.out).relative_to(tmp_path / "out") for result in results] == [
        Path("a"),
        Path("broken/c"),
        Path("night/b"),
    ]
    first, broken, second = results
    assert first.windows >= 1
    windows = [read_json(Path(result.out))["windows"] for result in (first, second)]
    assert len(windows[0]) == len(windows[1])
    assert windows[0] == windows[1]  # the same file twice: the same timeline
    assert (tmp_path / "out" / "night" / "b" / "timeline.png").is_file()
    # The broken video is reported, and leaves no folder of empty files.
    assert broken.windows == 0 and "not a readable video" in broken.error
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a", "night"]


# --- live sources ------------------------------------------------------------------------------


class _StreamServer:
    """Serves one file over HTTP on 127.0.0.1, ``times`` times, optionally paced to a rate."""

    def __init__(self, path: Path, times: int = 1, seconds: float | None = None):
        self.data = path.read_bytes()
        self.remaining = times
        # Bytes per second that make the file last `seconds`: a camera sending in real time.
        rate = len(self.data) / seconds if seconds else None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if server.remaining <= 0:
                    self.send_error(404)
                    return
                server.remaining -= 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(server.data)))
                self.end_headers()
                chunk = 4096
                started = time.monotonic()
                try:
                    for offset in range(0, len(server.data), chunk):
                        self.wfile.write(server.data[offset : offset + chunk])
                        if rate:
                            delay = started + (offset + chunk) / rate - time.monotonic()
                            if delay > 0:
                                time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.name}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_an_http_stream_stands_in_for_rtsp_and_reconnects_before_stopping(
    run, live_video, tmp_path, caplog
):
    video, truth = live_video
    timeline(run, video, tmp_path / "file", progress=False)
    with _StreamServer(video, times=2) as server, caplog.at_level(logging.INFO):
        [result] = timeline(run, server.url, tmp_path / "live", reconnects=2, progress=False)
    # Played twice (one reconnect succeeded), then two failed reconnects: stopped, files written.
    assert result.stopped.startswith("stream lost")
    assert result.decoded_frames == 2 * count_frames(video)
    assert "stream stopped; reconnecting" in caplog.text
    file_rows = read_json(tmp_path / "file")["windows"]
    live_rows = read_json(tmp_path / "live")["windows"]
    # The first play gives the file's windows, labelled the same. (Windows can be dropped when
    # this busy machine predicts slower than real time: compare those both have.)
    file_labels = {row["start"]: row["label"] for row in file_rows[:-1]}
    first_play = {r["start"]: r["label"] for r in live_rows if r["end"] <= truth[-1][1] - 1e-6}
    common = set(file_labels) & set(first_play)
    assert len(common) >= len(file_labels) / 2
    assert all(file_labels[start] == first_play[start] for start in common)
    assert len(live_rows) > len(file_rows) + 3  # the second play continues the timeline
    assert live_rows[-1]["start"] > truth[-1][1]
    assert f"{live_rows[0]['start']:8.1f}-" in caplog.text
    assert (tmp_path / "live" / "timeline.png").is_file()


def test_a_live_source_slower_than_real_time_drops_windows_and_says_so(
    run, live_video, tmp_path, caplog
):
    video, _ = live_video
    predictor = load_engine(run)

    class SlowBox:
        """The real model on hardware 4x too slow: each window takes longer than a stride."""

        def predict_on_batch(self, clips):
            time.sleep(1.0)
            return predictor.model.predict_on_batch(clips)

    slow = dataclasses.replace(predictor, model=SlowBox())
    with _StreamServer(video, times=1, seconds=6.0) as server:
        config = TimelineConfig(
            str(run), server.url, str(tmp_path), window=1.0, stride=0.5, reconnects=0
        )
        with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
            [result] = run_timeline(config, slow, progress=False)
    assert result.dropped > 0 and result.windows > 0
    assert "dropped: inference is" in caplog.text and "behind real time" in caplog.text
    document = read_json(tmp_path)
    assert sum(w["reason"] == "dropped" for w in document["skipped_windows"]) == result.dropped
    # Kept up: nothing predicted for a window that ended more than ~a stride before its turn.
    assert result.wall_seconds < 6.0 + 4.0


def test_ctrl_c_stops_a_live_timeline_with_its_files_written(onnx_model, tmp_path):
    # FFmpeg probes the first ~5 s of a stream before it returns a frame, so a 5-7 s stream
    # left the Ctrl-C only the last second or two to land in: a stream four times as long
    # leaves it most of the stream, however slowly the machine starts the process.
    video = tmp_path / "camera.ts"
    write_long_video(video, [("walking with flashlight", 4), ("Run", 4), ("stand", 4)], 300)
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import logging, signal, sys
        # Ctrl-C as a terminal delivers it: a process started in the background by a
        # non-interactive shell (CI, `make test &`) inherits SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logging.basicConfig(level=logging.INFO)
        from nightact.serve.timeline import timeline
        [result] = timeline({str(onnx_model)!r}, sys.argv[1], {str(out)!r}, reconnects=0)
        print("STOPPED", result.stopped, result.windows)
        """
    )
    with _StreamServer(video, times=1, seconds=60.0) as server:
        process = subprocess.Popen(
            [sys.executable, "-c", script, server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        # The rows come as they are predicted, under the partial name until the run ends.
        rows = out / ".timeline.partial.csv"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if rows.is_file() and len(rows.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert not (out / "timeline.csv").exists()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "STOPPED interrupted" in stdout
    document = read_json(out)
    assert document["result"]["stopped"] == "interrupted"
    assert len(document["windows"]) >= 1
    assert document["windows"][-1]["end"] < 15.0  # stopped well before the stream's end
    assert len((out / "timeline.csv").read_text().splitlines()) == len(document["windows"]) + 1
    assert sorted(path.name for path in out.iterdir()) == [
        "timeline.csv",
        "timeline.json",
        "timeline.png",
        "timeline_config.json",
    ]


def test_a_stream_that_never_opens_stops_after_bounded_retries(run, tmp_path, caplog):
    with _StreamServer(Path(__file__), times=0) as server:
        url = server.url
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nightact.serve.timeline"):
        [result] = timeline(run, url, tmp_path / "live", reconnects=2, progress=False)
    # Two waits, 0.5 s then 1 s, then it gives up.
    assert 1.4 < time.monotonic() - started < 30
    assert result.stopped.startswith("stream lost: 2 reconnects failed")
    assert caplog.text.count("retrying in") == 2
    # Not one frame: no empty timeline, and not the folder made for it.
    assert result.windows == 0 and list(tmp_path.iterdir()) == []


# --- the command line --------------------------------------------------------------------------


def test_the_command_line_writes_a_timeline_and_names_a_bad_source(
    run, live_video, tmp_path, capsys
):
    from nightact import cli

    video, _ = live_video
    out = tmp_path / "out"
    code = cli.main(["timeline", str(run), str(video), "--out", str(out), "--smooth", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    document = read_json(out)
    assert f"{out}: {len(document['windows'])} windows (0 skipped, 0 dropped)" in printed
    assert document["settings"]["smooth"] == 2 and document["settings"]["engine"] == "keras"

    code = cli.main(["timeline", str(run), str(tmp_path / "absent.mp4"), "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 1
    assert error.strip() == f"nightact timeline: error: {tmp_path / 'absent.mp4'}: file not found"
