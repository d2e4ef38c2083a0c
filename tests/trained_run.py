"""A small trained run on three synthetic classes, and long videos joined from known classes.

Shared by the timeline and export tests; the run is trained once per test session (cached under
pytest's session temporary folder) and takes about 15 s on a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nightact.core.videos import write_video
from nightact.sources.synthetic import CLASS_NAMES, SynthConfig, synthetic_frames

# Three actions a tiny model tells apart after a few epochs.
CLASSES = ("Run", "stand", "walking with flashlight")
FRAMES, HEIGHT, WIDTH = 8, 36, 48
VIDEO_SIZE = (48, 64)
FPS = 25.0
CLIP_SECONDS = (1.2, 2.0)  # drawn uniformly for each clip


def render(class_name: str, video_index: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Frames of one synthetic video of ``class_name`` (seconds at FPS, size VIDEO_SIZE)."""
    config = SynthConfig(
        "unused", seed=seed, min_seconds=seconds, max_seconds=seconds, size=VIDEO_SIZE
    )
    plan, frames = synthetic_frames(config, CLASS_NAMES.index(class_name), video_index)
    return np.stack(list(frames))


def write_class_folders(folder: Path, videos_per_class: int, seconds=CLIP_SECONDS) -> Path:
    """FOLDER/<class>/<n>.mp4 for CLASSES, at FPS, lengths drawn between ``seconds``."""
    rng = np.random.default_rng(5)
    for name in CLASSES:
        for index in range(videos_per_class):
            frames = render(name, index, float(rng.uniform(*seconds)))
            # Written at one rate, as the long video is: a duration is frames / FPS.
            write_video(folder / name / f"{index:03d}.mp4", frames, fps=FPS)
    return folder


def trained_run(base: Path) -> Path:
    """A cnn_gru run trained on CLASSES (cached in ``base``), with its store beside it."""
    run = base / "run"
    if (run / "result.json").is_file():
        return run
    import keras

    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.training.train import TrainConfig, train

    videos = write_class_folders(base / "videos", videos_per_class=36)
    store = base / "store"
    prepare(PrepareConfig(videos, store, frames=FRAMES, height=HEIGHT, width=WIDTH, workers=1))
    keras.utils.set_random_seed(3)
    train(
        TrainConfig(
            data=str(store),
            model="cnn_gru",
            out=str(run),
            epochs=20,
            batch_size=8,
            learning_rate=3e-3,
            seed=3,
            units=(16, 16),
            dropout=0.3,
            conv_filters=8,
            conv_kernel=4,
            conv_stride=4,
            # XLA compiles for a minute on a busy 2-core machine; this model trains in seconds.
            xla=False,
        ),
        verbose=0,
    )
    return run


def write_long_video(
    path: Path, segments: list[tuple[str, int]], first_index: int = 100, seed: int = 9
) -> list[tuple[float, float, str]]:
    """Join fresh synthetic clips (video indices from ``first_index``, unseen in training).

    Each segment is (class, clips): that many clips of the class back to back, each as long as a
    training clip (a synthetic clip plays its action over its whole length, so a longer clip
    would show a slower action). Returns the truth as (start, end, class) in seconds.
    """
    rng = np.random.default_rng(seed)
    truth, chunks, start, index = [], [], 0.0, first_index
    for name, clips in segments:
        frames = np.concatenate(
            [
                render(name, index + offset, float(rng.uniform(*CLIP_SECONDS)))
                for offset in range(clips)
            ]
        )
        index += clips
        chunks.append(frames)
        truth.append((start, start + len(frames) / FPS, name))
        start += len(frames) / FPS
    write_video(path, (frame for chunk in chunks for frame in chunk), fps=FPS)
    return truth


def tiny_run(base: Path) -> Path:
    """An untrained cnn_gru saved as a run folder (model.keras, classes.json): seconds to make.

    Its output weights are scaled up so its probabilities spread out and labels mean something
    to compare; for tests of plumbing, not of learning.
    """
    run = base / "tiny-run"
    if (run / "model.keras").is_file():
        return run
    import keras

    from nightact.core import runs
    from nightact.nets.models import build_model

    keras.utils.set_random_seed(7)
    model = build_model(
        "cnn_gru", FRAMES, HEIGHT, WIDTH, len(CLASSES), units=(8, 8), dropout=0.1,
        conv_filters=4, conv_kernel=4, conv_stride=4,
    )  # fmt: skip
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 20, bias])
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    runs.write_classes(run, CLASSES)
    return run


def export_onnx(run: Path, path: Path) -> Path:
    """``nightact export RUN --format onnx``, in its own process: it works under either backend.

    The command chooses TensorFlow, whose converter writes the ONNX file, however the calling
    process's Keras runs (the suite's default is JAX on a CPU).
    """
    import os
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-m", "nightact.cli", "export", str(run), "--format", "onnx"]
        + ["--out", str(path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return path
