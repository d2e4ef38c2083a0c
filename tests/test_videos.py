"""Decoding, frame sampling and letterboxing, on videos written by a real encoder."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest

from conftest import cut_file, decodable_frames, read_barcode, remux_mp4, write_truncated_mp4
from nightact.core.videos import (
    TRUNCATION_TOLERANCE_FRACTION,
    TRUNCATION_TOLERANCE_FRAMES,
    VideoError,
    count_frames,
    is_truncated,
    letterbox,
    promised_frames,
    read_clip,
    sample_indices,
    truncation_note,
    write_video,
)
from nightact.sources.synthetic import CLASS_NAMES, SynthConfig, synthetic_frames

# --- frame indices -------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 3, 9, 10, 11, 37, 100, 451])
def test_sample_indices_follow_the_original_rule(total):
    expected = [int(i * total / 10) for i in range(10)]
    expected[-1] = min(expected[-1], total - 1)
    assert sample_indices(total, 10) == expected
    assert all(0 <= index < total for index in sample_indices(total, 10))


def test_sample_indices_reject_empty_clips():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_indices(0, 10)


@pytest.mark.parametrize("count", [10, 37, 64])
def test_read_clip_returns_exactly_the_sampled_frames(barcode_video, count):
    path = barcode_video(count=count)
    clip = read_clip(path, frames=10, height=64, width=96)
    assert clip.frames.shape == (10, 64, 96, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.indices == sample_indices(count, 10)
    assert [read_barcode(frame) for frame in clip.frames] == clip.indices
    assert clip.decoded_frames == count
    assert not clip.short


@pytest.mark.parametrize("keyframe_interval", [1, 7, 25])
def test_seeking_to_keyframes_gives_the_same_frames_as_a_full_decode(
    barcode_video, monkeypatch, keyframe_interval
):
    import nightact.core.videos as videos

    path = barcode_video(count=120, keyframe_interval=keyframe_interval)
    with av.open(str(path)) as container:
        keyframes = sum(packet.is_keyframe for packet in container.demux(video=0))
    assert keyframes >= 120 // keyframe_interval
    full, _, _ = videos._decode_indices(path, set(sample_indices(120, 10)), 64, 96, 1)

    def no_full_decode(*args, **kwargs):
        raise AssertionError("a clean file must not need the full decode")

    monkeypatch.setattr(videos, "_decode_indices", no_full_decode)
    clip = read_clip(path, frames=10, height=64, width=96)
    assert [read_barcode(frame) for frame in clip.frames] == sample_indices(120, 10)
    for frame, index in zip(clip.frames, clip.indices, strict=True):
        np.testing.assert_array_equal(frame, full[index])


def test_variable_frame_rate_video_gives_the_frames_in_presentation_order(barcode_video):
    gaps = np.random.default_rng(3).choice([0.02, 0.1, 0.4], size=49)
    times = np.concatenate([[0.0], np.cumsum(gaps)]).tolist()
    path = barcode_video(count=50, frame_times=times)
    clip = read_clip(path, frames=10, height=64, width=96)
    assert [read_barcode(frame) for frame in clip.frames] == sample_indices(50, 10)


def test_short_clip_repeats_its_last_frame(barcode_video):
    path = barcode_video(count=4)
    clip = read_clip(path, frames=10, height=64, width=96)
    assert clip.short
    assert clip.indices == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]
    assert [read_barcode(frame) for frame in clip.frames] == clip.indices
    with pytest.raises(VideoError, match="only 4 decodable frames"):
        read_clip(path, frames=10, height=64, width=96, allow_short=False)


def test_truncated_stream_samples_only_what_decodes(barcode_video, tmp_path):
    # Matroska keeps its index at the end, so a cut-off file still decodes up to the cut.
    path = barcode_video(name="cut.mkv", count=60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    clip = read_clip(path, frames=10, height=64, width=96)
    assert 0 < clip.decoded_frames < 60
    assert clip.indices == sample_indices(clip.decoded_frames, 10)
    # Every frame is the one asked for: no stale or repeated frames from a failed seek.
    assert [read_barcode(frame) for frame in clip.frames] == clip.indices
    # A Matroska header counts no frames, so it promises nothing and nothing is flagged.
    assert clip.header_frames == 0 and clip.promised_frames == 0
    assert not clip.truncated


def test_faststart_mp4_cut_in_half_is_truncated(tmp_path):
    # The index comes first, so the file still opens and promises all 49 frames.
    path = write_truncated_mp4(tmp_path / "cut.mp4", count=49)
    clip = read_clip(path, frames=10, height=64, width=96)
    assert clip.header_frames == 49 and clip.promised_frames == 49
    # What really decodes, not the packets demuxed (the last one is cut off mid-frame).
    assert clip.decoded_frames == decodable_frames(path)
    assert 5 < clip.decoded_frames < 40
    assert clip.truncated and not clip.short
    assert promised_frames(path) == 49
    # Sampled over what decodes, every frame the one asked for.
    assert clip.indices == sample_indices(clip.decoded_frames, 10)
    assert [read_barcode(frame) for frame in clip.frames] == clip.indices


def test_a_whole_faststart_mp4_is_not_truncated(tmp_path):
    whole = write_video(
        tmp_path / "whole.mp4", [np.full((32, 48, 3), i, np.uint8) for i in range(30)]
    )
    path = remux_mp4(whole, tmp_path / "fast.mp4")
    clip = read_clip(path, frames=10, height=32, width=48)
    assert clip.decoded_frames == clip.header_frames == clip.promised_frames == 30
    assert not clip.truncated


def test_frames_an_edit_list_hides_are_not_truncation(tmp_path, barcode_video):
    # The first 5 frames sit before the edit list's start: demuxed, decoded, never shown.
    path = remux_mp4(barcode_video(count=49), tmp_path / "trimmed.mp4", trim_frames=5)
    clip = read_clip(path, frames=10, height=64, width=96)
    assert clip.header_frames == 49
    assert clip.decoded_frames == clip.promised_frames == 44
    assert not clip.truncated
    assert [read_barcode(frame) for frame in clip.frames] == [5 + i for i in clip.indices]
    # Cut in half, the same file is truncated, measured against the 44 frames it shows.
    cut = write_truncated_mp4(tmp_path / "trimmed-cut.mp4", count=49, trim_frames=5)
    clip = read_clip(cut, frames=10, height=64, width=96)
    assert clip.promised_frames == promised_frames(cut) == 44
    assert clip.truncated and clip.decoded_frames == decodable_frames(cut) < 40


def test_avi_cut_in_half_is_truncated(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    path = cut_file(write_video(tmp_path / "cut.avi", frames, codec="mpeg4"))
    clip = read_clip(path, frames=8, height=48, width=64)
    assert clip.header_frames == clip.promised_frames == 40
    assert 0 < clip.decoded_frames == decodable_frames(path) < 30
    assert clip.truncated


@pytest.mark.parametrize(
    ("decoded", "promised", "truncated"),
    [
        (49, 49, False),
        (50, 49, False),  # more frames than the header said: not damage
        (47, 49, False),  # within the fixed tolerance of a couple of frames
        (46, 49, True),
        (560, 565, False),  # within 1% of a long clip
        (559, 565, True),
        (0, 0, False),  # no promise (Matroska, WebM): never flagged
        (10, 0, False),
    ],
)
def test_truncation_rule(decoded, promised, truncated):
    assert is_truncated(decoded, promised) == truncated
    assert TRUNCATION_TOLERANCE_FRAMES == 2 and TRUNCATION_TOLERANCE_FRACTION == 0.01


def test_truncation_note_gives_both_counts():
    assert truncation_note(24, 49) == "only 24 of the 49 frames its index promises decode"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.mp4", b"", "empty file"),
        ("text.mp4", b"this is not a video at all\n" * 20, "not a readable video"),
        ("random.mp4", bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8)), "video"),
    ],
)
def test_unusable_files_raise_a_video_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoError, match=reason) as caught:
        read_clip(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)


def test_missing_file_raises_a_video_error(tmp_path):
    with pytest.raises(VideoError, match="file not found"):
        read_clip(tmp_path / "nowhere.mp4")


def test_mp4_cut_before_its_index_is_reported(barcode_video):
    # The encoder writes the index last: cut off, the file cannot be opened at all.
    path = barcode_video(count=30)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(VideoError, match="not a readable video") as caught:
        read_clip(path)
    assert caught.value.path == str(path)
    with pytest.raises(VideoError):
        promised_frames(path)


def test_count_frames_ignores_the_header(barcode_video):
    assert count_frames(barcode_video(count=23)) == 23


# --- letterbox -----------------------------------------------------------------------------------


def _expected_padding(source_height, source_width, height, width):
    """An independent computation of the content box inside the letterboxed frame."""
    scale = min(height / source_height, width / source_width)
    content_height = round(source_height * scale)
    content_width = round(source_width * scale)
    top = (height - content_height) // 2
    left = (width - content_width) // 2
    return top, left, content_height, content_width


@pytest.mark.parametrize(
    ("source", "target"),
    [((30, 80), (60, 80)), ((80, 30), (60, 80)), ((50, 50), (24, 32)), ((45, 160), (240, 320))],
)
def test_letterbox_pads_with_zeros_centred(source, target):
    image = np.full((*source, 3), 200, dtype=np.uint8)
    boxed = letterbox(image, *target)
    top, left, content_height, content_width = _expected_padding(*source, *target)
    assert boxed.shape == (*target, 3)
    mask = np.zeros(target, dtype=bool)
    mask[top : top + content_height, left : left + content_width] = True
    assert (boxed[~mask] == 0).all()
    assert (boxed[mask] == 200).all()


def test_letterbox_keeps_an_image_of_the_target_shape_unchanged():
    image = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox(image, 24, 32), image)


def test_letterbox_downscale_averages_source_pixels():
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = blocks.repeat(4, axis=0).repeat(4, axis=1)  # 48x64 made of 4x4 constant blocks
    boxed = letterbox(image, 12, 16)
    assert np.abs(boxed.astype(int) - blocks.astype(int)).max() <= 1


def test_letterbox_area_filter_matches_block_means():
    image = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    boxed = letterbox(image, 24, 32)
    means = image.reshape(24, 2, 32, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(boxed.astype(float) - means).max() <= 1.0


def test_read_clip_letterboxes_a_portrait_video(tmp_path):
    frames = [np.full((64, 32, 3), 255, dtype=np.uint8)] * 5
    path = write_video(tmp_path / "portrait.mp4", frames, fps=10)
    clip = read_clip(path, frames=5, height=24, width=32)
    top, left, content_height, content_width = _expected_padding(64, 32, 24, 32)
    assert (left, content_width) == (10, 12)
    assert (clip.frames[:, :, :left] == 0).all()
    assert (clip.frames[:, :, left + content_width :] == 0).all()
    assert (clip.frames[:, :, left + 1 : left + content_width - 1] > 240).all()


class _TurnedFrame:
    """A real decoded frame that claims a display-matrix rotation.

    PyAV cannot write a display matrix, so the quarter-turn cases are checked by giving the
    conversion a real frame with the rotation it would have read from a phone video.
    """

    def __init__(self, frame, rotation):
        self._frame, self.rotation = frame, rotation
        self.width, self.height = frame.width, frame.height

    def reformat(self, **kwargs):
        return self._frame.reformat(**kwargs)


@pytest.mark.parametrize(("rotation", "white_on_top"), [(90, False), (-90, True), (270, True)])
def test_quarter_turn_rotation_makes_the_picture_upright(rotation, white_on_top):
    from nightact.core.videos import frame_to_picture

    # Stored landscape 32x64, left half white. A positive display-matrix angle turns the
    # picture counter-clockwise (FFmpeg's autorotate does the same), which takes the left half
    # to the bottom; a negative one turns it clockwise, taking the left half to the top.
    picture = np.zeros((32, 64, 3), dtype=np.uint8)
    picture[:, :32] = 255
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
    upright = frame_to_picture(_TurnedFrame(frame, rotation), 64, 32, pixel_aspect=1)
    expected = np.rot90(picture, rotation // 90)
    assert upright.shape == (64, 32, 3)
    np.testing.assert_array_equal(upright, expected)
    assert (upright[:32].mean() > upright[32:].mean()) == white_on_top


# --- the real clips ------------------------------------------------------------------------------


VIDEO_SUFFIXES = {".mp4", ".avi", ".webm", ".mkv", ".mov"}


def test_every_shared_real_clip_decodes_to_n_frames(shared_videos):
    paths = sorted(path for path in shared_videos.iterdir() if path.suffix in VIDEO_SUFFIXES)
    assert len(paths) >= 5
    for path in paths:
        clip = read_clip(path, frames=10, height=60, width=80)
        assert clip.frames.shape == (10, 60, 80, 3), path.name
        assert not clip.short, path.name
        assert clip.indices == sample_indices(clip.decoded_frames, 10), path.name
        assert clip.frames.max() > 0, path.name
        # Real footage, variable frame rate and rotation included, is whole.
        assert not clip.truncated, path.name
        if clip.header_frames:
            assert clip.promised_frames == clip.decoded_frames, path.name


def test_real_clips_cut_in_half_are_truncated_where_their_index_promises(shared_videos, tmp_path):
    # The MP4s remuxed with their index first, the AVI and WebM as they are; then cut in half.
    cases = {}
    for path in sorted(shared_videos.iterdir()):
        if path.suffix == ".mp4":
            cases[path.name] = remux_mp4(path, tmp_path / path.name)
        elif path.suffix in (".avi", ".webm"):
            cases[path.name] = tmp_path / path.name
            cases[path.name].write_bytes(path.read_bytes())
    assert len(cases) >= 5
    for name, path in cases.items():
        whole = read_clip(path, frames=10, height=30, width=40)
        assert not whole.truncated, name
        cut_file(path)
        clip = read_clip(path, frames=10, height=30, width=40)
        assert clip.decoded_frames < whole.decoded_frames, name
        # WebM promises no count (header 0): a cut WebM is sampled over what decodes, unflagged.
        assert clip.truncated == (name != "quirk_no_duration.webm"), name
        assert clip.promised_frames == whole.promised_frames, name


def test_webm_without_duration_is_counted_from_its_packets(shared_videos):
    clip = read_clip(shared_videos / "quirk_no_duration.webm", frames=10, height=60, width=80)
    assert clip.header_frames == 0
    assert clip.decoded_frames == 74
    assert clip.indices == sample_indices(74, 10)


def test_rotated_phone_clip_comes_out_upright(shared_videos):
    path = shared_videos / "quirk_rotated_vfr_phone.mp4"
    clip = read_clip(path, frames=10, height=90, width=160)
    assert clip.rotation in (180, -180)
    with av.open(str(path)) as container:
        raw = next(container.decode(video=0)).to_ndarray(format="rgb24")
    # The stored picture is upside down; ours is it turned by 180 degrees.
    expected = letterbox(np.ascontiguousarray(raw[::-1, ::-1]), 90, 160)
    difference = np.abs(clip.frames[0].astype(int) - expected.astype(int)).mean()
    unrotated = np.abs(clip.frames[0].astype(int) - letterbox(raw, 90, 160).astype(int)).mean()
    assert difference < 3
    assert unrotated > 3 * difference


def test_non_square_pixels_are_shown_at_their_display_shape(shared_videos):
    # 176x144 with pixels 128/117 wide displays as 192.5x144: it nearly fills a 4:3 frame,
    # where the coded shape alone would leave black bars of 13 columns on each side.
    clip = read_clip(shared_videos / "carphone_gesturing_176x144.mp4", 10, 240, 320)
    assert clip.width == 176 and clip.height == 144
    column_energy = clip.frames.mean(axis=(0, 1, 3))
    assert column_energy[:8].mean() > 10
    assert column_energy[-8:].mean() > 10


def test_night_clip_is_dark_and_full_hd(shared_videos):
    clip = read_clip(shared_videos / "night_walk_1920x1080.mp4", frames=10, height=90, width=160)
    assert (clip.width, clip.height) == (1920, 1080)
    assert clip.frames.mean() < 40


def test_avi_that_is_not_h264_decodes(shared_videos):
    path = shared_videos / "pedestrians_cctv_768x576.avi"
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name != "h264"
    clip = read_clip(path, frames=10, height=60, width=80)
    assert clip.decoded_frames == 250


def test_the_same_frames_always_encode_to_the_same_file(tmp_path):
    # With x264's threads (frame threads or the threaded lookahead), 80 encodes of this clip on a
    # busy machine gave 2-4 different files, which decode to different pixels; single-threaded
    # with sync-lookahead=0, 400 encodes gave one. What remains at this tiny size (48x64, not at
    # the demo's 96x128): an encode can differ after other work in the same process changed the
    # heap, as if x264 read memory it had not written; the warm-up and a quiet loop keep that out.
    config = SynthConfig("unused", min_seconds=1.7, max_seconds=1.7, size=(48, 64))
    frames = np.stack(list(synthetic_frames(config, CLASS_NAMES.index("Run"), 100)[1]))
    write_video(tmp_path / "warm-up.mp4", frames)
    digests = {
        hashlib.sha256(write_video(tmp_path / f"{attempt}.mp4", frames).read_bytes()).hexdigest()
        for attempt in range(40)
    }
    assert len(digests) == 1


def test_the_decoder_threads_never_change_the_frames(tmp_path):
    # prepare gives each worker's decoder its share of the CPUs (one thread each with as many
    # workers as CPUs); a clip with B-frames and several groups of pictures must decode to the same
    # bytes on one thread, on FFmpeg's own count and on more threads than this machine has CPUs.
    config = SynthConfig("unused", min_seconds=2.4, max_seconds=2.4, size=(96, 128))
    frames = list(synthetic_frames(config, CLASS_NAMES.index("boxing"), 3)[1])
    path = write_video(tmp_path / "clip.mp4", frames, keyframe_interval=12)
    with av.open(str(path)) as container:
        packets = [packet for packet in container.demux(video=0) if packet.size]
    assert sum(packet.is_keyframe for packet in packets) >= 4
    # B-frames: decode order differs from presentation order.
    assert [packet.pts for packet in packets] != sorted(packet.pts for packet in packets)
    reference = read_clip(path, frames=10, height=60, width=80)
    for threads in (1, 2, 8):
        clip = read_clip(path, frames=10, height=60, width=80, threads=threads)
        assert clip.indices == reference.indices
        np.testing.assert_array_equal(clip.frames, reference.frames)
