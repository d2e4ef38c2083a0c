"""The built-in synthetic night-action dataset: real H.264 videos of a stick figure in the dark.

``write_synthetic_dataset`` writes ``OUT/<class name>/<class-slug>_<nnn>.mp4`` for the original
project's 12 classes, so every later step (prepare, train, evaluate) can run on a fresh machine
without the Kaggle download. The videos imitate what makes NoctAct-HAR hard to read: they are very
dark (mean luma about 10-40 of 255), full of sensor noise and white speckles, and they vary in
duration, frame rate, size and aspect ratio (4:3, 16:9, portrait 9:16), so that letterboxing and
frame sampling are exercised as on the real clips.

Each class is one motion of a stick figure (plus a prop where the action has one: a box, a bar, a
phone, a torch beam, a projectile, a staircase). Motions are written against the clip's own
normalised time ``u`` in [0, 1] with only one to four repetitions per clip, never against seconds:
``prepare`` keeps 10 evenly spaced frames whatever the clip's length, and a motion repeating many
times per clip would alias into noise at 10 samples. Poses also differ per class in single frames
(arm raised, body bent, hand at the ear, a bright beam ...), so a small CNN+RNN separates the
classes from 10 frames letterboxed to sizes as small as 48x64.

Everything is drawn from one random generator per video, seeded by (seed, class index, video
index): the same seed gives the same frames whatever the number of workers or their scheduling.
Only NumPy and PyAV are needed.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nightact.core import files, runs, workers
from nightact.core.names import CLASS_NAMES, SYNTH_CONFIG_FILE
from nightact.core.videos import write_video
from nightact.sources.render import VideoPlan, render_frames

__all__ = [
    "CONFIG_NAME",
    "FRAME_RATES",
    "FRAME_SIZES",
    "class_slug",
    "fit_travel",
    "frame_generator",
    "plan_video",
    "SynthConfig",
    "synthetic_frames",
    "video_path",
    "write_one_video",
    "write_synthetic_dataset",
]

log = logging.getLogger(__name__)

# (height, width), all even for yuv420p: 4:3, 16:9, portrait 9:16 and 3:4, between 120 and 426.
FRAME_SIZES = (
    (120, 160),
    (180, 240),
    (240, 320),
    (144, 256),
    (180, 320),
    (240, 426),
    (320, 180),
    (426, 240),
    (160, 120),
)
# Most clips are landscape; about one in six is portrait, as phone footage is.
_SIZE_WEIGHTS = np.array([2, 2, 2, 2, 2, 2, 1, 1, 0.5]) / 14.5
# Frames per second, with the NTSC rates (24000/1001, 30000/1001) that real phones record.
FRAME_RATES = (15.0, 20.0, 24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0)

CONFIG_NAME = SYNTH_CONFIG_FILE
# Settings that change a video's content: a folder written with other values cannot be resumed.
_CONTENT_SETTINGS = ("seed", "min_seconds", "max_seconds", "size")
_PARTIAL_PREFIX = ".partial-"


@dataclass
class SynthConfig:
    """Settings of one synthetic dataset; saved as ``OUT/synth_config.json``."""

    out: str | os.PathLike
    videos_per_class: int = 8
    seed: int = 0
    min_seconds: float = 2.0
    max_seconds: float = 15.0
    workers: int | None = None  # processes; None means os.cpu_count()
    size: tuple[int, int] | None = None  # (height, width) forced on every video

    def __post_init__(self):
        self.out = Path(self.out)
        if isinstance(self.videos_per_class, bool) or not isinstance(self.videos_per_class, int):
            raise ValueError(f"videos_per_class must be an integer, got {self.videos_per_class!r}")
        if self.videos_per_class < 1:
            raise ValueError(f"videos_per_class must be at least 1, got {self.videos_per_class}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not (math.isfinite(self.min_seconds) and math.isfinite(self.max_seconds)):
            raise ValueError(
                f"durations must be finite, got {self.min_seconds} and {self.max_seconds}"
            )
        if self.min_seconds <= 0:
            raise ValueError(f"min_seconds must be positive, got {self.min_seconds}")
        if self.max_seconds < self.min_seconds:
            raise ValueError(
                f"max_seconds ({self.max_seconds}) must not be below min_seconds "
                f"({self.min_seconds})"
            )
        if self.max_seconds > 600:
            raise ValueError(f"max_seconds must be at most 600, got {self.max_seconds}")
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
        if self.size is not None:
            try:
                height, width = (int(side) for side in self.size)
            except (TypeError, ValueError):
                raise ValueError(f"size must be (height, width), got {self.size!r}") from None
            if height < 16 or width < 16 or height % 2 or width % 2:
                raise ValueError(
                    f"size must be even and at least 16x16 (H.264 needs even sides), "
                    f"got {height}x{width}"
                )
            self.size = (height, width)

    def to_json(self) -> dict:
        settings = asdict(self)
        settings["out"] = str(self.out)
        settings["size"] = list(self.size) if self.size else None
        return settings


def class_slug(class_name: str) -> str:
    """The file-name form of a class: lower case, spaces as hyphens ("Throwing objects" ->
    "throwing-objects")."""
    return "-".join(class_name.lower().split())


def video_path(out: str | os.PathLike, class_index: int, video_index: int) -> Path:
    """Where video ``video_index`` of class ``class_index`` lives under ``out``."""
    name = CLASS_NAMES[class_index]
    return Path(out) / name / f"{class_slug(name)}_{video_index:03d}.mp4"


# --- the plan of one video ---------------------------------------------------------------------


# Repetitions of each motion per clip: few enough that 10 samples still see its shape.
_CYCLES = {
    "Drink": (1.0, 2.0),
    "Picking": (1.0, 2.0),
    "Push": (1.0, 2.0),
    "Run": (2.0, 4.0),
    "Throwing objects": (1.0, 2.0),
    "boxing": (1.5, 3.0),
    "lifting weights": (1.0, 2.5),
    "receiving the phone": (1.0, 1.0),
    "stand": (0.5, 1.5),
    "walking on stairs": (4.0, 7.0),  # steps climbed per clip
    "walking with flashlight": (1.5, 3.0),
    "waving": (1.5, 3.5),
}


def plan_video(config: SynthConfig, class_index: int, video_index: int) -> VideoPlan:
    """Draw one video's size, rate, length, look and motion from its own seeded generator."""
    rng = _video_rng(config.seed, class_index, video_index)
    name = CLASS_NAMES[class_index]
    # Draw the size even when it is forced, so the other settings do not depend on `size`.
    height, width = FRAME_SIZES[rng.choice(len(FRAME_SIZES), p=_SIZE_WEIGHTS)]
    if config.size is not None:
        height, width = config.size
    fps = float(FRAME_RATES[rng.integers(len(FRAME_RATES))])
    seconds = rng.uniform(config.min_seconds, config.max_seconds)
    frame_count = max(2, round(seconds * fps))

    # In portrait frames a figure scaled to the height would not fit across (bending over,
    # pushing, throwing): scale it by the width there.
    usable_height = min(height, width)
    ground_y = height * rng.uniform(0.84, 0.95)
    body = usable_height * rng.uniform(0.5, 0.72)
    body = min(body, ground_y - 0.04 * height)
    centre_x = width * rng.uniform(0.38, 0.62)
    low, high = _CYCLES[name]
    plan = VideoPlan(
        class_index=class_index,
        height=height,
        width=width,
        fps=fps,
        frame_count=frame_count,
        facing=int(rng.choice([-1, 1])),
        body=body,
        centre_x=centre_x,
        ground_y=ground_y,
        brightness=rng.uniform(55.0, 110.0),
        phase=rng.uniform(0.0, 2.0 * math.pi),
        cycles=rng.uniform(low, high),
        background=rng.uniform(7.0, 16.0),
        noise_sigma=rng.uniform(2.0, 6.0),
        speckle_rate=rng.uniform(0.0015, 0.006),
        hot_pixel_rate=rng.uniform(0.002, 0.008),
        tint=tuple(float(t) for t in rng.uniform(0.85, 1.0, size=3)),
        lamp=(
            width * rng.uniform(0.0, 1.0),
            height * rng.uniform(0.0, 0.5),
            usable_height * rng.uniform(0.1, 0.4),
            rng.uniform(0.0, 14.0),
        ),
    )
    # Class-specific numbers, drawn for every class so the draw order is fixed.
    plan.extra = {
        "span": rng.uniform(0.0, 1.0),  # how far a travelling figure goes, as a fraction of range
        "reach": rng.uniform(0.15, 0.4),  # when the phone reaches the ear, in clip time
        "beam_down": rng.uniform(0.2, 0.55),  # torch beam's angle below horizontal, radians
        "beam_width": rng.uniform(0.22, 0.32),  # beam's half angle, radians
        "beam_length": rng.uniform(0.9, 1.4),  # beam's length in body heights
        "climb": int(rng.choice([-1, 1])),  # stairs: +1 up, -1 down
        "rise": rng.uniform(0.18, 0.3),  # stairs: total rise as a fraction of frame height
        "start": rng.uniform(0.0, 1.0),  # where a travelling figure starts within its range
    }
    fit_travel(plan)
    return plan


def _video_rng(seed: int, class_index: int, video_index: int) -> np.random.Generator:
    # One independent stream per video, so results never depend on which worker drew what.
    return np.random.default_rng([seed, class_index, video_index])


def frame_generator(config: SynthConfig, class_index: int, video_index: int) -> np.random.Generator:
    """The random stream of one video's frames (hot pixels, noise): after the plan's, its own."""
    return _video_rng(config.seed, class_index, video_index).spawn(1)[0]


def fit_travel(plan: VideoPlan) -> None:
    """Choose the path of the travelling classes so the figure stays inside the frame."""
    name = CLASS_NAMES[plan.class_index]
    width, extra = plan.width, plan.extra
    margin = 0.15 * plan.body + 0.06 * width
    room = max(width - 2 * margin, 1.0)
    span_range = {
        "Run": (0.6, 0.95),
        "Push": (0.12, 0.3),
        "walking with flashlight": (0.15, 0.35),
        "walking on stairs": (0.45, 0.7),
    }.get(name)
    if span_range is None:
        extra["x_start"] = extra["x_end"] = plan.centre_x
        return
    span = room * (span_range[0] + (span_range[1] - span_range[0]) * extra["span"])
    # The beam and the box reach ahead of the figure: leave them some room on the way.
    ahead = {"Push": 0.6, "walking with flashlight": 0.6}.get(name, 0.0) * plan.body
    span = min(span, max(room - ahead, 0.0))
    first = margin + (room - span - ahead) * extra["start"]
    if plan.facing > 0:
        extra["x_start"], extra["x_end"] = first, first + span
    else:
        extra["x_start"], extra["x_end"] = width - first, width - first - span
    if name == "walking on stairs":
        # The feet climb (or go down) `rise` of the frame: keep head and feet inside it.
        plan.cycles = float(round(plan.cycles))
        rise = extra["rise"] * plan.height
        plan.body = min(plan.body, 0.86 * plan.height - rise)
        plan.ground_y = max(plan.ground_y, rise + plan.body + 0.04 * plan.height)


def synthetic_frames(
    config: SynthConfig, class_index: int, video_index: int
) -> tuple[VideoPlan, Iterator[np.ndarray]]:
    """The plan and the frames of one video, as :func:`write_synthetic_dataset` writes it."""
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index must be in 0..{len(CLASS_NAMES) - 1}, got {class_index}")
    plan = plan_video(config, class_index, video_index)
    return plan, render_frames(plan, frame_generator(config, class_index, video_index))


# --- writing -----------------------------------------------------------------------------------


def write_one_video(config: SynthConfig, class_index: int, video_index: int) -> Path:
    """Write one video atomically: encode in a private folder beside it, then rename."""
    path = video_path(config.out, class_index, video_index)
    plan, frames = synthetic_frames(config, class_index, video_index)
    # The encoder picks the container from the file's extension, so the temporary file keeps
    # the real name inside a hidden folder on the same file system; os.replace is then atomic.
    partial = Path(tempfile.mkdtemp(prefix=_PARTIAL_PREFIX, dir=path.parent))
    try:
        # Synthetic pictures need no careful encoding: the fastest preset cuts encoding ~3x.
        write_video(partial / path.name, frames, fps=plan.fps, preset="ultrafast")
        os.replace(partial / path.name, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def _write_job(job: tuple[SynthConfig, int, int]) -> Path:
    """Worker: :func:`write_one_video` of one (config, class index, video index)."""
    return write_one_video(*job)


def _check_resumable(config: SynthConfig) -> None:
    """Refuse to mix videos made with other content settings into an existing folder."""
    saved_path = config.out / CONFIG_NAME
    if not saved_path.is_file():
        return
    runs.require_same_settings(
        runs.read_json(saved_path, "synthetic dataset config"),
        config.to_json(),
        where=config.out,
        what="a synthetic dataset",
        remedy="use an empty folder or the same settings to resume",
        keys=_CONTENT_SETTINGS,
    )


def _write_config(config: SynthConfig) -> None:
    settings = config.to_json()
    settings["class_names"] = list(CLASS_NAMES)
    files.write_json_atomic(config.out / CONFIG_NAME, settings)


def write_synthetic_dataset(config: SynthConfig) -> list[Path]:
    """Write the synthetic dataset under ``config.out``; return every video's path, in order.

    Videos already present are kept (an interrupted run resumes); each new one is written to a
    temporary name and renamed when complete, so no half-written file ever carries a real name.
    """
    out = config.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    _check_resumable(config)
    out.mkdir(parents=True, exist_ok=True)
    _write_config(config)

    tasks, paths = [], []
    for class_index, name in enumerate(CLASS_NAMES):
        class_folder = out / name
        class_folder.mkdir(exist_ok=True)
        # Leftovers of a run that was killed before it could clean up.
        for leftover in class_folder.glob(_PARTIAL_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for video_index in range(config.videos_per_class):
            path = video_path(out, class_index, video_index)
            paths.append(path)
            if not path.is_file():
                tasks.append((class_index, video_index))
    skipped = len(paths) - len(tasks)
    if skipped:
        log.info("%s: %d of %d videos already present, skipped", out, skipped, len(paths))

    jobs = [(config, class_index, video_index) for class_index, video_index in tasks]
    with tqdm(total=len(paths), initial=skipped, desc="synth", unit="video") as progress:
        for _ in workers.map_unordered(_write_job, jobs, config.workers):
            progress.update()
    log.info("%s: wrote %d synthetic videos", out, len(tasks))
    return paths
