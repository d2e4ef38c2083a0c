"""Night-camera shifts: a darkness and noise sweep over stored clips, and a shifted test corpus.

Two questions a night-camera user asks first: how much darker or noisier may my camera be than
the training footage, and does a model trained on one camera still work on another? This module
makes the inputs for both; scoring them is :mod:`nightact.evaluate`'s job.

The sweep (:data:`DARKNESS_LEVELS`, :data:`NOISE_LEVELS`, :func:`degrade`) works on stored uint8
clips in NumPy, deterministically from a seed: pixels in 0-1 go through ``x ** gamma * gain``,
then Gaussian noise of standard deviation ``noise`` is added, and the result is rounded back to
uint8. Level 0 is the clip itself; the last level of each sweep is near unrecognisable on the
synthetic night clips: at gamma 3.2 and gain 0.12 a figure lit at 90 of 255 over a background
of 10 ends up at 1 above a background of 0, and noise of 0.3 (77 of 255) buries it.

The shifted corpus (:func:`write_shifted_corpus`) renders synthetic night videos from a seed
the model never saw (``nightact.synthetic`` with another seed) and changes the camera: darker
(gamma and gain), mirrored, zoomed in, noisier, another frame size and a lower frame rate. It
writes the usual class-folder layout, ready for ``nightact prepare --split 0,0,1``::

    OUT/
      shift_config.json        the ShiftConfig
      <class name>/<slug>_<nnn>.mp4

NumPy and PyAV only: no deep-learning backend is imported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Degradation:
    """One level of a sweep: ``round((x ** gamma) * gain + N(0, noise))`` on pixels in 0-1."""

    level: int
    gamma: float = 1.0
    gain: float = 1.0
    noise: float = 0.0


# Darker and darker, each step about halving the mid-tones; no added noise.
DARKNESS_LEVELS = (
    Degradation(0),
    Degradation(1, gamma=1.2, gain=0.8),
    Degradation(2, gamma=1.5, gain=0.6),
    Degradation(3, gamma=1.8, gain=0.45),
    Degradation(4, gamma=2.2, gain=0.3),
    Degradation(5, gamma=2.7, gain=0.2),
    Degradation(6, gamma=3.2, gain=0.12),
)
# Noisier and noisier at the clips' own brightness; 0.3 is 77 of 255.
NOISE_LEVELS = (
    Degradation(0),
    Degradation(1, noise=0.02),
    Degradation(2, noise=0.05),
    Degradation(3, noise=0.1),
    Degradation(4, noise=0.15),
    Degradation(5, noise=0.2),
    Degradation(6, noise=0.3),
)
SWEEPS = {"darkness": DARKNESS_LEVELS, "noise": NOISE_LEVELS}


def degrade(clips: np.ndarray, degradation: Degradation, seed: int = 0, first_row: int = 0):
    """A degraded copy of uint8 clips (batch, frames, h, w, 3).

    The noise of clip ``first_row + i`` comes from a generator seeded by ``(seed, level, row)``,
    so a clip gets the same noise whatever batch it is read in.
    """
    clips = np.asarray(clips)
    if clips.dtype != np.uint8:
        raise ValueError(f"clips must be uint8, got {clips.dtype}")
    if degradation == Degradation(degradation.level):
        return clips.copy()
    pixels = clips.astype(np.float32) / 255.0
    pixels = np.power(pixels, np.float32(degradation.gamma)) * np.float32(degradation.gain)
    if degradation.noise > 0:
        for offset in range(len(pixels)):
            generator = np.random.default_rng([seed, degradation.level, first_row + offset])
            noise = generator.standard_normal(pixels.shape[1:], dtype=np.float32)
            pixels[offset] += np.float32(degradation.noise) * noise
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class ShiftConfig:
    """A synthetic corpus seen through another, darker, noisier camera."""

    out: str
    videos_per_class: int = 10
    seed: int = 1000  # the synthetic dataset's seed; the training corpus should use another
    min_seconds: float = 2.0
    max_seconds: float = 3.0
    size: tuple[int, int] = (90, 160)  # (height, width), 16:9 where the demo's videos are 4:3
    frame_stride: int = 2  # keep every n-th rendered frame: 1/n of the frame rate
    gamma: float = 1.5  # darker mid-tones
    gain: float = 0.6  # darker overall
    mirror: bool = True  # every video mirrored left-right
    zoom: float = 1.25  # a centred crop of 1/zoom of each side, stretched back to full size
    noise: float = 0.03  # extra sensor noise, standard deviation in 0-1 units
    workers: int = 1

    def __post_init__(self) -> None:
        self.out = str(self.out)
        self.size = tuple(int(side) for side in self.size)
        if self.videos_per_class < 1:
            raise ValueError(f"videos_per_class must be at least 1, got {self.videos_per_class}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be at least 1, got {self.frame_stride}")
        if self.zoom < 1.0:
            raise ValueError(f"zoom must be at least 1 (a crop), got {self.zoom}")
        if self.gamma <= 0 or self.gain <= 0 or self.noise < 0:
            raise ValueError(
                f"gamma and gain must be positive and noise non-negative, got "
                f"{self.gamma}, {self.gain}, {self.noise}"
            )


def shift_frame(frame: np.ndarray, config: ShiftConfig, generator: np.random.Generator):
    """One rendered RGB uint8 frame as the shifted camera sees it."""
    picture = frame.astype(np.float32) / 255.0
    if config.zoom > 1.0:
        picture = zoom_centre(picture, config.zoom)
    if config.mirror:
        picture = picture[:, ::-1]
    picture = np.power(picture, np.float32(config.gamma)) * np.float32(config.gain)
    if config.noise > 0:
        picture += (
            np.float32(config.noise)
            * generator.standard_normal(picture.shape[:2], dtype=np.float32)[..., None]
        )
    return np.rint(np.clip(picture, 0.0, 1.0) * 255.0).astype(np.uint8)


def zoom_centre(picture: np.ndarray, zoom: float) -> np.ndarray:
    """The centred 1/zoom crop of a (h, w, c) float picture, stretched back (bilinear)."""
    height, width = picture.shape[:2]

    def axis(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        span = (size - 1) / zoom
        start = (size - 1 - span) / 2.0
        coordinates = start + np.linspace(0.0, span, size)
        low = np.floor(coordinates).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        return low, high, (coordinates - low).astype(np.float32)

    top, bottom, fraction_y = axis(height)
    left, right, fraction_x = axis(width)
    rows = (
        picture[top] * (1 - fraction_y)[:, None, None] + picture[bottom] * fraction_y[:, None, None]
    )
    return (
        rows[:, left] * (1 - fraction_x)[None, :, None] + rows[:, right] * fraction_x[None, :, None]
    )


def write_shifted_corpus(config: ShiftConfig) -> list[Path]:
    """Render the shifted corpus into ``config.out``; return the video paths, in order.

    Videos already present are kept (a rerun resumes); a folder made with other settings is
    refused.
    """
    out = Path(config.out)
    settings = dataclasses.asdict(config)
    settings.pop("workers")
    settings["size"] = list(config.size)
    saved = out / "shift_config.json"
    if saved.exists():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if previous != settings:
            raise ValueError(f"{out} holds a shifted corpus made with other settings; use another")
    out.mkdir(parents=True, exist_ok=True)
    temporary = saved.with_name(saved.name + ".tmp")
    temporary.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    os.replace(temporary, saved)

    from nightact.synthetic import CLASS_NAMES, video_path

    tasks = [
        (config, class_index, video_index)
        for class_index in range(len(CLASS_NAMES))
        for video_index in range(config.videos_per_class)
    ]
    paths = [video_path(out, class_index, video_index) for _, class_index, video_index in tasks]
    todo = [task for task, path in zip(tasks, paths, strict=True) if not path.exists()]
    with tqdm(
        total=len(paths), initial=len(paths) - len(todo), desc="shifted", unit="video"
    ) as bar:
        if config.workers <= 1:
            for task in todo:
                _write_shifted(task)
                bar.update()
        else:
            import concurrent.futures
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
                for _ in pool.map(_write_shifted, todo):
                    bar.update()
    return paths


def _write_shifted(task: tuple) -> Path:
    """Render, shift and encode one video; written under a temporary name, then renamed."""
    from nightact.synthetic import SynthConfig, synthetic_frames, video_path
    from nightact.videos import write_video

    config, class_index, video_index = task
    synth = SynthConfig(
        config.out,
        seed=config.seed,
        min_seconds=config.min_seconds,
        max_seconds=config.max_seconds,
        size=config.size,
    )
    plan, frames = synthetic_frames(synth, class_index, video_index)
    generator = np.random.default_rng([config.seed, class_index, video_index, 0x5F7])
    kept = (
        shift_frame(frame, config, generator)
        for index, frame in enumerate(frames)
        if index % config.frame_stride == 0
    )
    path = video_path(config.out, class_index, video_index)
    partial = path.with_name(f".partial-{path.name}")
    write_video(partial, kept, fps=plan.fps / config.frame_stride, preset="ultrafast")
    os.replace(partial, path)
    return path
