"""The synthetic night-action dataset: real mp4 files, deterministic, dark, varied and learnable."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import av
import numpy as np
import pytest

from nightact.cli import main
from nightact.core.videos import count_frames, read_clip
from nightact.sources import synthetic
from nightact.sources.synthetic import (
    CLASS_NAMES,
    FRAME_RATES,
    FRAME_SIZES,
    SynthConfig,
    plan_video,
    synthetic_frames,
    write_synthetic_dataset,
)

ORIGINAL_CLASSES = [
    "Drink",
    "Picking",
    "Push",
    "Run",
    "Throwing objects",
    "boxing",
    "lifting weights",
    "receiving the phone",
    "stand",
    "walking on stairs",
    "walking with flashlight",
    "waving",
]
PER_CLASS = 6
MIN_SECONDS, MAX_SECONDS = 0.7, 1.4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One small dataset at the default sizes, written by two worker processes."""
    config = SynthConfig(
        tmp_path_factory.mktemp("synth") / "videos",
        videos_per_class=PER_CLASS,
        seed=7,
        min_seconds=MIN_SECONDS,
        max_seconds=MAX_SECONDS,
        workers=2,
    )
    return config, write_synthetic_dataset(config)


def tiny_config(out: Path, **overrides) -> SynthConfig:
    """One short, small video per class: cheap enough to write several times in a test."""
    settings = dict(videos_per_class=1, seed=0, min_seconds=0.5, max_seconds=0.7, workers=1)
    settings.update(overrides)
    settings.setdefault("size", (48, 64))
    return SynthConfig(out, **settings)


def decode_all(path: Path) -> np.ndarray:
    """Every frame of a video as RGB, decoded independently of nightact.core.videos."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def stream_info(path: Path) -> tuple[int, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.height, stream.codec_context.width, float(stream.average_rate)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB frames."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


# --- layout and decoding -------------------------------------------------------------------------


def test_class_names_are_the_original_folder_names_in_label_order():
    assert list(CLASS_NAMES) == ORIGINAL_CLASSES
    assert sorted(CLASS_NAMES) == list(CLASS_NAMES)


def test_writes_one_folder_per_class_of_decodable_mp4_files(dataset):
    config, paths = dataset
    folders = sorted(entry.name for entry in config.out.iterdir() if entry.is_dir())
    assert folders == ORIGINAL_CLASSES
    on_disk = sorted(config.out.glob("*/*.mp4"))
    assert sorted(paths) == on_disk
    assert len(on_disk) == 12 * PER_CLASS
    for class_name in ORIGINAL_CLASSES:
        names = sorted(path.name for path in (config.out / class_name).iterdir())
        slug = class_name.lower().replace(" ", "-")
        assert names == [f"{slug}_{index:03d}.mp4" for index in range(PER_CLASS)]
    for path in paths[::5]:
        clip = read_clip(path, frames=10, height=24, width=32)
        assert clip.frames.shape == (10, 24, 32, 3)
        assert not clip.short


def test_frame_counts_match_duration_times_frame_rate(dataset):
    config, paths = dataset
    for path in paths:
        _, _, fps = stream_info(path)
        frames = count_frames(path)
        assert MIN_SECONDS * fps - 1 <= frames <= MAX_SECONDS * fps + 1, (path, frames, fps)
        class_index = ORIGINAL_CLASSES.index(path.parent.name)
        video_index = int(path.stem.rsplit("_", 1)[1])
        plan = plan_video(config, class_index, video_index)
        assert frames == plan.frame_count
        assert math.isclose(fps, plan.fps, rel_tol=1e-3)


def test_config_is_saved_as_json_beside_the_videos(dataset):
    config, _ = dataset
    saved = json.loads((config.out / "synth_config.json").read_text())
    assert saved["seed"] == 7
    assert saved["videos_per_class"] == PER_CLASS
    assert saved["min_seconds"] == MIN_SECONDS and saved["max_seconds"] == MAX_SECONDS
    assert saved["size"] is None
    assert saved["class_names"] == ORIGINAL_CLASSES


# --- the look of night footage -------------------------------------------------------------------


def test_videos_are_dark_with_speckle_and_temporal_noise(dataset):
    _, paths = dataset
    for path in paths[::3]:
        frames = decode_all(path)
        brightness = luma(frames)
        assert 8 <= brightness.mean() <= 40, (path, brightness.mean())
        # Most of the picture is near black, yet bright specks and the figure stand out.
        assert np.median(brightness) < 35
        assert (brightness > 80).mean() > 0.002
        # Sensor noise survives the encoder: consecutive frames differ all over the picture,
        # not only where the figure moves.
        change = np.abs(np.diff(brightness, axis=0))
        assert (change > 1).mean() > 0.1, (path, (change > 1).mean())


def test_sizes_aspect_ratios_and_frame_rates_vary(dataset):
    _, paths = dataset
    infos = [stream_info(path) for path in paths]
    sizes = {(height, width) for height, width, _ in infos}
    assert sizes <= set(FRAME_SIZES)
    assert all(height % 2 == 0 and width % 2 == 0 for height, width in sizes)
    ratios = {round(width / height, 2) for height, width in sizes}
    assert {1.33, 1.78, 0.56} <= ratios  # 4:3, 16:9 and portrait 9:16
    rates = {round(fps, 3) for _, _, fps in infos}
    assert len(rates) >= 4
    assert 29.97 in rates or 23.976 in rates  # an NTSC rate, as phones record


def test_plans_cover_every_size_rate_and_the_duration_range():
    config = SynthConfig("unused", min_seconds=2.0, max_seconds=15.0)
    plans = [plan_video(config, c, v) for c in range(12) for v in range(20)]
    assert {(plan.height, plan.width) for plan in plans} == set(FRAME_SIZES)
    assert {plan.fps for plan in plans} == set(FRAME_RATES)
    seconds = np.array([plan.frame_count / plan.fps for plan in plans])
    assert seconds.min() >= 2.0 - 1 / 15 and seconds.max() <= 15.0 + 1 / 15
    assert seconds.max() - seconds.min() > 10  # spread over the range, not clustered
    for plan in plans:
        # The figure stands inside the frame, head to feet.
        assert 0 < plan.ground_y - plan.body and plan.ground_y <= plan.height
        assert min(plan.extra["x_start"], plan.extra["x_end"]) > 0
        assert max(plan.extra["x_start"], plan.extra["x_end"]) < plan.width


def test_size_override_forces_every_frame_size(tmp_path):
    paths = write_synthetic_dataset(tiny_config(tmp_path / "out", size=(48, 64)))
    assert len(paths) == 12
    assert {stream_info(path)[:2] for path in paths} == {(48, 64)}
    # The benchmark's size renders too (first frame only, no encoding).
    plan, frames = synthetic_frames(SynthConfig("unused", size=(480, 640)), 10, 0)
    first = next(frames)
    assert first.shape == (480, 640, 3) and first.dtype == np.uint8
    assert 5 <= luma(first).mean() <= 45


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_the_same_videos_whatever_the_workers(tmp_path):
    serial = write_synthetic_dataset(tiny_config(tmp_path / "serial", workers=1))
    parallel = write_synthetic_dataset(tiny_config(tmp_path / "parallel", workers=2))
    other = write_synthetic_dataset(tiny_config(tmp_path / "other", seed=1))
    differing = 0
    for first, second, third in zip(serial, parallel, other, strict=True):
        assert first.relative_to(tmp_path / "serial") == second.relative_to(tmp_path / "parallel")
        assert np.array_equal(decode_all(first), decode_all(second))
        assert file_hash(first) == file_hash(second)
        a, b = decode_all(first), decode_all(third)
        differing += a.shape != b.shape or not np.array_equal(a, b)
    assert differing == 12


def test_frames_do_not_depend_on_the_size_override():
    # Forcing the size must not reshuffle the other random choices of a video.
    free = plan_video(SynthConfig("unused"), 3, 2)
    forced = plan_video(SynthConfig("unused", size=(480, 640)), 3, 2)
    assert (forced.height, forced.width) == (480, 640)
    assert forced.fps == free.fps and forced.frame_count == free.frame_count
    assert forced.facing == free.facing and forced.phase == free.phase


# --- atomic writes and resuming ------------------------------------------------------------------


def test_interrupted_write_leaves_no_file_under_a_real_name(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = synthetic.write_video
    calls = []

    def write_then_fail(path, frames, fps, **options):
        calls.append(Path(path))
        if len(calls) == 3:
            # Half a video on disk, then the process dies mid-encode.
            first_three = (frame for _, frame in zip(range(3), frames, strict=False))
            real_write(path, first_three, fps, **options)
            raise KeyboardInterrupt
        return real_write(path, frames, fps=fps, **options)

    monkeypatch.setattr(synthetic, "write_video", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tiny_config(out))
    assert calls[2].parent.name.startswith(".partial-")  # a temporary folder beside the video
    assert calls[2].parent.parent == out / CLASS_NAMES[2]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.mp4")) == [
        "Drink/drink_000.mp4",
        "Picking/picking_000.mp4",
    ]
    assert not list(out.glob("*/.partial-*")), "temporary folders must be cleaned up"

    monkeypatch.setattr(synthetic, "write_video", real_write)
    paths = write_synthetic_dataset(tiny_config(out))
    assert all(path.is_file() for path in paths) and len(paths) == 12
    assert count_frames(out / "Push" / "push_000.mp4") >= 7


def test_rerun_skips_existing_videos_and_replaces_missing_ones(tmp_path):
    out = tmp_path / "out"
    paths = write_synthetic_dataset(tiny_config(out))
    hashes = {path: file_hash(path) for path in paths}
    stamps = {path: path.stat().st_mtime_ns for path in paths}
    removed = paths[4]
    removed.unlink()
    # What a killed run leaves behind: a temporary folder with half a video in it.
    stale = out / "stand" / ".partial-killed"
    stale.mkdir()
    (stale / "stand_000.mp4").write_bytes(b"\x00\x00\x00 half a file")

    again = write_synthetic_dataset(tiny_config(out))
    assert again == paths
    assert file_hash(removed) == hashes[removed]
    for path in paths:
        if path != removed:
            assert path.stat().st_mtime_ns == stamps[path], f"{path} was rewritten"
    assert not stale.exists()

    # More videos per class extend the dataset; the first ones stay as they were.
    more = write_synthetic_dataset(tiny_config(out, videos_per_class=2))
    assert len(more) == 24
    assert all(file_hash(path) == hashes[path] for path in paths)


def test_refuses_to_resume_a_folder_made_with_other_settings(tmp_path):
    out = tmp_path / "out"
    write_synthetic_dataset(tiny_config(out))
    with pytest.raises(ValueError, match="other settings.*seed"):
        write_synthetic_dataset(tiny_config(out, seed=5))
    with pytest.raises(ValueError, match="size"):
        write_synthetic_dataset(tiny_config(out, size=(64, 96)))


def test_refuses_an_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="not a folder"):
        write_synthetic_dataset(tiny_config(target))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"videos_per_class": 0}, "videos_per_class"),
        ({"videos_per_class": 2.5}, "videos_per_class"),
        ({"seed": -1}, "seed"),
        ({"min_seconds": 0.0}, "min_seconds"),
        ({"min_seconds": 5.0, "max_seconds": 2.0}, "max_seconds"),
        ({"max_seconds": float("inf")}, "finite"),
        ({"max_seconds": 601.0}, "max_seconds"),
        ({"workers": 0}, "workers"),
        ({"size": (47, 64)}, "even"),
        ({"size": (8, 8)}, "16x16"),
        ({"size": "big"}, "size"),
    ],
)
def test_invalid_settings_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig("out", **overrides)


def test_cli_synth_writes_the_dataset_and_reports_bad_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    flags = ["--videos-per-class", "1", "--min-seconds", "0.4", "--max-seconds", "0.4"]
    assert main(["synth", str(out), *flags, "--workers", "1"]) == 0
    assert len(list(out.glob("*/*.mp4"))) == 12
    assert "wrote 12 videos" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "bad"), "--videos-per-class", "0"]) == 2
    assert "videos_per_class" in capsys.readouterr().err


# --- learnability --------------------------------------------------------------------------------


def test_classes_are_separable_from_ten_letterboxed_frames(dataset):
    """A linear classifier on held-out videos, far above chance (1/12), without Keras.

    Features: the magnitude of the 2-D Fourier transform of each sampled frame and of each
    difference of consecutive frames. Magnitudes ignore where the figure stands, so four
    training videos per class are enough; the differences carry the motion.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, paths = dataset
    clips = np.stack([read_clip(path, frames=10, height=24, width=32).frames for path in paths])
    gray = clips.astype(np.float32).mean(axis=-1)
    frames = np.log1p(np.abs(np.fft.rfft2(gray)))
    motion = np.log1p(np.abs(np.fft.rfft2(np.diff(gray, axis=1))))
    features = np.concatenate([frames.reshape(len(paths), -1), motion.reshape(len(paths), -1)], 1)
    labels = np.repeat(np.arange(12), PER_CLASS)
    held_out = np.tile(np.arange(PER_CLASS), 12) >= PER_CLASS - 2
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    model.fit(features[~held_out], labels[~held_out])
    accuracy = model.score(features[held_out], labels[held_out])
    assert accuracy >= 0.5, f"held-out accuracy {accuracy:.2f} (chance 0.08)"
