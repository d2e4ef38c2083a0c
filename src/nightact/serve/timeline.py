"""Slide a window over a long video or a live stream and say which action happens when.

``timeline(RUN, "night.mp4", "out")`` decodes the source once, front to back, and cuts it into
windows of ``window`` seconds every ``stride`` seconds. Each window becomes one clip exactly as
``prepare`` makes clips: the window's frames are counted, N of them are picked with the same rule
(:func:`nightact.core.videos.sample_indices`) and letterboxed by the same function, so a window that
spans a whole training-length video gives the very clip ``prepare`` stores. Frames are kept
decoded (not converted) only while a window still needs them: memory holds one window of frames
plus one batch of clips, whatever the length of the video. Writes::

    OUT/
      timeline_config.json  the TimelineConfig, with the window and stride actually used
      timeline.csv          one row per predicted window, written as it comes:
                            start, end (seconds from the first frame), label, probability,
                            top1, top1_probability, ..., topK, topK_probability
      timeline.json         settings, class names, every window (smoothed and raw
                            probabilities), skipped and dropped windows, why it stopped, and
                            a warning for a damaged file (fewer frames than its index promises)
      timeline.png          time on x, one row per class, probability as colour, label on top
      annotated.mp4         with annotate=True: every frame with the current label drawn on it

Each file is written under a hidden partial name (``.timeline.partial.csv`` takes the rows as
they come, so a live run can be followed there) and all are renamed into place together at the
end: a run that fails, or a source that never gives a frame, leaves no file and no folder it made.
A folder as SOURCE gives one such OUT/<video path without suffix>/ per video inside it.

Live sources (``rtsp://``, ``http://`` ... URLs, ``/dev/video*``, a named pipe) are read as they
come: one log line per window; when inference falls more than one stride behind real time, whole
windows are dropped (decoded but not predicted) until it catches up, and each drop is reported; a
stream that stops is reopened with a bounded, doubling backoff, then the run stops with its files
written. Ctrl-C ends any run cleanly with its files written.

The label of a window is the arg-max of the moving average of the last ``smooth`` windows'
probabilities, or ``uncertain`` when that average's best probability is below ``min_prob``. With
``annotate``, each frame shows the label of the last window that ended at or before it (what a
live viewer could know at that moment), so labels lag the action by up to one window.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import stat
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from nightact.core import extras, files, runs
from nightact.core.store import STORED_STATUSES, read_manifest
from nightact.core.videos import (
    VideoError,
    find_videos,
    frame_to_picture,
    is_truncated,
    open_video,
    promised_frames,
    sample_indices,
    truncation_note,
)
from nightact.nets import gpu
from nightact.serve.predict import load_predictor
from nightact.serve.predictor import engine_of

__all__ = [
    "FALLBACK_WINDOW_SECONDS",
    "UNCERTAIN",
    "TimelineConfig",
    "TimelineResult",
    "Window",
    "WindowSampler",
    "default_window_seconds",
    "draw_timeline",
    "is_live_source",
    "load_engine",
    "partial_name",
    "run_timeline",
    "timeline",
    "training_clip_seconds",
]

log = logging.getLogger(__name__)

# Used when the run's training clips cannot be found (a bare .keras file, an ONNX file exported
# without its store, a moved store): about one action in NoctAct-HAR's shorter clips and in the
# demo's synthetic ones (1-2.5 s).
FALLBACK_WINDOW_SECONDS = 2.0
UNCERTAIN = "uncertain"
# Live sources: consecutive failed reopen attempts before giving up, and the longest wait.
DEFAULT_RECONNECTS = 5
MAX_BACKOFF_SECONDS = 8.0
FIRST_BACKOFF_SECONDS = 0.5
CONFIG_NAME = "timeline_config.json"


@dataclass
class TimelineConfig:
    """Everything that decides a timeline; saved as OUT/timeline_config.json."""

    model: str  # run folder, .keras file or .onnx file
    source: str  # video file, folder of videos, URL or device
    out: str  # output folder
    window: float | None = None  # seconds; None: median training clip, else the fallback
    stride: float | None = None  # seconds; None: half the window
    smooth: int = 1  # moving average over this many windows (1: none)
    min_prob: float = 0.0  # below this smoothed probability the label is "uncertain"
    annotate: bool = False  # also write annotated.mp4
    top_k: int = 3
    engine: str | None = None  # inference.ENGINES; None: "onnx" for a .onnx file, else "keras"
    batch_size: int = 16  # windows per model call for files; live sources use 1
    live: bool | None = None  # None: URLs, devices and pipes are live, files are not
    reconnects: int = DEFAULT_RECONNECTS  # live: reopen attempts in a row before stopping

    def __post_init__(self):
        self.model, self.source, self.out = str(self.model), str(self.source), str(self.out)
        if self.window is not None and not self.window > 0:
            raise ValueError(f"window must be positive seconds, got {self.window}")
        if self.stride is not None and not self.stride > 0:
            raise ValueError(f"stride must be positive seconds, got {self.stride}")
        if self.smooth < 1:
            raise ValueError(f"smooth must be at least 1 window, got {self.smooth}")
        if not 0.0 <= self.min_prob <= 1.0:
            raise ValueError(f"min_prob must be in [0, 1], got {self.min_prob}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.reconnects < 0:
            raise ValueError(f"reconnects must be 0 or more, got {self.reconnects}")
        self.engine = engine_of(self.model, self.engine)


@dataclass
class Window:
    """One window of the stream, sampled into a clip."""

    index: int
    start: float  # seconds from the first frame
    end: float
    frame_count: int  # frames decoded inside the window
    frame_numbers: list[int] = field(default_factory=list)  # stream frame numbers sampled
    clip: np.ndarray | None = None  # (N, height, width, 3) uint8; None when skipped
    short: bool = False  # fewer frames than N: the last one repeated, as prepare does
    skipped: str | None = None  # why the window was not predicted


@dataclass
class TimelineResult:
    """What one source's timeline produced."""

    source: str
    out: str
    windows: int = 0  # predicted
    skipped: int = 0  # too few frames
    dropped: int = 0  # live: slower than real time
    decoded_frames: int = 0  # every frame the decoder gave, once
    media_seconds: float = 0.0
    wall_seconds: float = 0.0
    stopped: str = "end of stream"  # or "interrupted", "stream lost: ..."
    error: str | None = None
    # A damaged file, read to its end: fewer frames decode than its index promises, or the
    # decoder stopped at an error. The timeline ends where the frames do.
    warning: str | None = None

    @property
    def realtime_factor(self) -> float:
        return self.media_seconds / self.wall_seconds if self.wall_seconds else 0.0


def timeline(
    model,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    window: float | None = None,
    stride: float | None = None,
    smooth: int = 1,
    min_prob: float = 0.0,
    annotate: bool = False,
    top_k: int = 3,
    engine: str | None = None,
    batch_size: int = 16,
    live: bool | None = None,
    reconnects: int = DEFAULT_RECONNECTS,
    progress: bool = True,
) -> list[TimelineResult]:
    """Timeline of ``source`` with ``model`` (run folder, ``.keras`` or ``.onnx``) into ``out``.

    Returns one :class:`TimelineResult` per video (one for a file or a stream, one per video
    for a folder). See the module docstring for what is written; :class:`TimelineConfig` for
    the settings.
    """
    config = TimelineConfig(
        str(model), str(source), str(out), window, stride, smooth, min_prob, annotate, top_k,
        engine, batch_size, live, reconnects,
    )  # fmt: skip
    return run_timeline(config, progress=progress)


def run_timeline(config: TimelineConfig, predictor=None, progress: bool = True):
    """Run a :class:`TimelineConfig`; ``predictor`` reuses an already loaded model."""
    if config.annotate:
        _require_pillow()
    if predictor is None:
        predictor = load_engine(config.model, config.engine)
    gpu.warn_if_gpu_unused()  # Keras' engine only: the ONNX engine never loads Keras
    window = config.window or default_window_seconds(config.model, predictor)
    stride = config.stride or window / 2
    resolved = dataclasses.replace(config, window=window, stride=stride)
    log.info("window %.2f s, stride %.2f s", window, stride)
    results = []
    for source, out, live in _sources(resolved):
        created = files.make_folders(out)
        try:
            results.append(_SourceRun(resolved, predictor, source, out, live, progress).run())
        finally:
            # A source that left no files leaves no folder made for it either.
            files.remove_empty_folders(created)
    return results


def load_engine(model, engine: str | None = None):
    """A :class:`nightact.serve.predictor.Predictor` over Keras or ONNX Runtime."""
    return load_predictor(model, engine=engine)


def default_window_seconds(model, predictor=None) -> float:
    """Median training clip duration of the run, the ONNX metadata's, or the fallback."""
    seconds = None
    metadata = getattr(getattr(predictor, "model", None), "metadata", None)
    if isinstance(metadata, dict):
        seconds = metadata.get("window_seconds")
    if seconds is None and isinstance(model, (str, os.PathLike)):
        seconds = training_clip_seconds(model)
    if seconds is None:
        log.info("training clip durations not found: window of %.1f s", FALLBACK_WINDOW_SECONDS)
        return FALLBACK_WINDOW_SECONDS
    return float(seconds)


def training_clip_seconds(run: str | os.PathLike) -> float | None:
    """Median duration of the clips a run trained on, from its store's manifest (frames / fps).

    ``run`` is a run folder or a file inside one; None when the store or its manifest is gone.
    """
    run = runs.run_of(run)
    store = runs.training_store(run) if run else None
    if store is None:
        return None
    durations = []
    for row in read_manifest(store):
        if row["split"] != "train" or row["status"] not in STORED_STATUSES:
            continue
        try:
            frames, fps = float(row["decoded_frames"]), float(row["fps"])
        except ValueError:
            continue
        if frames > 0 and fps > 0:
            durations.append(frames / fps)
    return statistics.median(durations) if durations else None


def is_live_source(source: str) -> bool:
    """URLs (other than file://), V4L2 devices and named pipes are live; files are not."""
    if "://" in source:
        return not source.startswith("file://")
    if source.startswith("/dev/video"):
        return True
    try:
        return stat.S_ISFIFO(os.stat(source).st_mode)
    except OSError:
        return False


def _sources(config: TimelineConfig) -> Iterator[tuple[str, Path, bool]]:
    out = Path(config.out)
    live = is_live_source(config.source) if config.live is None else config.live
    path = Path(config.source)
    if live or not path.is_dir():
        yield config.source, out, live
        return
    videos = find_videos(path)
    if not videos:
        raise FileNotFoundError(f"{path}: no video files in this folder")
    for video in videos:
        yield str(video), out / video.relative_to(path).with_suffix(""), False


# --- reading frames ----------------------------------------------------------------------------


@dataclass
class _Frame:
    number: int  # in decode (presentation) order, over the whole run
    time: float  # seconds from the first frame
    frame: av.VideoFrame
    pixel_aspect: Fraction


class _FrameSource:
    """Every frame of a file or stream once, with times; reopens a live stream that stops."""

    def __init__(self, source: str, live: bool, reconnects: int):
        self.source = source
        self.live = live
        self.reconnects = reconnects
        self.decoded = 0
        self.fps = 0.0
        self.size = (0, 0)  # (height, width) of the first frame
        self.duration: float | None = None  # files: from the container, for the progress bar
        self.header_frames = 0  # files: the frame count in the container's header
        self.decode_error: str | None = None  # files: why decoding stopped before the end
        self.stopped = "end of stream"
        self._offset = 0.0  # added to this connection's times so they continue the last one's
        self._last_time = -math.inf

    def open_video(self):
        if not self.live:
            return open_video(Path(self.source))
        options = {"format": "v4l2"} if self.source.startswith("/dev/video") else {}
        container = av.open(self.source, timeout=(10.0, 10.0), **options)
        if not container.streams.video:
            container.close()
            raise VideoError(self.source, "no video stream")
        return container

    def frames(self) -> Iterator[_Frame]:
        failures = 0
        lost_at = None
        while True:
            try:
                container = self.open_video()
            except (av.FFmpegError, OSError, VideoError) as error:
                if not self.live:
                    raise  # a file: open_video already names the file and the reason
                failures += 1
                if failures > self.reconnects:
                    self.stopped = f"stream lost: {failures - 1} reconnects failed ({error})"
                    return
                wait = min(FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
                log.warning("%s: cannot open (%s); retrying in %.1f s", self.source, error, wait)
                time.sleep(wait)
                continue
            if lost_at is not None:
                # Time keeps running while the stream is away, so windows after a gap say so.
                self._offset = self._last_time + (time.monotonic() - lost_at)
            count_before = self.decoded
            try:
                yield from self._decode(container)
            finally:
                container.close()
            if not self.live:
                return
            if self.decoded > count_before:
                failures = 0  # the stream came back and delivered: a fresh budget
            lost_at = time.monotonic()
            failures += 1
            if failures > self.reconnects:
                self.stopped = "stream lost: it ended and did not come back"
                return
            wait = min(FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
            log.warning("%s: stream stopped; reconnecting in %.1f s", self.source, wait)
            time.sleep(wait)

    def damage(self) -> str | None:
        """For a file read to its end: why it is damaged, in one line, or None when it is not.

        Truncated when fewer frames decoded than its index promises
        (:func:`nightact.core.videos.is_truncated`), and the decoder's error, if one stopped it.
        """
        if self.live:
            return None
        note = None
        # The header's count is an upper bound of the promise: only a shortfall from it is worth
        # demuxing the file again to subtract edit-list trims.
        if is_truncated(self.decoded, self.header_frames):
            try:
                promised = promised_frames(self.source)
            except VideoError as error:
                log.debug("%s: index not read again: %s", self.source, error.reason)
                promised = 0
            if is_truncated(self.decoded, promised):
                note = f"truncated: {truncation_note(self.decoded, promised)}"
        if self.decode_error is not None:
            note = f"{note} ({self.decode_error})" if note else self.decode_error
        return note

    def _decode(self, container) -> Iterator[_Frame]:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self.fps = self.fps or float(stream.average_rate or stream.guessed_rate or 0)
        if not self.live and stream.duration and stream.time_base:
            self.duration = float(stream.duration * stream.time_base)
        elif not self.live and container.duration:
            self.duration = container.duration / av.time_base
        if not self.live:
            self.header_frames = int(stream.frames or 0)
        pixel_aspect = stream.sample_aspect_ratio or Fraction(1)
        if pixel_aspect <= 0:
            pixel_aspect = Fraction(1)
        first = None
        local = 0
        try:
            for frame in container.decode(stream):
                seconds = frame.time
                if seconds is None:
                    seconds = local / self.fps if self.fps else float(local)
                if first is None:
                    first = seconds
                    if not self.size[0]:
                        self.size = (frame.height, frame.width)
                moment = self._offset + seconds - first
                if moment <= self._last_time:
                    # Out-of-order or repeated timestamps: keep frames in order, a hair apart.
                    moment = self._last_time + 1e-6
                self._last_time = moment
                local += 1
                self.decoded += 1
                yield _Frame(self.decoded - 1, moment, frame, pixel_aspect)
        except av.FFmpegError as error:
            # A damaged tail or a dropped connection: keep what decoded before it. A file's is
            # told once, at its end, with what its index promised (damage()).
            if self.live:
                log.warning("%s: decoding stopped after %d frames: %s", self.source, local, error)
            else:
                self.decode_error = f"decoding stopped after {local} frames: {error}"
            if not self.live and local == 0:
                raise VideoError(self.source, f"no frame could be decoded ({error})") from error
        if not self.live and local == 0:
            raise VideoError(self.source, "no video frames in the file")


# --- cutting windows ---------------------------------------------------------------------------


class WindowSampler:
    """Cut a stream of frames into overlapping windows and sample each like ``prepare``.

    Feed frames in order with :meth:`push`; it returns the windows those frames closed. Call
    :meth:`finish` at the end for the last, partial window. Only frames a window still needs are
    held, and each frame is letterboxed at most once, however many windows sample it.
    """

    def __init__(
        self, window: float, stride: float, frames: int, height: int, width: int, allow_short
    ):
        self.window, self.stride = window, stride
        self.frames, self.height, self.width = frames, height, width
        self.allow_short = allow_short
        self.buffer: collections.deque[_Frame] = collections.deque()
        self.pictures: dict[int, np.ndarray] = {}  # frame number -> letterboxed picture
        self.index = 0  # of the next window to close
        self.closed_until = -math.inf  # end of the last window closed
        self.last_time: float | None = None

    def start(self, index: int) -> float:
        return index * self.stride

    def push(self, frame: _Frame, wanted=lambda window: True) -> list[Window]:
        """Add one frame; return the windows that end at or before it.

        ``wanted(window)`` is asked before a closed window is sampled; when it says no (a live
        source running behind), the window is returned with ``skipped="dropped"`` and its frames
        are never converted.
        """
        if not self.buffer:
            # At the start, or after a gap in a live stream: the first window holding this frame.
            first = math.floor((frame.time - self.window) / self.stride) + 1
            self.index = max(self.index, first)
        closed = []
        while frame.time >= self.start(self.index) + self.window:
            closed.append(self._close(wanted))
        self.buffer.append(frame)
        self.last_time = frame.time
        # Keep what the next window needs, and one window back for the last, end-aligned one.
        keep_from = min(self.start(self.index), frame.time - self.window)
        while self.buffer[0].time < keep_from:
            self.pictures.pop(self.buffer.popleft().number, None)
        return [window for window in closed if window is not None]

    def finish(self, frame_duration: float) -> list[Window]:
        """The last window, ending with the last frame, if frames after the last window remain.

        It spans a whole window where the stream is long enough (so it may overlap the one
        before more than usual), and the whole stream when it is shorter than one window: then
        it samples exactly the frames ``read_clip`` would.
        """
        if self.last_time is None or self.last_time < self.closed_until:
            return []
        end = self.last_time + frame_duration
        start = max(0.0, end - self.window)
        window = self._sample(self.index, start, end, [f for f in self.buffer if f.time >= start])
        self.buffer.clear()
        self.pictures.clear()
        return [window]

    def _close(self, wanted) -> Window | None:
        start = self.start(self.index)
        end = start + self.window
        inside = [frame for frame in self.buffer if start <= frame.time < end]
        window = None
        if inside:
            window = Window(self.index, start, end, len(inside), skipped="dropped")
            if wanted(window):
                window = self._sample(self.index, start, end, inside)
        self.index += 1
        self.closed_until = end
        return window

    def _sample(self, index: int, start: float, end: float, inside: list[_Frame]) -> Window:
        window = Window(index, start, end, len(inside))
        count = len(inside)
        if count == 0:
            window.skipped = "no frames"
            return window
        if count >= self.frames:
            positions = sample_indices(count, self.frames)
        elif self.allow_short:
            # Every frame once, then the last repeated: read_clip's rule for short clips.
            positions = list(range(count)) + [count - 1] * (self.frames - count)
            window.short = True
        else:
            window.skipped = (
                f"{count} frames, fewer than the model's {self.frames} (the run's short-clip "
                "policy is skip)"
            )
            return window
        pictures = []
        for position in positions:
            frame = inside[position]
            if frame.number not in self.pictures:
                self.pictures[frame.number] = frame_to_picture(
                    frame.frame, self.height, self.width, frame.pixel_aspect
                )
            pictures.append(self.pictures[frame.number])
        window.frame_numbers = [inside[position].number for position in positions]
        window.clip = np.stack(pictures)
        return window


# --- running -----------------------------------------------------------------------------------


class _SourceRun:
    """One source's timeline: read its frames, cut windows, predict them in batches, write.

    :meth:`run` does it all once. The steps share what one run holds: the frame source, the
    window sampler, the writer, the windows waiting for a batch, and the live clock.
    """

    def __init__(
        self, config: TimelineConfig, predictor, source: str, out: Path, live: bool, progress
    ):
        self.config = config
        self.predictor = predictor
        self.source = source
        self.out = out
        self.live = live
        self.progress = progress
        self.result = TimelineResult(source, str(out))
        self.frames = _FrameSource(source, live, config.reconnects)
        self.sampler = WindowSampler(
            config.window,
            config.stride,
            predictor.frames,
            predictor.height,
            predictor.width,
            predictor.allow_short,
        )
        # Live: predict each window as it closes. Annotating: a frame needs the label of the
        # window that just closed, so windows cannot wait for a batch either.
        self.batch_size = 1 if live or config.annotate else config.batch_size
        self.writer = _TimelineWriter(config, predictor.class_names, out, source)
        self.annotator: _Annotator | None = None
        self.pending: list[Window] = []
        self.started = time.monotonic()
        # Live: the wall-clock moment that media time 0 corresponds to, set again whenever the
        # source makes us wait for a frame (then we are keeping up with it, by definition). So a
        # source slower than real time (a congested network) never counts as inference lagging.
        self.anchor: float | None = None
        self.bar: tqdm | None = None
        self.warned_short = False

    def run(self) -> TimelineResult:
        """Read the source to its end (or Ctrl-C, or a lost stream) and write every file.

        The files take their real names only once all of them are written. A source that fails,
        or that gives no frame at all (a stream that never opened), leaves none of them: its
        result says why.
        """
        result = self.result
        try:
            self._read_all()
            result.stopped = self.frames.stopped
            result.warning = self.frames.damage()
        except KeyboardInterrupt:
            result.stopped = "interrupted"
            log.warning("%s: interrupted; writing what was computed", self.source)
            # Windows already cut are predicted; the frames of an unfinished window are not.
            try:
                self._flush()
            except KeyboardInterrupt:
                pass
        except VideoError as error:
            result.error = error.reason
            result.stopped = f"error: {error.reason}"
            self._discard()
            if self.live or not Path(self.config.source).is_dir():
                raise
            log.error("%s", error)
            return result
        except BaseException:
            self._discard()
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
        self._summarise()
        if self.frames.decoded:
            self._commit()
        else:
            self._discard()
        return result

    def _read_all(self) -> None:
        """Every frame into the sampler (and the annotated video), then the last window."""
        frames = self.frames
        stream = frames.frames()
        first = True
        while True:
            asked = time.monotonic()
            frame = next(stream, None)
            if frame is None:
                break
            arrived = time.monotonic()
            if self.live and (self.anchor is None or arrived - asked > _waited(frames.fps)):
                self.anchor = arrived - frame.time
            if first:
                first = False
                self._open_outputs()
            self._handle(self.sampler.push(frame, self._keep_up))
            if self.annotator is not None:
                self.annotator.write(frame.frame, self.writer.current_label())
            if self.bar is not None:
                self._show_progress(frame.time)
        duration = 1.0 / frames.fps if frames.fps else 0.0
        self._handle(self.sampler.finish(duration))
        self._flush()

    def _open_outputs(self) -> None:
        """At the first frame, once its rate and size are known: the progress bar, the video."""
        if not self.live and self.progress:
            self.bar = tqdm(total=self.frames.duration, unit="s", desc=Path(self.source).name)
            self.bar.bar_format = "{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}{postfix}]"
        if self.config.annotate:
            self.annotator = _Annotator(
                self.out / "annotated.mp4", self.frames.fps or 25.0, self.frames.size
            )

    def _show_progress(self, media_time: float) -> None:
        self.bar.n = media_time
        elapsed = time.monotonic() - self.started
        self.bar.set_postfix_str(f"{media_time / elapsed:.1f}x real time", refresh=False)
        self.bar.update(0)

    def _keep_up(self, window: Window) -> bool:
        # Live only: a window that ends more than one stride before "now" is too late to show.
        if not self.live or self.anchor is None:
            return True
        behind = (time.monotonic() - self.anchor) - window.end
        if behind > self.config.stride:
            log.warning(
                "%s: window %.1f-%.1f s dropped: inference is %.1f s behind real time",
                self.source,
                window.start,
                window.end,
                behind,
            )
            return False
        return True

    def _handle(self, windows: list[Window]) -> None:
        """Record skipped and dropped windows; queue the others, predicting each full batch."""
        for window in windows:
            if window.skipped is not None:
                self._skip(window)
                continue
            if window.short and not self.warned_short:
                self.warned_short = True
                log.warning(
                    "%s: window %.1f-%.1f s has %d frames, fewer than the model's %d; the last "
                    "is repeated (further short windows are marked in timeline.json)",
                    self.source,
                    window.start,
                    window.end,
                    window.frame_count,
                    self.predictor.frames,
                )
            self.pending.append(window)
            if len(self.pending) >= self.batch_size:
                self._flush()

    def _skip(self, window: Window) -> None:
        self.writer.skip(window)
        if window.skipped == "dropped":
            self.result.dropped += 1
            return
        self.result.skipped += 1
        log.warning(
            "%s: window %.1f-%.1f s skipped: %s",
            self.source,
            window.start,
            window.end,
            window.skipped,
        )

    def _flush(self) -> None:
        """Predict the queued windows in one model call and write their rows."""
        pending = self.pending
        if not pending:
            return
        clips = np.stack([window.clip for window in pending])
        if len(clips) < self.batch_size:
            # One compiled batch shape for Keras; clips are independent, padding changes nothing.
            padding = np.zeros((self.batch_size - len(clips), *clips.shape[1:]), dtype=clips.dtype)
            clips = np.concatenate([clips, padding])
        model = self.predictor.model
        probabilities = np.asarray(model.predict_on_batch(clips), dtype=np.float32)
        for window, vector in zip(pending, probabilities, strict=False):
            row = self.writer.add(window, vector)
            self.result.windows += 1
            if self.live:
                log.info(
                    "%8.1f-%8.1f s  %s  %.0f %%",
                    window.start,
                    window.end,
                    row["label"],
                    100 * row["probability"],
                )
        pending.clear()

    def _summarise(self) -> None:
        """The run's counts and times into its result, and the log."""
        result, frames = self.result, self.frames
        result.decoded_frames = frames.decoded
        result.media_seconds = (self.sampler.last_time or 0.0) + (
            1.0 / frames.fps if frames.fps else 0
        )
        result.wall_seconds = time.monotonic() - self.started
        if result.warning is not None:
            log.warning(
                "%s: %s; the timeline ends at %.1f s",
                self.source,
                result.warning,
                result.media_seconds,
            )
        log.info(
            "%s: %d windows, %d skipped, %d dropped, %.1f s of video at %.1fx real time (%s)",
            self.source,
            result.windows,
            result.skipped,
            result.dropped,
            result.media_seconds,
            result.realtime_factor,
            result.stopped,
        )

    def _commit(self) -> None:
        """Finish every file under its partial name, then rename them all into place."""
        try:
            moves = self.writer.finish(self.result, self.result.media_seconds)
            if self.annotator is not None:
                moves.append(self.annotator.finish())
            config = partial_name(self.out / CONFIG_NAME)
            files.write_json_atomic(config, dataclasses.asdict(self.config))
            moves.append((config, self.out / CONFIG_NAME))
            for partial, final in moves:
                files.replace_atomic(partial, final)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """Remove every partial file of this source: a failed run leaves nothing new."""
        self.writer.discard()
        if self.annotator is not None:
            self.annotator.discard()
        files.remove_partial(partial_name(self.out / CONFIG_NAME))


def partial_name(path: Path) -> Path:
    """Where a timeline file is written until the run is complete: hidden, suffix kept."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _waited(fps: float) -> float:
    """Seconds a read must block to mean "no frame was waiting": half a frame interval."""
    return 0.5 / fps if fps else 0.02


class _TimelineWriter:
    """Smooths, labels and writes the rows; CSV as it goes, JSON and PNG at the end."""

    def __init__(self, config: TimelineConfig, class_names: list[str], out: Path, source: str):
        self.config = config
        self.class_names = list(class_names)
        self.out = out
        self.source = source
        self.top_k = min(config.top_k, len(self.class_names))
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=config.smooth)
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        # Rows are written as they come (a live run can be followed), under the partial name.
        self.paths = [out / name for name in ("timeline.csv", "timeline.json", "timeline.png")]
        rows_file = partial_name(self.paths[0])
        self.handle = open(rows_file, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.csv = csv.writer(self.handle)
        header = ["start", "end", "label", "probability"]
        for rank in range(1, self.top_k + 1):
            header += [f"top{rank}", f"top{rank}_probability"]
        self.csv.writerow(header)
        self.handle.flush()

    def add(self, window: Window, probabilities: np.ndarray) -> dict:
        self.recent.append(probabilities)
        smoothed = np.mean(self.recent, axis=0)
        best = np.argsort(-smoothed, kind="stable")[: self.top_k]
        probability = float(smoothed[best[0]])
        label = self.class_names[best[0]] if probability >= self.config.min_prob else UNCERTAIN
        row = {
            "start": round(window.start, 4),
            "end": round(window.end, 4),
            "label": label,
            "probability": probability,
            "top_k": [[self.class_names[i], float(smoothed[i])] for i in best],
            "probabilities": [float(value) for value in smoothed],
            "raw_probabilities": [float(value) for value in probabilities],
            "frames": window.frame_count,
            "short": window.short,
        }
        self.rows.append(row)
        line = [f"{window.start:.3f}", f"{window.end:.3f}", label, f"{probability:.4f}"]
        for name, value in row["top_k"]:
            line += [name, f"{value:.4f}"]
        self.csv.writerow(line)
        self.handle.flush()
        return row

    def skip(self, window: Window) -> None:
        self.skipped.append(
            {
                "start": round(window.start, 4),
                "end": round(window.end, 4),
                "frames": window.frame_count,
                "reason": window.skipped,
            }
        )

    def current_label(self) -> tuple[str, float] | None:
        return (self.rows[-1]["label"], self.rows[-1]["probability"]) if self.rows else None

    def finish(self, result: TimelineResult, duration: float) -> list[tuple[Path, Path]]:
        """Close the CSV and write the JSON and PNG, all under partial names; return the moves
        (partial, real name) that put them in place."""
        self.handle.close()
        csv_path, json_path, png_path = self.paths
        summary = dataclasses.asdict(result)
        summary["realtime_factor"] = result.realtime_factor
        files.write_json_atomic(
            partial_name(json_path),
            {
                "source": self.source,
                "model": self.config.model,
                "settings": dataclasses.asdict(self.config),
                "class_names": self.class_names,
                "duration": duration,
                "result": summary,
                "windows": self.rows,
                "skipped_windows": self.skipped,
            },
        )
        moves = [(partial_name(path), path) for path in (csv_path, json_path)]
        try:
            draw_timeline(self.rows, self.class_names, partial_name(png_path), duration)
            moves.append((partial_name(png_path), png_path))
        except ImportError:
            log.warning("matplotlib is not installed: timeline.png not drawn")
        return moves

    def discard(self) -> None:
        self.handle.close()
        for path in self.paths:
            files.remove_partial(partial_name(path))


def draw_timeline(rows: list[dict], class_names: list[str], path: Path, duration: float) -> None:
    """Time on x, one row per class with the probability as colour; the label strip on top."""
    # Imported on call: matplotlib is absent from the light ONNX install (docs/export.md).
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    height = 1.2 + 0.28 * len(class_names)
    figure, (strip, heat) = pyplot.subplots(
        2,
        1,
        figsize=(12, height),
        sharex=True,
        gridspec_kw={"height_ratios": [0.6, len(class_names) * 0.28]},
        constrained_layout=True,
    )
    palette = matplotlib.colormaps["tab20"]
    if rows:
        centres = np.array([(row["start"] + row["end"]) / 2 for row in rows])
        # Each window's column spans halfway to its neighbours' centres.
        edges = np.concatenate(
            [[rows[0]["start"]], (centres[1:] + centres[:-1]) / 2, [rows[-1]["end"]]]
        )
        matrix = np.array([row["probabilities"] for row in rows]).T
        mesh = heat.pcolormesh(
            edges, np.arange(len(class_names) + 1), matrix, cmap="magma", vmin=0, vmax=1
        )
        figure.colorbar(mesh, ax=heat, label="probability", fraction=0.03, pad=0.01)
        labels = [row["label"] for row in rows]
        position = {name: index for index, name in enumerate(class_names)}
        run_start = 0
        for index in range(1, len(rows) + 1):
            if index < len(rows) and labels[index] == labels[run_start]:
                continue
            label = labels[run_start]
            colour = palette(position[label] % 20) if label in position else (0.6, 0.6, 0.6)
            left, right = edges[run_start], edges[index]
            strip.axvspan(left, right, color=colour)
            if right - left > 0.04 * (edges[-1] - edges[0]):
                strip.text((left + right) / 2, 0.5, label, ha="center", va="center", fontsize=8)
            run_start = index
    heat.set_yticks(np.arange(len(class_names)) + 0.5, class_names, fontsize=8)
    heat.set_ylim(len(class_names), 0)
    heat.set_xlim(0, max(duration, 1e-3))
    heat.set_xlabel("time (s)")
    strip.set_yticks([])
    strip.set_title("label")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    files.write_bytes_atomic(path, buffer.getvalue())


class _Annotator:
    """Writes every frame with the current label and probability drawn in its top-left corner."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        # Pillow is optional: only annotate needs it (checked up front by _require_pillow).
        from PIL import ImageFont

        self.path = path
        self.temporary = partial_name(path)
        self.container = av.open(str(self.temporary), mode="w")
        self.stream = self.container.add_stream(
            "libx264", rate=Fraction(fps).limit_denominator(1001)
        )
        height, width = size
        # yuv420p needs even sides.
        self.stream.height, self.stream.width = height - height % 2, width - width % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}
        self.font = ImageFont.load_default(size=max(12, height // 20))

    def write(self, frame: av.VideoFrame, label: tuple[str, float] | None) -> None:
        from PIL import ImageDraw  # Pillow is optional, as in __init__

        image = frame.to_image()  # RGB, display orientation not applied, as encoded
        text = "..." if label is None else f"{label[0]}  {100 * label[1]:.0f} %"
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((8, 6), text, font=self.font)
        draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
        draw.text((8, 6), text, fill=(255, 255, 0), font=self.font)
        if image.size != (self.stream.width, self.stream.height):
            image = image.crop((0, 0, self.stream.width, self.stream.height))
        self.container.mux(self.stream.encode(av.VideoFrame.from_image(image)))

    def finish(self) -> tuple[Path, Path]:
        """Flush the encoder and close the file; return the move that puts it in place."""
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.temporary, self.path

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # closed already, or broken: it goes either way
            self.container.close()
        files.remove_partial(self.temporary)


def _require_pillow() -> None:
    # Pillow is optional: this asks for it before any frame is read, not at import.
    extras.require("PIL", "annotate", package="pillow")
