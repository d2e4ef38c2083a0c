"""Corpora of known near-duplicates, to measure the leakage detector (:mod:`nightact.data.leakage`).

``write_copy_corpus`` writes synthetic night videos (:mod:`nightact.sources.synthetic`), then for
each one a transformed copy of the same recording, and a *retake*: the same scene (same size,
background, lamp, hot pixels and noise levels; noise of its own in every frame) with another
performance of the same action (another figure size, brightness, position, direction, phase, speed
and length). Copies are the duplicates the detector must find; retakes are the hard negatives it
must leave alone.

On top of those, *dark stills*: scenes in very low light (background 2-6 of 255, the figure only
10-28 above it) where a figure barely moves (``stand``: a sway of about 1 % of its height), each
with a copy and ``takes_per_still`` other takes of the same scene. Near-still footage is where a
detector that matches pictures cannot lean on motion, and where different recordings of one
action look most alike: every take is the same dim figure standing in the same dark room::

    OUT/
      corpus.json                  {"recordings": {path: recording id}, "transforms": {path: name},
                                    "details": {path: what the transform drew}, "dark_stills":
                                    [recording id], "config": CopyCorpusConfig}; paths relative
                                    to OUT
      <class>/<slug>_<nnn>.mp4             an original (recording "<slug>_<nnn>")
      <class>/<slug>_<nnn>_copy-<t>.mp4    a copy of it after transform t (same recording)
      <class>/<slug>_<nnn>_take-1.mp4      another take in the same scene (a recording of its own)
      stand/stand-dark_<nnn>.mp4           a dark still, with its _copy-<t> and _take-<k> as above

Two clips are true duplicates exactly when they share a recording id.

``write_real_copy_corpus`` does the same with real footage: each source video is cut into takes
of one scene filmed by one camera (the hard negatives), each with a transformed copy, and
daylight footage is darkened into night footage.

Transforms (``TRANSFORMS``), each with randomly drawn strength: ``reencode`` (x264 at a much
lower bitrate), ``resize`` (to 0.55-1.6 of the size), ``mirror`` (left-right), ``gamma``
(gamma 0.6-1.7 and gain 0.7-1.4), ``noise`` (Gaussian sensor noise and white speckles),
``trim`` (5-20 % cut at each end), ``crop`` (3-10 % of each border), and ``mixed`` (three of the
others at once).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm.auto import tqdm

from nightact.core import files
from nightact.core.videos import write_video
from nightact.sources import synthetic

log = logging.getLogger(__name__)

TRANSFORMS = ("reencode", "resize", "mirror", "gamma", "noise", "trim", "crop", "mixed")
CORPUS_FILE = "corpus.json"


@dataclass
class CopyCorpusConfig:
    """Settings of one corpus; saved in ``OUT/corpus.json``."""

    out: str | os.PathLike
    originals_per_class: int = 3
    classes: int = 12  # the first N of synthetic.CLASS_NAMES
    copies_per_original: int = 1  # transforms are dealt in turn over all originals
    retakes_per_original: int = 1
    dark_stills: int = 12  # extra originals: a near-still figure ("stand") in very low light
    takes_per_still: int = 2  # other takes in the scene of each dark still
    seed: int = 0
    min_seconds: float = 1.5
    max_seconds: float = 3.0
    size: tuple[int, int] = (120, 160)  # (height, width) of the originals

    def __post_init__(self):
        self.out = Path(self.out)
        if not 1 <= self.classes <= len(synthetic.CLASS_NAMES):
            raise ValueError(f"classes must be in 1..{len(synthetic.CLASS_NAMES)}")
        for name in (
            "originals_per_class",
            "copies_per_original",
            "retakes_per_original",
            "dark_stills",
            "takes_per_still",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.originals_per_class < 1:
            raise ValueError("originals_per_class must be at least 1")
        self.size = (int(self.size[0]), int(self.size[1]))


def read_frames(path: str | os.PathLike) -> tuple[list[np.ndarray], float]:
    """Every frame of a video as RGB uint8, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no decodable frames")
    return frames, fps


def _even(value: float) -> int:
    return max(16, int(round(value / 2)) * 2)


def _resize(frames: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    return [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        .reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR")
        .to_ndarray()
        for frame in frames
    ]


def apply_transform(
    name: str, frames: list[np.ndarray], rng: np.random.Generator
) -> tuple[list[np.ndarray], dict]:
    """Apply transform ``name`` to a video's frames; return the frames and what was drawn.

    ``reencode`` returns the frames unchanged and asks for a low-quality encoding in the
    returned details (``crf``); the caller encodes.
    """
    height, width = frames[0].shape[:2]
    if name == "reencode":
        return frames, {"crf": int(rng.integers(34, 42))}
    if name == "resize":
        scale = float(rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.25, 1.6)]))
        return _resize(frames, _even(height * scale), _even(width * scale)), {"scale": scale}
    if name == "mirror":
        return [np.ascontiguousarray(frame[:, ::-1]) for frame in frames], {}
    if name == "gamma":
        gamma, gain = float(rng.uniform(0.6, 1.7)), float(rng.uniform(0.7, 1.4))
        table = np.clip(255.0 * gain * (np.arange(256) / 255.0) ** gamma, 0, 255)
        table = table.round().astype(np.uint8)
        return [table[frame] for frame in frames], {"gamma": gamma, "gain": gain}
    if name == "noise":
        sigma, rate = float(rng.uniform(3.0, 8.0)), float(rng.uniform(0.001, 0.005))
        noisy = []
        for frame in frames:
            values = frame.astype(np.float32) + rng.normal(0.0, sigma, frame.shape[:2])[..., None]
            speckle = rng.random(frame.shape[:2]) < rate
            values[speckle] += 150.0
            noisy.append(np.clip(values, 0, 255).astype(np.uint8))
        return noisy, {"sigma": sigma, "speckle_rate": rate}
    if name == "trim":
        start, end = rng.uniform(0.05, 0.2, size=2)
        first = int(round(start * len(frames)))
        last = len(frames) - int(round(end * len(frames)))
        last = max(last, first + 2)
        return frames[first:last], {"start": float(start), "end": float(end)}
    if name == "crop":
        top, bottom, left, right = rng.uniform(0.03, 0.1, size=4)
        y0, y1 = int(round(top * height)), height - int(round(bottom * height))
        x0, x1 = int(round(left * width)), width - int(round(right * width))
        # Even sides for yuv420p.
        y1 -= (y1 - y0) % 2
        x1 -= (x1 - x0) % 2
        cropped = [np.ascontiguousarray(frame[y0:y1, x0:x1]) for frame in frames]
        return cropped, {"crop": [float(top), float(bottom), float(left), float(right)]}
    if name == "mixed":
        chosen = rng.choice([t for t in TRANSFORMS if t != "mixed"], size=3, replace=False)
        details = {"transforms": [str(t) for t in chosen]}
        for transform in chosen:
            frames, more = apply_transform(str(transform), frames, rng)
            details.update(more)
        return frames, details
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


def retake_plan(
    config: synthetic.SynthConfig,
    class_index: int,
    video_index: int,
    take: int,
    scene: synthetic.VideoPlan | None = None,
) -> synthetic.VideoPlan:
    """The plan of another performance in the scene of video ``video_index``.

    The scene (size, frame rate, background level, lamp, floor line, tint, noise levels and, for
    the stairs, the staircase) is the original's (``scene``, by default its synthetic plan); the
    performance (figure, brightness, facing, position, phase, repetitions, length) is drawn from
    an unrelated plan.
    """
    scene = scene or synthetic.plan_video(config, class_index, video_index)
    # An index far outside any real dataset's range gives an independent performance.
    other = synthetic.plan_video(config, class_index, 100_000 + 1_000 * video_index + take)
    plan = dataclasses.replace(
        scene,
        frame_count=other.frame_count,
        body=min(other.body, scene.ground_y - 0.04 * scene.height),
        brightness=other.brightness,
        phase=other.phase,
        extra=dict(scene.extra),
    )
    if synthetic.CLASS_NAMES[class_index] == "walking on stairs":
        # The staircase is part of the scene: the other take walks the same stairs the other
        # way (going down where the original went up), which draws the very same steps.
        plan.facing = -scene.facing
        plan.extra["x_start"], plan.extra["x_end"] = scene.extra["x_end"], scene.extra["x_start"]
        plan.extra["climb"] = -scene.extra["climb"]
    else:
        # Everywhere else the path is the performer's.
        plan.facing = other.facing
        plan.centre_x = other.centre_x
        plan.cycles = other.cycles
        plan.extra = dict(other.extra)
        synthetic.fit_travel(plan)
    return plan


STILL_CLASS = synthetic.CLASS_NAMES.index("stand")
_STILL_INDEX = 50_000  # video indices of the dark stills' plans: apart from every original's


def _dark_light(config: synthetic.SynthConfig, still: int, take: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, 7907, still, take])


def dark_still_plan(config: synthetic.SynthConfig, still: int) -> synthetic.VideoPlan:
    """The plan of dark still ``still``: a standing figure, 10-28 above a background of 2-6."""
    plan = synthetic.plan_video(config, STILL_CLASS, _STILL_INDEX + still)
    light = _dark_light(config, still, 0)
    return dataclasses.replace(
        plan,
        background=float(light.uniform(2.0, 6.0)),
        brightness=float(light.uniform(10.0, 28.0)),
        noise_sigma=float(light.uniform(1.5, 4.0)),
        # A lamp as faint as the rest: a few levels at most.
        lamp=(*plan.lamp[:3], plan.lamp[3] * 0.3),
        extra=dict(plan.extra),
    )


def dark_take_plan(config: synthetic.SynthConfig, still: int, take: int) -> synthetic.VideoPlan:
    """Another take in the scene of dark still ``still``: the same dark room, another stand."""
    plan = retake_plan(
        config, STILL_CLASS, _STILL_INDEX + still, take, scene=dark_still_plan(config, still)
    )
    plan.brightness = float(_dark_light(config, still, take).uniform(10.0, 28.0))
    return plan


@dataclass
class _Original:
    """One original to write, with the plans of the other takes in its scene."""

    path: Path
    takes: list[synthetic.VideoPlan]
    class_index: int
    video_index: int  # of its synthetic plan: seeds its camera (hot pixels, noise)
    plan: synthetic.VideoPlan | None = None  # None: the synthetic dataset's own video


def _originals(config: CopyCorpusConfig, synth: synthetic.SynthConfig) -> list[_Original]:
    originals = [
        _Original(
            synthetic.video_path(config.out, class_index, video_index),
            [
                retake_plan(synth, class_index, video_index, take)
                for take in range(1, config.retakes_per_original + 1)
            ],
            class_index,
            video_index,
        )
        for class_index in range(config.classes)
        for video_index in range(config.originals_per_class)
    ]
    folder = config.out / synthetic.CLASS_NAMES[STILL_CLASS]
    for still in range(config.dark_stills):
        originals.append(
            _Original(
                folder / f"{synthetic.class_slug(synthetic.CLASS_NAMES[STILL_CLASS])}-dark_"
                f"{still:03d}.mp4",
                [
                    dark_take_plan(synth, still, take)
                    for take in range(1, config.takes_per_still + 1)
                ],
                STILL_CLASS,
                _STILL_INDEX + still,
                dark_still_plan(synth, still),
            )
        )
    return originals


class _SameSensor:
    """The random stream of another take with the same camera: the sensor's hot pixels (the
    renderer's first draw) from the original's stream, the noise of every frame from its own.

    Two takes share a camera's fixed defects, never the noise of a moment: a take that drew its
    frames' noise from the original's stream would carry the original's very noise, which only a
    copy can.
    """

    def __init__(self, camera: np.random.Generator, own: np.random.Generator):
        self._camera, self._own, self._first = camera, own, True

    def random(self, *args, **kwargs):
        source = self._camera if self._first else self._own
        self._first = False
        return source.random(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._own, name)


def _write_original(synth: synthetic.SynthConfig, original: _Original) -> None:
    """Write an original unless it is there (an interrupted corpus resumes)."""
    if original.path.is_file():
        return
    original.path.parent.mkdir(parents=True, exist_ok=True)
    if original.plan is None:
        synthetic.write_one_video(synth, original.class_index, original.video_index)
        return
    frames = synthetic.render_frames(
        original.plan,
        synthetic.frame_generator(synth, original.class_index, original.video_index),
    )
    write_video(original.path, frames, fps=original.plan.fps, preset="ultrafast")


def write_copy_corpus(config: CopyCorpusConfig) -> dict:
    """Write the corpus under ``config.out`` and return the content of ``corpus.json``."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    synth = synthetic.SynthConfig(
        out,
        videos_per_class=config.originals_per_class,
        seed=config.seed,
        min_seconds=config.min_seconds,
        max_seconds=config.max_seconds,
        size=config.size,
        workers=1,
    )
    rng = np.random.default_rng([config.seed, 7919])
    recordings: dict[str, str] = {}
    transforms: dict[str, str] = {}
    details: dict[str, dict] = {}
    turn = 0
    originals = _originals(config, synth)
    for original in tqdm(originals, desc="copy corpus", unit="original"):
        _write_original(synth, original)
        recording = original.path.stem
        recordings[original.path.relative_to(out).as_posix()] = recording
        transforms[original.path.relative_to(out).as_posix()] = "original"
        frames, fps = read_frames(original.path)
        for _ in range(config.copies_per_original):
            name = TRANSFORMS[turn % len(TRANSFORMS)]
            turn += 1
            copied, drawn = apply_transform(name, frames, rng)
            path = original.path.with_name(f"{recording}_copy-{name}.mp4")
            write_video(path, copied, fps=fps, crf=drawn.get("crf", 23), preset="ultrafast")
            relative = path.relative_to(out).as_posix()
            recordings[relative], transforms[relative], details[relative] = recording, name, drawn
        for take, plan in enumerate(original.takes, start=1):
            path = original.path.with_name(f"{recording}_take-{take}.mp4")
            camera = synthetic.frame_generator(synth, original.class_index, original.video_index)
            own = np.random.default_rng(
                [config.seed, 7927, original.class_index, original.video_index, take]
            )
            rendered = synthetic.render_frames(plan, _SameSensor(camera, own))
            write_video(path, rendered, fps=plan.fps, preset="ultrafast")
            relative = path.relative_to(out).as_posix()
            recordings[relative], transforms[relative] = f"{recording}_take-{take}", "retake"
    settings = dataclasses.asdict(config)
    settings["out"] = str(out)
    corpus = {
        "recordings": recordings,
        "transforms": transforms,
        "details": details,
        "dark_stills": [o.path.stem for o in originals if o.plan is not None],
        "config": settings,
    }
    files.write_json_atomic(out / CORPUS_FILE, corpus)
    log.info("%s: %d clips of %d recordings", out, len(recordings), len(set(recordings.values())))
    return corpus


def true_pairs(recordings: dict[str, str]) -> set[tuple[str, str]]:
    """Every pair of paths (sorted) that share a recording: what a perfect detector finds."""
    by_recording: dict[str, list[str]] = {}
    for path, recording in recordings.items():
        by_recording.setdefault(recording, []).append(path)
    pairs = set()
    for members in by_recording.values():
        members = sorted(members)
        pairs.update((a, b) for i, a in enumerate(members) for b in members[i + 1 :])
    return pairs


def score_detection(found: Sequence[tuple[str, str]], corpus: dict) -> dict:
    """Recall and precision of the pairs a detector found against the corpus's truth.

    ``found`` holds (path, path) pairs relative to the corpus folder (as in a store's manifest).
    Also returns the recall per transform, how many retakes (hard negatives) were taken for
    copies, and recall and precision over the pairs that touch a dark still's scene (its
    original, copy or takes: ``dark_stills``).
    """
    recordings, transforms = corpus["recordings"], corpus["transforms"]
    truth = true_pairs(recordings)
    found = {tuple(sorted(pair)) for pair in found}
    hits = found & truth
    per_transform: dict[str, list[int]] = {}
    for a, b in truth:
        name = transforms[b] if transforms[a] == "original" else transforms[a]
        if transforms[a] != "original" and transforms[b] != "original":
            name = "copy-to-copy"
        counts = per_transform.setdefault(name, [0, 0])
        counts[0] += (a, b) in hits
        counts[1] += 1
    retake_errors = sum(
        1
        for a, b in found - truth
        if recordings[a].split("_take-")[0] == recordings[b].split("_take-")[0]
    )
    scenes = set(corpus.get("dark_stills", []))

    def dark(pair: tuple[str, str]) -> bool:
        return any(recordings[path].split("_take-")[0] in scenes for path in pair)

    dark_truth = {pair for pair in truth if dark(pair)}
    dark_found = {pair for pair in found if dark(pair)}
    return {
        "true_pairs": len(truth),
        "found_pairs": len(found),
        "correct_pairs": len(hits),
        "recall": len(hits) / len(truth) if truth else 1.0,
        "precision": len(hits) / len(found) if found else 1.0,
        "recall_per_transform": {
            name: hits_and_total[0] / hits_and_total[1]
            for name, hits_and_total in sorted(per_transform.items())
        },
        "retakes_taken_for_copies": retake_errors,
        "dark_stills": {
            "true_pairs": len(dark_truth),
            "found_pairs": len(dark_found),
            "correct_pairs": len(dark_found & dark_truth),
            "recall": len(dark_found & dark_truth) / len(dark_truth) if dark_truth else 1.0,
            "precision": len(dark_found & dark_truth) / len(dark_found) if dark_found else 1.0,
        },
    }


# --- copies of real footage ---------------------------------------------------------------------

# Gamma and gain that turn daylight footage into night footage: mean luma ~100 becomes ~15.
NIGHT_GAMMA, NIGHT_GAIN = 2.2, 0.6
NIGHT_ABOVE = 40.0  # mean luma above which a source is daylight footage


@dataclass
class RealCopyCorpusConfig:
    """Settings of a corpus cut from real videos; saved in ``OUT/corpus.json``.

    Each source video is one *scene*: it is cut into segments of ``segment_seconds`` (a gap of
    ``gap_seconds`` between them), each segment an original recording, and the other segments
    of the same source are other takes of that scene (the same camera, background and light:
    the hard negatives). Each original gets one transformed copy, the transforms dealt in turn.
    With ``night``, every source brighter than ``NIGHT_ABOVE`` (mean luma) is darkened into a night
    scene (gamma ``NIGHT_GAMMA``, gain ``NIGHT_GAIN``, before encoding; its folder and recordings
    end in "-night"); sources already that dark are night scenes as they are.
    """

    out: str | os.PathLike
    sources: Sequence[str | os.PathLike] = ()
    segment_seconds: float = 3.0
    gap_seconds: float = 0.5
    max_width: int = 640  # sources are decoded at most this wide (1080p would not fit in RAM)
    night: bool = True
    seed: int = 0

    def __post_init__(self):
        self.out = Path(self.out)
        self.sources = [Path(source) for source in self.sources]
        if not self.sources:
            raise ValueError("sources must name at least one video")
        if self.segment_seconds <= 0 or self.gap_seconds < 0:
            raise ValueError("segment_seconds must be positive and gap_seconds not negative")


def _read_scaled(path: Path, max_width: int) -> tuple[list[np.ndarray], float]:
    """Every frame of ``path`` as RGB uint8, scaled to at most ``max_width`` (even sides)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = []
        for frame in container.decode(stream):
            scale = min(1.0, max_width / frame.width)
            width, height = _even(frame.width * scale), _even(frame.height * scale)
            frames.append(frame.reformat(width=width, height=height, format="rgb24").to_ndarray())
    if not frames:
        raise ValueError(f"{path}: no decodable frames")
    return frames, fps


def _night(frames: list[np.ndarray]) -> list[np.ndarray]:
    table = np.clip(255.0 * NIGHT_GAIN * (np.arange(256) / 255.0) ** NIGHT_GAMMA, 0, 255)
    table = table.round().astype(np.uint8)
    return [table[frame] for frame in frames]


def _segments(count: int, fps: float, segment_seconds: float, gap_seconds: float) -> list[slice]:
    length = max(2, int(round(segment_seconds * fps)))
    step = length + int(round(gap_seconds * fps))
    starts = range(0, count - length + 1, step)
    return [slice(start, start + length) for start in starts] or [slice(0, count)]


def write_real_copy_corpus(config: RealCopyCorpusConfig) -> dict:
    """Write the corpus of real footage under ``config.out``; return ``corpus.json``'s content.

    Files: ``OUT/<scene>/<scene>_take-<k>.mp4`` (segment k, recording "<scene>_take-<k>") and
    ``OUT/<scene>/<scene>_take-<k>_copy-<t>.mp4`` (its copy after transform t). Takes of one
    scene share the recording id's part before "_take-", which ``score_detection`` counts as a
    take mistaken for a copy. ``dark_stills`` lists the night scenes.
    """
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, 7933])
    recordings: dict[str, str] = {}
    transforms: dict[str, str] = {}
    details: dict[str, dict] = {}
    night_scenes: list[str] = []
    turn = 0
    for source in tqdm(config.sources, desc="real copy corpus", unit="source"):
        frames, fps = _read_scaled(source, config.max_width)
        luma = float(np.mean([frame.mean() for frame in frames[:: max(1, len(frames) // 20)]]))
        scene, scene_frames = source.stem, frames
        if config.night and luma > NIGHT_ABOVE:
            # Only the night version: a day and a night version of one segment would be copies.
            scene, scene_frames = f"{source.stem}-night", _night(frames)
        if config.night or luma <= NIGHT_ABOVE:
            night_scenes.append(scene)
        folder = out / scene
        for take, part in enumerate(
            _segments(len(scene_frames), fps, config.segment_seconds, config.gap_seconds)
        ):
            recording = f"{scene}_take-{take}"
            segment = scene_frames[part]
            path = folder / f"{recording}.mp4"
            if not path.is_file():
                write_video(path, segment, fps=fps, crf=18, preset="ultrafast")
            relative = path.relative_to(out).as_posix()
            recordings[relative], transforms[relative] = recording, "original"
            name = TRANSFORMS[turn % len(TRANSFORMS)]
            turn += 1
            copied, drawn = apply_transform(name, segment, rng)
            path = folder / f"{recording}_copy-{name}.mp4"
            write_video(path, copied, fps=fps, crf=drawn.get("crf", 23), preset="ultrafast")
            relative = path.relative_to(out).as_posix()
            recordings[relative], transforms[relative], details[relative] = (
                recording,
                name,
                drawn,
            )
    settings = dataclasses.asdict(config)
    settings["out"] = str(out)
    settings["sources"] = [str(source) for source in config.sources]
    corpus = {
        "recordings": recordings,
        "transforms": transforms,
        "details": details,
        "dark_stills": night_scenes,
        "config": settings,
    }
    files.write_json_atomic(out / CORPUS_FILE, corpus)
    log.info("%s: %d clips of %d recordings", out, len(recordings), len(set(recordings.values())))
    return corpus
