"""A shifted test corpus: synthetic night videos seen through another, darker camera.

Test and benchmark support, not part of the installed package. :func:`write_shifted_corpus`
renders synthetic night videos from a seed the model never saw (:mod:`nightact.sources.synthetic`
with another seed) and changes the camera: darker (gamma and gain), mirrored, zoomed in, noisier,
another frame size and a lower frame rate. It writes the usual class-folder layout, ready for
``nightact prepare --split 0,0,1``::

    OUT/
      shift_config.json        the ShiftConfig
      <class name>/<slug>_<nnn>.mp4
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nightact.core.videos import write_video
from nightact.sources.synthetic import CLASS_NAMES, SynthConfig, synthetic_frames, video_path


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
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
                for _ in pool.map(_write_shifted, todo):
                    bar.update()
    return paths


def _write_shifted(task: tuple) -> Path:
    """Render, shift and encode one video; written under a temporary name, then renamed."""
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
