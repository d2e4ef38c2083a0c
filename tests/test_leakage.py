"""The near-duplicate detector on a generated corpus of known copies and same-scene retakes."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from nightact.cli import main
from nightact.core.store import read_manifest
from nightact.core.videos import letterbox, write_video
from nightact.data import leakage
from nightact.data.groups import assign_grouped_splits, assign_groups
from nightact.data.prepare import PrepareConfig, prepare
from nightact.data.splits import assign_splits, index_videos
from nightact.demo import DemoConfig
from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset
from support import copies


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 classes x 2 originals, one copy each (every transform once) and one retake each, and 2
    dark stills with a copy and 2 other takes each: 32 clips of 22 recordings."""
    folder = tmp_path_factory.mktemp("corpus")
    truth = copies.write_copy_corpus(
        copies.CopyCorpusConfig(
            folder / "videos",
            originals_per_class=2,
            classes=4,
            dark_stills=2,
            takes_per_still=2,
            size=(96, 128),
            min_seconds=1.5,
            max_seconds=2.5,
        )
    )
    prepare(PrepareConfig(folder / "videos", folder / "store", frames=8, height=48, width=64))
    return folder, truth


def test_the_corpus_holds_every_transform_and_a_retake_per_original(corpus):
    folder, truth = corpus
    kinds = sorted(set(truth["transforms"].values()))
    assert kinds == sorted([*copies.TRANSFORMS, "original", "retake"])
    assert len(copies.true_pairs(truth["recordings"])) == 10
    assert len(set(truth["recordings"].values())) == 22
    assert (folder / "videos" / "Drink" / "drink_000_copy-reencode.mp4").is_file()
    assert truth["dark_stills"] == ["stand-dark_000", "stand-dark_001"]
    takes = sorted(path for path in truth["recordings"] if "stand-dark_000_take" in path)
    assert takes == ["stand/stand-dark_000_take-1.mp4", "stand/stand-dark_000_take-2.mp4"]


def test_dark_stills_are_dark_and_still_and_their_takes_share_only_the_camera(corpus):
    folder, _ = corpus
    still, _ = copies.read_frames(folder / "videos" / "stand" / "stand-dark_000.mp4")
    take, _ = copies.read_frames(folder / "videos" / "stand" / "stand-dark_000_take-1.mp4")
    still = np.stack(still).astype(np.float32).mean(axis=3)
    take = np.stack(take).astype(np.float32).mean(axis=3)
    # Very low light: the scene around 2-6 of 255, the figure only 10-28 above it.
    assert np.median(still) < 8 and np.percentile(still, 99.5) < 60
    # Near-still: the temporal median explains almost all of every frame.
    figure = still.mean(axis=0) > np.median(still) + 8
    assert figure.sum() > 50
    assert np.abs(still - np.median(still, axis=0))[:, figure].mean() < 4
    # The same camera: hot pixels at the same places in both takes ...
    hot = lambda frames: np.median(frames, axis=0) > np.median(frames) + 30  # noqa: E731
    assert (hot(still) & hot(take)).sum() >= 0.5 * hot(still).sum() > 0
    # ... but noise of its own in every frame (only a copy carries the original's).
    quiet = ~(figure | hot(still) | hot(take))
    first = (still[0] - np.median(still, axis=0))[quiet]
    other = (take[0] - np.median(take, axis=0))[quiet]
    assert abs(np.corrcoef(first, other)[0, 1]) < 0.1


def test_recall_and_precision_on_known_copies(corpus):
    folder, truth = corpus
    report = leakage.check_store(leakage.LeakageConfig(folder / "store", within=True))
    score = copies.score_detection([(p.path_a, p.path_b) for p in report.pairs], truth)
    # Measured on this corpus at 8 x 48x64: recall 7/10, precision 7/7, no retake taken for a
    # copy. Missed: the crop and the "mixed" copy (crop + resize + trim) of "Run" (at 48x64 a
    # crop of a few percent leaves the picture's shape, so detail decides, and a crop shifts
    # it), and one re-encoded copy whose content is 0.85.
    assert score["recall"] >= 0.7
    assert score["precision"] == 1.0
    assert score["retakes_taken_for_copies"] == 0
    for transform in ("resize", "mirror", "gamma", "noise", "trim"):
        assert score["recall_per_transform"][transform] == 1.0, transform
    assert score["dark_stills"]["recall"] == 1.0
    # Found by the noise their frames share: the mirrored copy's frames are the same frames.
    mirrored = [pair for pair in report.pairs if "copy-mirror" in pair.path_a + pair.path_b]
    assert mirrored and mirrored[0].mirrored and mirrored[0].noise > leakage.SHARED_NOISE
    summary = report.summary()
    assert summary["clips"] == 32
    assert summary["pairs_across_splits"] + summary["pairs_within_splits"] == len(report.pairs)


def test_the_csv_holds_cross_split_pairs_by_default(corpus):
    folder, _ = corpus
    report = leakage.check_store(leakage.LeakageConfig(folder / "store"))
    path = leakage.write_report(report)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report.cross_pairs)
    assert all(row["split_a"] != row["split_b"] for row in rows)
    with open(path) as handle:
        header = handle.readline().strip().split(",")
    assert header == list(leakage.CSV_COLUMNS)
    assert header[:5] == ["path_a", "split_a", "path_b", "split_b", "similarity"]
    within = leakage.check_store(leakage.LeakageConfig(folder / "store", within=True))
    assert len(within.pairs) >= len(rows)
    assert (folder / "store" / "leakage.json").is_file()


def test_a_clip_matches_itself_mirrored_and_brightened_but_not_noise():
    rng = np.random.default_rng(0)
    frames = np.clip(rng.normal(12, 3, (8, 48, 64, 3)), 0, 255).astype(np.uint8)
    for index in range(8):  # a bright block walking to the right
        frames[index, 15:35, 5 + 6 * index : 15 + 6 * index] = 90
    mirrored = frames[:, :, ::-1]
    brighter = np.clip(255 * (frames / 255.0) ** 0.7 * 1.2, 0, 255).astype(np.uint8)
    letterboxed = np.zeros((8, 64, 64, 3), dtype=np.uint8)
    letterboxed[:, 8:56] = brighter
    signatures = [leakage.clip_signature(clip) for clip in (frames, mirrored, letterboxed)]
    noise = leakage.clip_signature(
        np.clip(rng.normal(12, 3, (8, 48, 64, 3)), 0, 255).astype(np.uint8)
    )
    scores = leakage.compare_signatures(
        [signatures[0], signatures[0], signatures[0]], [signatures[1], signatures[2], noise]
    )
    assert scores[0, 0] > 0.95 and scores[0, 3] == 1.0  # found mirrored
    assert scores[1, 0] > 0.95 and scores[1, 3] == 0.0
    assert scores[2, 0] < 0.5


def test_near_duplicate_groups_keep_copies_in_one_split(corpus):
    folder, truth = corpus
    _, entries, _ = index_videos(folder / "videos")
    # The pre-pass prepare runs for --group-by near-duplicates.
    groups = assign_groups(entries, "near-duplicates", folder / "videos", frames=8, workers=1)
    truth_pairs = copies.true_pairs(truth["recordings"])
    together = [groups[a] == groups[b] for a, b in truth_pairs]
    assert sum(together) >= 8  # of 10 copies (measured: 8)
    assert len(set(groups.values())) >= 22  # 32 clips of 22 recordings: no false merge
    splits = assign_grouped_splits(entries, groups, (0.5, 0.25, 0.25), 0)
    where = {entry.path: name for name, members in splits.items() for entry in members}
    for path, group in groups.items():
        assert where[path] == where[group]


def test_letterbox_bars_are_stripped_but_a_dark_band_is_content():
    frames = np.full((4, 40, 60), 30, dtype=np.uint8)
    letterboxed = np.zeros((4, 60, 60), dtype=np.uint8)
    letterboxed[:, 10:50] = frames
    assert leakage.content_box(letterboxed) == (slice(10, 50), slice(0, 60))
    # The black floor of a very dark scene (or a crushed copy) is on one side only: kept.
    dark_floor = frames.copy()
    dark_floor[:, 25:] = 0
    assert leakage.content_box(dark_floor) == (slice(None), slice(0, 60))


def test_verification_needs_the_same_frames_or_the_same_detail():
    rng = np.random.default_rng(3)
    rows, columns = np.mgrid[0:48, 0:64]
    lamp = 8 * np.exp(-((rows - 8) ** 2 + (columns - 12) ** 2) / 300.0)  # a faint lamp
    figure = np.zeros((48, 64), dtype=np.float32)
    figure[10:40, 28:34] = 60  # a dim standing figure
    moved = np.roll(np.roll(figure, 1, axis=0), 1, axis=1)  # another take: one pixel off

    def clip(picture, noise):
        return np.clip(6 + lamp + picture[None] + noise, 0, 255).astype(np.uint8)

    noise = rng.normal(0, 3, (8, 48, 64))
    original = clip(figure, noise)
    # A brighter copy of the very frames; another take with the same sensor but other noise.
    copy = np.clip(original.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    take = clip(moved, rng.normal(0, 3, (8, 48, 64)))
    signatures = [leakage.clip_signature(c) for c in (original, copy, take)]
    content = leakage.compare_signatures(signatures[:1] * 2, signatures[1:])
    # Both look alike at the content's resolution ...
    assert content[0, 0] > 0.9 and content[1, 0] > 0.8
    similarity, detail, shared = leakage.verify_pairs(
        signatures[:1] * 2, signatures[1:], content[:, [0, 4]]
    ).T
    # ... but only the copy holds the same frames, and the take's detail lies a pixel away.
    assert shared[0] > leakage.SHARED_NOISE > shared[1]
    assert similarity[0] > 0.95
    assert detail[1] < detail[0] and similarity[1] < leakage.LeakageConfig("x").threshold


def test_takes_of_one_fixed_camera_differ_where_people_move():
    """A fixed camera films one textured scene; people cross it on other paths in each take.
    The takes share their background (content and detail alike), so only what moves tells them
    apart; a brighter copy of one take moves exactly as it does."""
    rng = np.random.default_rng(11)
    rows, columns = np.mgrid[0:120, 0:160]
    scene = 20 + 60 * (np.sin(rows / 5.0) * np.cos(columns / 7.0) > 0.3)  # a wall, windows
    scene = scene + rng.normal(0, 4, (120, 160))  # its texture: the same in every take

    def take(paths):
        frames = []
        for t in range(10):
            frame = scene + rng.normal(0, 2, (120, 160))  # noise of its own in every frame
            for row, start, speed in paths:
                left = int(start + speed * t) % 150
                frame[row : row + 16, left : left + 5] += 40  # a person walking
            frames.append(frame)
        return np.clip(np.stack(frames), 0, 255).astype(np.uint8)

    original = take([(40, 10, 12), (70, 140, -9)])
    copy = np.clip(original.astype(np.float32) * 1.3 + 5, 0, 255).astype(np.uint8)
    other = take([(30, 120, -11), (75, 20, 8)])
    signatures = [leakage.clip_signature(c) for c in (original, copy, other)]
    content = leakage.compare_signatures(signatures[:1] * 2, signatures[1:])
    # The background makes the other take look like a copy at the content's resolution ...
    assert content[1, 0] > leakage.LeakageConfig("x").threshold
    similarity, detail, _ = leakage.verify_pairs(
        signatures[:1] * 2, signatures[1:], content[:, [0, 4]], mirrored=content[:, 3]
    ).T
    # ... and in fine detail, but its people move elsewhere.
    assert detail[1] > 0.8
    threshold = leakage.LeakageConfig("x").threshold
    assert similarity[0] >= threshold > similarity[1]
    agreement = leakage.foreground_agreement(signatures[0], signatures[2], False)
    assert agreement is not None and agreement + leakage.FOREGROUND_SLACK < threshold


def test_a_cropped_copy_is_verified_by_the_noise_its_frames_keep():
    """A cropped copy of a dark, still clip has another shape and shifted detail: once the crop
    is found, its noise shows the same frames. Another take of the scene, alike in content and
    searched the same way, shares none."""
    rng = np.random.default_rng(5)
    rows, columns = np.mgrid[0:240, 0:320]
    lamp = 10 * np.exp(-((rows - 40) ** 2 + (columns - 60) ** 2) / 6000.0)
    scene = np.zeros((240, 320), dtype=np.float32)
    for top, left in rng.integers(0, 200, size=(12, 2)):
        scene[top : top + 30, left : left + 24] += 6  # dim furniture
    figure = np.zeros((240, 320), dtype=np.float32)
    figure[60:200, 140:170] = 20  # a dim standing figure

    def clip(picture):
        noise = rng.normal(0, 6, (10, 240, 320))
        return np.clip(4 + lamp + scene + picture[None] + noise, 0, 255).astype(np.uint8)

    original = clip(figure)
    # 5 % off the top, 7.5 % off the bottom, 6 % left and 4 % right, resized to fit the store.
    part = np.repeat(original[:, 12:222, 19:307, None], 3, axis=3)
    copy = np.stack([letterbox(frame, 240, 320) for frame in part])
    take = clip(np.roll(figure, 4, axis=1))  # another take: a few pixels off
    signatures = [leakage.clip_signature(frames) for frames in (original, copy, take)]
    assert signatures[1].size != signatures[0].size
    clips = [("original.mp4", "train"), ("copy.mp4", "test"), ("take.mp4", "test")]
    settings = dict(within=True, candidates=0, threshold=0.5)
    report = leakage.find_near_duplicates(clips, signatures, leakage.LeakageConfig("x", **settings))
    pairs = {(pair.path_a, pair.path_b): pair for pair in report.pairs}
    threshold = leakage.LeakageConfig("x").threshold
    copied = pairs["original.mp4", "copy.mp4"]
    assert copied.noise >= leakage.SHARED_NOISE and copied.similarity >= threshold
    other = pairs["copy.mp4", "take.mp4"]
    # Alike enough in content for the crop search, but no frame of it is a frame of the copy.
    assert other.appearance >= leakage.CROP_FLOOR
    assert other.noise < leakage.SHARED_NOISE and other.similarity < threshold


def test_demo_videos_are_not_copies_and_a_real_copy_still_warns(tmp_path, caplog):
    """The demo's synthetic videos (DemoConfig's settings, fewer of them) prepare without a
    warning; a mirrored copy of one of them, encoded again, is found."""
    demo = DemoConfig()
    videos = tmp_path / "videos"
    write_synthetic_dataset(
        SynthConfig(
            videos,
            videos_per_class=4,
            seed=demo.seed,
            min_seconds=demo.min_seconds,
            max_seconds=demo.max_seconds,
            size=demo.video_size,
            workers=1,
        )
    )
    shape = dict(frames=demo.frames, height=demo.height, width=demo.width, workers=1)
    with caplog.at_level(logging.WARNING):
        summary = prepare(PrepareConfig(videos, tmp_path / "store", **shape))
    # Before the verification step the check reported 7 pairs across splits here.
    assert summary.leakage["pairs_across_splits"] == 0
    assert summary.leakage["pairs_within_splits"] == 0
    assert "near-duplicate" not in caplog.text

    original = videos / "Drink" / "drink_001.mp4"
    frames, fps = copies.read_frames(original)
    copied, _ = copies.apply_transform("mirror", frames, np.random.default_rng(0))
    write_video(videos / "Drink" / "drink_001_copy.mp4", copied, fps=fps)
    _, entries, _ = index_videos(videos)
    # A split seed that puts the copy and its original apart.
    seed = next(
        seed
        for seed in range(100)
        if len(
            {
                name
                for name, members in assign_splits(entries, (0.7, 0.15, 0.15), seed).items()
                for entry in members
                if entry.path.startswith("Drink/drink_001")
            }
        )
        == 2
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        summary = prepare(PrepareConfig(videos, tmp_path / "again", seed=seed, **shape))
    assert "near-duplicate clips lie in different splits" in caplog.text
    pairs = leakage.read_pairs(tmp_path / "again" / leakage.CSV_NAME)
    assert [sorted((row["path_a"], row["path_b"])) for row in pairs] == [
        ["Drink/drink_001.mp4", "Drink/drink_001_copy.mp4"]
    ]


def test_config_errors():
    with pytest.raises(ValueError, match="threshold"):
        leakage.LeakageConfig("store", threshold=1.5)
    with pytest.raises(ValueError, match="frames, height, width"):
        leakage.clip_signature(np.zeros((4, 4)))
    with pytest.raises(FileNotFoundError, match="not a prepared store"):
        leakage.check_store(leakage.LeakageConfig("/nonexistent/store"))


def test_prepare_groups_by_regex_and_records_the_group(corpus, tmp_path, caplog):
    folder, truth = corpus
    store = tmp_path / "store"
    # The corpus names a copy <recording>_copy-<transform>: the recording is the group.
    pattern = r"/([a-z-]+_\d{3})"
    summary = prepare(
        PrepareConfig(
            folder / "videos",
            store,
            frames=8,
            height=48,
            width=64,
            split=(0.5, 0.25, 0.25),
            group_by=pattern,
        )
    )
    rows = [row for row in read_manifest(store) if row["status"] == "ok"]
    assert {row["group"] for row in rows if row["path"].startswith("Drink/drink_000")} == {
        "drink_000"
    }
    split_of_group: dict[str, set] = {}
    for row in rows:
        split_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of_group.values())
    # Copies share a split, so the check at the end finds no copy across splits.
    truth_pairs = copies.true_pairs(truth["recordings"])
    split = {row["path"]: row["split"] for row in rows}
    assert all(split[a] == split[b] for a, b in truth_pairs)
    saved = json.loads((store / "prepare_config.json").read_text())
    assert saved["group_by"] == pattern
    assert json.loads((store / "store.json").read_text())["settings"]["group_by"] == pattern
    assert summary.leakage is not None and (store / "leakage.csv").is_file()
    assert "leakage check" in summary.table()


def test_prepare_warns_about_copies_across_splits(corpus, tmp_path, caplog):
    folder, _ = corpus
    with caplog.at_level(logging.WARNING):
        summary = prepare(
            PrepareConfig(folder / "videos", tmp_path / "store", frames=8, height=48, width=64)
        )
    # An ungrouped split of 10 copied recordings puts some copies apart.
    assert summary.leakage["pairs_across_splits"] > 0
    assert "near-duplicate clips lie in different splits" in caplog.text
    rows = read_manifest(tmp_path / "store")
    assert all(row["group"] == row["path"] for row in rows if row["status"] == "ok")
    # The command line: --fail-on-leak turns the finding into an exit status.
    assert main(["leakage", str(tmp_path / "store")]) == 0
    assert main(["leakage", str(tmp_path / "store"), "--fail-on-leak"]) == 1
    assert main(["leakage", str(tmp_path / "store"), "--threshold", "2"]) == 2


def test_real_takes_of_one_fixed_camera_are_not_copies(shared_videos, tmp_path):
    """Real CCTV footage at night: seven takes cut from one fixed camera's recording, each with a
    copy (every transform once), darkened into night footage. The takes share the whole scene;
    their copies must be found and the takes left apart (before the foreground check, 76 pairs of
    takes counted as copies here; since, 1)."""
    source = shared_videos / "pedestrians_cctv_768x576.avi"
    truth = copies.write_real_copy_corpus(
        copies.RealCopyCorpusConfig(tmp_path / "videos", [source], segment_seconds=3.0)
    )
    assert len(truth["recordings"]) == 14
    prepare(
        PrepareConfig(
            tmp_path / "videos",
            tmp_path / "store",
            frames=10,
            height=240,
            width=320,
            workers=1,
            check_leakage=False,
        )
    )
    report = leakage.check_store(leakage.LeakageConfig(tmp_path / "store", within=True))
    score = copies.score_detection([(p.path_a, p.path_b) for p in report.pairs], truth)
    assert score["recall"] >= 5 / 7
    assert score["retakes_taken_for_copies"] <= 1
