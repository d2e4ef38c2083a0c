"""Decode, sample and letterbox video clips with PyAV; write test and synthetic videos.

One code path turns a video file into the model's input, used by `prepare` and by `predict`:

1. Demux the video stream's packets without decoding them and count the frames from the packets.
   Container headers lie (a WebM without a duration reports 0 frames; OpenCV reports a huge
   negative number for it), so the header count is recorded but never trusted to sample by. Where
   the container indexes its frames (an MP4 or MOV sample table, an AVI's frame count) it is a
   promise, though: a file that decodes fewer frames than that, beyond a small tolerance, is
   marked truncated (:func:`is_truncated`).
2. Pick N frame indices with the original project's rule ``int(i * total / N)``, the last one
   clamped to ``total - 1``.
3. Decode only the groups of pictures that hold a wanted frame: seek to the keyframe before it
   (from the packet index) and decode forward, matching frames by timestamp. When that cannot be
   trusted, decode the stream once, front to back, keeping exactly the frames at those indices.
   (Seeking to a frame number, as the original did with OpenCV, returns wrong frames on
   variable-frame-rate and truncated files.)
4. Apply the rotation in the stream's display matrix so people stand upright, and the sample
   aspect ratio so non-square pixels are shown at their true shape.
5. Letterbox: scale the picture to fit inside HEIGHTxWIDTH keeping its display aspect ratio
   (swscale's area filter, which averages the source pixels under each output pixel and so does not
   alias the speckle noise of night footage), then pad with zeros, centred, to HEIGHTxWIDTH. This
   is the original's pad-then-resize up to rounding at the picture's edge, without blending black
   into the edge pixels.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "INTERPOLATION",
    "TRUNCATION_TOLERANCE_FRACTION",
    "TRUNCATION_TOLERANCE_FRAMES",
    "VIDEO_EXTENSIONS",
    "Clip",
    "count_frames",
    "find_videos",
    "fitted_size",
    "frame_to_picture",
    "is_truncated",
    "letterbox",
    "open_video",
    "pad_centred",
    "promised_frames",
    "read_clip",
    "sample_indices",
    "truncation_note",
    "VideoError",
    "visible_files",
    "write_video",
]

log = logging.getLogger(__name__)

# File extensions indexed as videos by default (prepare, download, predict).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

# swscale's area-averaging filter: the right choice for the large downscales we do.
INTERPOLATION = "AREA"

# A file is truncated when the frames that decode fall short of what its index promises by more
# than max(FRAMES, FRACTION x the promise). Decoders may drop a few leading pictures of an open
# group of pictures in a healthy file; a cut-off file loses far more.
TRUNCATION_TOLERANCE_FRAMES = 2
TRUNCATION_TOLERANCE_FRACTION = 0.01


def visible_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` at any depth, sorted, leaving out hidden ones.

    Hidden means any part of the path below ``folder`` starts with a dot: editor backups, a
    synth run's unfinished ``.partial-*`` folders, macOS ``._`` files. The one rule for every
    command that takes a folder of videos.
    """
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def find_videos(
    folder: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS
) -> list[Path]:
    """The videos in ``folder`` (any depth, sorted): the visible files with a video extension."""
    wanted = {extension.lower() for extension in extensions}
    return [path for path in visible_files(folder) if path.suffix.lower() in wanted]


class VideoError(Exception):
    """A video that cannot be used, with the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Clip:
    """N sampled, upright, letterboxed RGB frames of one video and what we learned reading it."""

    frames: np.ndarray  # (N, height, width, 3) uint8
    decoded_frames: int  # frames in the stream: packets, or what decoded when a file is damaged
    header_frames: int  # what the container header claims (often wrong)
    fps: float
    width: int  # coded width of the source
    height: int  # coded height of the source
    rotation: int  # degrees counter-clockwise applied to make the picture upright
    indices: list[int] = field(default_factory=list)  # frame indices used, in order
    short: bool = False  # fewer decodable frames than N: the last one is repeated
    # Frames the container's index promises to show (header count less edit-list trims);
    # 0 when it promises nothing (Matroska, WebM, MPEG-TS, a fragmented MP4).
    promised_frames: int = 0

    @property
    def truncated(self) -> bool:
        """Fewer frames decode than the container's index promises: a cut-off or damaged file."""
        return is_truncated(self.decoded_frames, self.promised_frames)


def is_truncated(decoded: int, promised: int) -> bool:
    """Whether ``decoded`` frames fall short of the ``promised`` ones beyond the tolerance.

    ``promised`` 0 means the container promises nothing, and nothing is ever truncated then.
    """
    if promised <= 0:
        return False
    tolerance = max(TRUNCATION_TOLERANCE_FRAMES, TRUNCATION_TOLERANCE_FRACTION * promised)
    return promised - decoded > tolerance


def truncation_note(decoded: int, promised: int) -> str:
    """The one-line reason given for a truncated file, by prepare, predict and timeline."""
    return f"only {decoded} of the {promised} frames its index promises decode"


def sample_indices(total: int, count: int) -> list[int]:
    """Spread ``count`` indices evenly over ``total`` frames, as the original did.

    ``int(i * total / count)`` for i in 0..count-1, with the last index clamped to ``total - 1``.
    When ``total < count`` some indices repeat; callers decide whether that is acceptable.
    """
    if total <= 0:
        raise ValueError(f"a clip needs at least one frame, got total={total}")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    indices = [int(i * total / count) for i in range(count)]
    indices[-1] = min(indices[-1], total - 1)
    return indices


def fitted_size(
    source_height: int, source_width: float, height: int, width: int
) -> tuple[int, int]:
    """The (height, width) a picture takes inside a HEIGHTxWIDTH box, keeping its aspect ratio."""
    scale = min(height / source_height, width / source_width)
    fit_height = min(height, max(1, round(source_height * scale)))
    fit_width = min(width, max(1, round(source_width * scale)))
    return fit_height, fit_width


def pad_centred(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Place ``picture`` in the middle of a black HEIGHTxWIDTH canvas (extra pixel at the end)."""
    canvas = np.zeros((height, width, picture.shape[2]), dtype=picture.dtype)
    top = (height - picture.shape[0]) // 2
    left = (width - picture.shape[1]) // 2
    canvas[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return canvas


def letterbox(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fit an RGB uint8 image into HEIGHTxWIDTH keeping its aspect ratio, padding with zeros."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (h, w, 3) uint8 image, got {image.shape} {image.dtype}")
    fit_height, fit_width = fitted_size(image.shape[0], image.shape[1], height, width)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    resized = frame.reformat(
        width=fit_width, height=fit_height, format="rgb24", interpolation=INTERPOLATION
    ).to_ndarray()
    return pad_centred(resized, height, width)


def _rotation_turns(rotation: float) -> int:
    """Quarter turns counter-clockwise for np.rot90, from a display-matrix angle."""
    return int(round(rotation / 90.0)) % 4


def frame_to_picture(
    frame: av.VideoFrame, height: int, width: int, pixel_aspect: Fraction
) -> np.ndarray:
    """Convert one decoded frame to an upright, letterboxed (height, width, 3) uint8 array."""
    turns = _rotation_turns(frame.rotation or 0)
    display_width = frame.width * float(pixel_aspect)
    display_height = frame.height
    if turns % 2:
        # A quarter turn swaps the picture's axes: fit the rotated shape, scale, then rotate.
        fit_height, fit_width = fitted_size(display_width, display_height, height, width)
        scaled_height, scaled_width = fit_width, fit_height
    else:
        fit_height, fit_width = fitted_size(display_height, display_width, height, width)
        scaled_height, scaled_width = fit_height, fit_width
    picture = frame.reformat(
        width=scaled_width, height=scaled_height, format="rgb24", interpolation=INTERPOLATION
    ).to_ndarray()
    if turns:
        picture = np.rot90(picture, turns)
    return pad_centred(picture, height, width)


def open_video(path: Path):
    """Open a video file with PyAV, or raise VideoError naming the file and the problem."""
    if not path.is_file():
        raise VideoError(path, "file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(path, f"not a readable video ({error.strerror or error})") from error
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def count_frames(path: str | os.PathLike) -> int:
    """Count the video frames by demuxing packets (no decoding); headers are not trusted."""
    path = Path(path)
    with open_video(path) as container:
        return len(_packet_index(path, container)[0])


def promised_frames(path: str | os.PathLike) -> int:
    """The frames a video's container index promises to show; 0 when it promises none.

    The header's frame count (an MP4 or MOV sample table, an AVI's frame count), less the
    packets an edit list trims and the index entries that carry no picture. Demuxes the file
    once, without decoding.
    """
    path = Path(path)
    with open_video(path) as container:
        header_frames = int(container.streams.video[0].frames or 0)
        packets, empty = _packet_index(path, container)
    return _promise(header_frames, packets, empty)


@dataclass
class _Packet:
    """What the demuxer says about one compressed frame, in decode order."""

    pts: int | None
    keyframe: bool
    discard: bool


def _packet_index(path: Path, container) -> tuple[list[_Packet], int]:
    """Every frame-carrying packet of the video stream, in decode order, without decoding; and
    how many index entries carried no data (an AVI's dropped-frame markers)."""
    stream = container.streams.video[0]
    packets = []
    empty = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                packets.append(_Packet(packet.pts, packet.is_keyframe, packet.is_discard))
            elif packet.dts is not None:
                empty += 1
            # The demuxer ends with an empty flush packet without timestamps; it is no entry.
    except av.FFmpegError as error:
        log.debug("%s: demuxing stopped early: %s", path, error)
    return packets, empty


def _promise(header_frames: int, packets: list[_Packet], empty: int) -> int:
    """Frames the index promises to show: the header's count less the entries that never show
    a picture (edit-list trims, empty entries); 0 when the header promises nothing."""
    if header_frames <= 0:
        return 0
    trimmed = sum(packet.discard for packet in packets)
    return max(0, header_frames - trimmed - empty)


def read_clip(
    path: str | os.PathLike,
    frames: int = 10,
    height: int = 240,
    width: int = 320,
    allow_short: bool = True,
    frames_per_segment: int = 1,
    threads: int | None = None,
) -> Clip:
    """Decode N evenly spaced, upright, letterboxed RGB frames of a video.

    With ``frames_per_segment`` K > 1, N*K frames: the K candidates of each of N segments,
    ``int(j * total / (N*K))`` for j in 0..N*K-1, which puts the original's ``int(i * total / N)``
    first in segment i (see :mod:`nightact.data.sampling`). A clip is short only with fewer than N
    decodable frames; with N to N*K-1 some candidates repeat. A short clip's N frames (every
    decodable one, then the last repeated) each fill all K candidates of their segment.

    A file that decodes fewer frames than its index promises comes back sampled over the frames
    that decode, with ``truncated`` set (:func:`is_truncated`).

    ``threads``: the decoder's threads; None leaves it to FFmpeg (one per CPU, at most 16), right
    for one process alone. Processes decoding side by side should each take their share of the
    CPUs (:func:`nightact.core.workers.decoder_threads`). The frames are the same either way.

    Raises :class:`VideoError` naming the file and the reason when it cannot be used: missing,
    empty, not a video, no decodable frame, or (with ``allow_short=False``) fewer than N
    decodable frames.
    """
    path = Path(path)
    with open_video(path) as container:
        stream = container.streams.video[0]
        header_frames = int(stream.frames or 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        coded_width = stream.codec_context.width
        coded_height = stream.codec_context.height
        pixel_aspect = stream.sample_aspect_ratio or Fraction(1)
        if pixel_aspect <= 0:
            pixel_aspect = Fraction(1)
        packets, empty = _packet_index(path, container)
    total = len(packets)
    if total == 0:
        raise VideoError(path, "no video frames in the file")

    segments, frames = frames, frames * frames_per_segment
    wanted = sample_indices(total, frames)
    promised = _promise(header_frames, packets, empty)
    seeked = None
    # A file already short of its index is decoded in full: its last packets may be cut off
    # mid-frame, and only a full decode says how many frames are really there.
    if total > frames and not is_truncated(total, promised):
        seeked = _decode_by_seeking(path, packets, wanted, height, width, pixel_aspect, threads)
    if seeked is not None:
        kept, rotation = seeked
        decoded = total
    else:
        # A clip with no more frames than we need is kept whole: every frame is used anyway.
        keep = set(range(total)) if total <= frames else set(wanted)
        kept, decoded, rotation = _decode_indices(path, keep, height, width, pixel_aspect, threads)
    if decoded == 0:
        raise VideoError(path, "no frame could be decoded (corrupt or unsupported stream)")
    if decoded != total:
        # Some packets did not decode (a truncated or damaged file) or the decoder produced more
        # frames than packets: sample again over what really decodes.
        log.debug("%s: %d packets but %d decodable frames", path, total, decoded)
        wanted = sample_indices(decoded, frames)
        if not set(wanted) <= kept.keys():
            kept, decoded, rotation = _decode_indices(
                path, set(wanted), height, width, pixel_aspect, threads
            )
    short = decoded < segments
    if short:
        if not allow_short:
            raise VideoError(
                path, f"only {decoded} decodable frames, fewer than the {segments} requested"
            )
        # Every decodable frame once, then the last one repeated: the clip keeps its real
        # frame-to-frame motion and freezes at the end, rather than stuttering throughout.
        wanted = list(range(decoded)) + [decoded - 1] * (segments - decoded)
        wanted = [index for index in wanted for _ in range(frames_per_segment)]
        if not set(wanted) <= kept.keys():
            kept, decoded, rotation = _decode_indices(
                path, set(wanted), height, width, pixel_aspect, threads
            )
    clip_frames = np.stack([kept[index] for index in wanted])
    return Clip(
        frames=clip_frames,
        decoded_frames=decoded,
        header_frames=header_frames,
        fps=fps,
        width=coded_width,
        height=coded_height,
        rotation=rotation,
        indices=wanted,
        short=short,
        promised_frames=promised,
    )


def _decode_by_seeking(
    path: Path,
    packets: list[_Packet],
    wanted: list[int],
    height: int,
    width: int,
    pixel_aspect: Fraction,
    threads: int | None = None,
) -> tuple[dict[int, np.ndarray], int] | None:
    """Decode only the groups of pictures that hold a wanted frame, and stop after the last one.

    Each wanted frame is decoded starting from the keyframe before it (found in the packet
    index, by presentation time); groups of pictures without a wanted frame and the tail after
    the last one are never decoded. Returns None whenever the result could not be trusted
    (packets without timestamps, edit-list discards, a failed seek, a missing frame), and the
    caller then decodes the whole stream front to back.
    """
    if any(packet.pts is None or packet.discard for packet in packets):
        return None
    presentation = sorted(packet.pts for packet in packets)
    if len(set(presentation)) != len(presentation):
        return None
    index_of = {pts: index for index, pts in enumerate(presentation)}
    keyframes = sorted(index_of[packet.pts] for packet in packets if packet.keyframe)
    if not keyframes or keyframes[0] != 0:
        return None
    # Wanted frames grouped by the keyframe that starts their group of pictures.
    groups: dict[int, set[int]] = {}
    for index in wanted:
        start = keyframes[bisect.bisect_right(keyframes, index) - 1]
        groups.setdefault(start, set()).add(index)

    kept: dict[int, np.ndarray] = {}
    rotation = 0
    try:
        with open_video(path) as container:
            stream = container.streams.video[0]
            _use_threads(stream, threads)
            frames = container.decode(stream)
            position = -1  # presentation index of the last frame the decoder gave
            for start, needed in sorted(groups.items()):
                if position < start - 1:
                    # Far behind this group: jump to its keyframe rather than decode up to it.
                    container.seek(presentation[start], stream=stream, backward=True)
                    frames = container.decode(stream)
                for frame in frames:
                    index = index_of.get(frame.pts)
                    if index is None:
                        return None
                    position = index
                    if index in needed:
                        kept[index] = frame_to_picture(frame, height, width, pixel_aspect)
                        rotation = int(round(frame.rotation or 0))
                        needed.discard(index)
                        if not needed:
                            break
                if needed:
                    return None
    except (av.FFmpegError, VideoError) as error:
        log.debug("%s: seeking decode failed, decoding in full: %s", path, error)
        return None
    return kept, rotation


def _use_threads(stream, threads: int | None) -> None:
    """Decode ``stream`` on ``threads`` threads (None: FFmpeg's count, one per CPU)."""
    # Frame threads decode several frames at once; slice threads split one frame.
    stream.thread_type = "AUTO"
    if threads is not None:
        stream.codec_context.thread_count = threads


def _decode_indices(
    path: Path,
    wanted: set[int],
    height: int,
    width: int,
    pixel_aspect: Fraction,
    threads: int | None = None,
) -> tuple[dict[int, np.ndarray], int, int]:
    """Decode every frame once, keeping those at the wanted presentation-order indices."""
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    rotation = 0
    with open_video(path) as container:
        stream = container.streams.video[0]
        _use_threads(stream, threads)
        try:
            for frame in container.decode(stream):
                if decoded in wanted:
                    kept[decoded] = frame_to_picture(frame, height, width, pixel_aspect)
                    rotation = int(round(frame.rotation or 0))
                decoded += 1
        except av.FFmpegError as error:
            # A damaged tail: keep what decoded before it, the caller re-samples if needed.
            log.debug("%s: decoding stopped after %d frames: %s", path, decoded, error)
    return kept, decoded, rotation


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
) -> Path:
    """Encode RGB uint8 frames (h, w, 3) to a real video file (H.264 in MP4 by default).

    Width and height must be even for yuv420p. ``preset`` is x264's speed/size trade-off
    ("ultrafast" ... "veryslow"). Used by the synthetic dataset and by tests.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame_array in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = frame_array.shape[:2]
                stream.pix_fmt = "yuv420p"
                options = {}
                if codec == "libx264":
                    # One thread and no threaded lookahead: with either, x264 now and then
                    # encodes the same frames to another bitstream (so other pixels) when the
                    # machine is busy, which made synthetic datasets and the demo's figures
                    # unrepeatable. Callers that write many videos (synth) use one process per CPU.
                    options = {"crf": str(crf), "preset": preset, "x264-params": "sync-lookahead=0"}
                    stream.codec_context.thread_count = 1
                if keyframe_interval:
                    stream.codec_context.gop_size = keyframe_interval
                stream.options = options
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_array), format="rgb24")
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        container.mux(stream.encode(None))
    return path
