"""Shared fixtures: real video files written with a real encoder, and the shared real clips."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# First, before any test module imports Keras: nightact picks the backend the suite runs under
# (the user's default: JAX on a CPU; KERAS_BACKEND, as make test's TensorFlow leg sets it, wins).
import nightact  # noqa: F401
from nightact.core import backend
from nightact.core.videos import write_video

# Real footage nobody on the project made; present in the team's checkout, absent in a user's.
SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"

BARCODE_BITS = 8


def barcode_frame(index: int, height: int = 64, width: int = 96) -> np.ndarray:
    """An RGB frame whose vertical bars spell ``index`` in binary (most significant bit left).

    The bars are wide and fully black or white, so H.264 compression and scaling keep them
    readable: a decoded frame tells which source frame it is.
    """
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    bar = width // BARCODE_BITS
    for bit in range(BARCODE_BITS):
        if (index >> (BARCODE_BITS - 1 - bit)) & 1:
            frame[:, bit * bar : (bit + 1) * bar] = 255
    return frame


def read_barcode(frame: np.ndarray) -> int:
    """Read back the index of a frame made by :func:`barcode_frame`, after any scaling.

    The frame must span the barcode's full width (vertical padding is fine: the middle row is read).
    """
    middle_row = frame[frame.shape[0] // 2].mean(axis=1)
    bar = frame.shape[1] / BARCODE_BITS
    value = 0
    for bit in range(BARCODE_BITS):
        value = (value << 1) | int(middle_row[int((bit + 0.5) * bar)] > 127)
    return value


def write_barcode_video(
    path: Path,
    count: int,
    height: int = 64,
    width: int = 96,
    fps: int = 25,
    frame_times: list[float] | None = None,
    keyframe_interval: int | None = None,
) -> Path:
    """Write ``count`` barcode frames as H.264; ``frame_times`` (seconds) makes it variable-rate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "veryfast"}
        if keyframe_interval:
            # A keyframe every N frames and no scene-cut keyframes in between.
            stream.codec_context.gop_size = keyframe_interval
            stream.options = {**stream.options, "x264-params": "scenecut=0"}
        time_base = Fraction(1, 1000)
        stream.codec_context.time_base = time_base
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(barcode_frame(index, height, width), format="rgb24")
            seconds = frame_times[index] if frame_times else index / fps
            frame.pts = round(seconds / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def remux_mp4(source: Path, target: Path, faststart: bool = True, trim_frames: int = 0) -> Path:
    """Copy a video's packets into an MP4 without re-encoding, as ``ffmpeg -c copy`` does.

    ``faststart`` puts the index (the moov box) before the frames, as streaming sites serve
    files. ``trim_frames`` moves the first frames' timestamps below zero, so the muxer writes an
    edit list that hides them: what a stream-copy cut between keyframes leaves behind.
    """
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(source)) as reader, av.open(str(target), "w", options=options) as writer:
        stream = reader.streams.video[0]
        copy = writer.add_stream_from_template(stream)
        step = round(1 / (stream.average_rate * stream.time_base))
        for packet in reader.demux(stream):
            if packet.dts is None:  # the demuxer's closing flush packet
                continue
            packet.pts -= trim_frames * step
            packet.dts -= trim_frames * step
            packet.stream = copy
            writer.mux(packet)
    return target


def decodable_frames(path: Path) -> int:
    """Frames that decode front to back, up to the first error, counted with PyAV alone."""
    count = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(video=0):
                count += 1
        except av.FFmpegError:
            pass
    return count


def cut_file(path: Path, keep: float = 0.5) -> Path:
    """Keep the first ``keep`` of a file's bytes, as an interrupted download or copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_truncated_mp4(path: Path, count: int = 49, trim_frames: int = 0) -> Path:
    """A barcode MP4 from the real encoder, remuxed with its index first, then cut in half.

    The index still promises ``count`` frames (less ``trim_frames`` hidden by an edit list); about
    half of them decode. Noise on the bars keeps the frames large next to the index, so the cut
    falls among the frames, while each frame still reads back as its number.
    """
    rng = np.random.default_rng(count)
    frames = []
    for index in range(count):
        bars = barcode_frame(index)
        noise = rng.integers(0, 70, bars.shape, dtype=np.uint8)
        frames.append(np.where(bars > 127, 255 - noise, noise))
    whole = path.with_name(f"{path.stem}.whole.mp4")
    write_video(whole, frames)
    remux_mp4(whole, path, trim_frames=trim_frames)
    whole.unlink()
    return cut_file(path)


def make_synthetic_store(
    folder: Path,
    videos_per_class: int,
    frames: int,
    height: int = 24,
    width: int = 32,
    seconds: tuple[float, float] = (1.0, 1.5),
    workers: int = 1,
) -> Path:
    """Synthetic videos at 48x64 under FOLDER/videos, prepared into the store FOLDER/store."""
    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    write_synthetic_dataset(
        SynthConfig(
            folder / "videos",
            videos_per_class=videos_per_class,
            min_seconds=seconds[0],
            max_seconds=seconds[1],
            size=(48, 64),
            workers=workers,
        )
    )
    store = folder / "store"
    prepare(
        PrepareConfig(
            folder / "videos", store, frames=frames, height=height, width=width, workers=workers
        )
    )
    return store


@pytest.fixture
def barcode_video(tmp_path):
    """Factory for barcode videos in the test's own folder."""

    def make(name: str = "clip.mp4", count: int = 40, **kwargs) -> Path:
        return write_barcode_video(tmp_path / name, count, **kwargs)

    return make


@pytest.fixture
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real clips not available: {SHARED_VIDEOS} is absent (team checkout only)")
    return SHARED_VIDEOS


def write_run_folder(
    folder: Path,
    config: dict,
    class_names=None,
    history: list[dict] | None = None,
    metrics: dict | None = None,
) -> Path:
    """A run folder written by hand in the format nightact.core.runs documents (no training).

    ``RUN/config.json`` always; ``classes.json``, ``history.csv`` and ``evaluation/metrics.json``
    when given. The callers add ``model.keras`` where they need one.
    """
    import csv
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if class_names is not None:
        (folder / "classes.json").write_text(json.dumps({"class_names": list(class_names)}))
    if history:
        with open(folder / "history.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    if metrics is not None:
        (folder / "evaluation").mkdir()
        (folder / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    """A prepared store of the synthetic videos: 6 frames of 24x32, 10 videos per class.

    Shared by every test module that needs one: treat it as read-only.
    """
    return make_synthetic_store(
        tmp_path_factory.mktemp("synthetic"), videos_per_class=10, frames=6, workers=2
    )


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, synthetic_store) -> Path:
    """A finished one-epoch run of a small CNN GRU on ``synthetic_store`` (it need not learn).

    Tests may add evaluations to it; they must not retrain it.
    """
    from nightact.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("finished") / "run"
    config = TrainConfig(
        data=synthetic_store,
        model="cnn_gru",
        out=run,
        epochs=1,
        batch_size=8,
        units=(8, 8),
        conv_filters=4,
        conv_kernel=3,
        conv_stride=2,
    )
    train(config, verbose=0)
    return run


class CudnnDtypeError(Exception):
    """Stands in for JAX's cuDNN LSTM failing on 16-bit floats on a GPU.

    There it fails while the step is compiled (``ValueError: Unknown output type float16`` from
    ``jaxlib/gpu_rnn.py``, measured on an H200), after Keras' fallback to its own loop can catch
    it; an exception type Keras does not catch behaves the same way here.
    """


@pytest.fixture
def simulated_jax_gpu(monkeypatch) -> list[str]:
    """Keras' JAX LSTM as on a GPU: sent to a cuDNN stand-in that takes float32 only.

    Keras asks ``_is_gpu_available()`` before it calls ``jax.experimental.rnn.lstm``, which has
    no CPU implementation; both are replaced, the latter by JAX's own reference LSTM (the same
    equations) behind cuDNN's float32-only rule. Returns the input dtypes it was called with.
    """
    import importlib

    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("simulates JAX's cuDNN path")
    import jax.numpy as jnp
    from jax.experimental import rnn

    calls = []

    def cudnn_lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers,
                   dropout, bidirectional, precision=None):  # fmt: skip
        calls.append(str(x.dtype))
        if x.dtype != jnp.float32 or weights.dtype != jnp.float32:
            raise CudnnDtypeError(f"Unknown output type {x.dtype}")
        unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, False)
        return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size,
                            num_layers, dropout, bidirectional)  # fmt: skip

    # Imported by name: the package `keras.src.backend.jax` exports a function called `rnn`.
    keras_rnn = importlib.import_module("keras.src.backend.jax.rnn")
    monkeypatch.setattr(keras_rnn, "_is_gpu_available", lambda: True)
    monkeypatch.setattr(rnn, "lstm", cudnn_lstm)
    return calls


# --- a machine with or without an NVIDIA GPU, as the driver reports it ---------------------------


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    """No driver entry and no nvidia-smi on PATH (none is on the project's machines anyway)."""
    monkeypatch.setattr(backend, "NVIDIA_GPUS", tmp_path / "no-driver")
    folders = [
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if not Path(folder, "nvidia-smi").exists()
    ]
    monkeypatch.setenv("PATH", os.pathsep.join(folders or [str(tmp_path)]))


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """The driver's /proc entry for one GPU and its device file; no GPU hidden on purpose."""
    gpus = tmp_path / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    monkeypatch.setattr(backend, "NVIDIA_GPUS", gpus)
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(backend, "NVIDIA_DEVICES", (tmp_path / "nvidiactl",))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
