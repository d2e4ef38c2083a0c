"""Benchmark `nightact train`'s training path against the original project's training loop.

Both styles train the same model (nightact.nets.models.build_model, same seed) on the same clips,
read by the same memory-mapped batch reader (nightact.data.batches.ClipBatches), with the same
batch size:

- nightact: ``model.fit`` with the compiled training step, categorical cross-entropy, and the
  accuracy taken from the training forward pass, as ``nightact train`` runs it.
- original: the original notebooks' style, in our words: an eager ``tf.GradientTape`` loop,
  MSLE loss on the softmax output, and a second, inference-mode forward pass per step only to
  compute the batch accuracy.

Each (model, style) pair runs in a fresh process so its peak memory is its own: the peak resident
set size of the process on a CPU, or the GPU allocator's peak where a GPU is used. Throughput is
clips per second over the timed epochs, after one untimed warm-up epoch (tracing, compilation).
The styles take turns, ``--repeats`` times, and each keeps its best run: on a shared machine the
best run is the one least slowed down by others. The clips are random uint8 pixels in a
memory-mapped .npy file, like a prepared store's.

    python benchmarks/train.py                          # cnn_gru and lstm, 10 x 60x80, batch 16
    python benchmarks/train.py --models cnn_gru --steps 5 --epochs 1   # a quick run
    python benchmarks/train.py --full-shape             # on a GPU: all six at 10 x 240x320, batch
                                                        # 64, mixed_float16, ms per step

Prints a table and writes benchmarks/results/train.json. TensorFlow backend only (the original's
loop uses tf.GradientTape).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from nightact.core.names import MODEL_NAMES, NUM_CLASSES, ORIGINAL_MS_PER_STEP

HERE = Path(__file__).resolve().parent
STYLES = ("nightact", "original")


def make_clips(folder: Path, count: int, frames: int, height: int, width: int, seed: int):
    """Random clips and labels on disk, as a prepared store keeps them."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(seed)
    clips = open_memmap(
        folder / "clips.npy", mode="w+", dtype=np.uint8, shape=(count, frames, height, width, 3)
    )
    # Dark, noisy frames, written a clip at a time to keep memory flat.
    for index in range(count):
        clips[index] = rng.integers(0, 60, size=clips.shape[1:], dtype=np.uint8)
    clips.flush()
    np.save(folder / "labels.npy", rng.integers(0, NUM_CLASSES, size=count).astype(np.int64))


def open_clips(folder: Path):
    clips = np.load(folder / "clips.npy", mmap_mode="r")
    return common.split_from_arrays(clips, np.load(folder / "labels.npy"))


def worker(args) -> dict:
    """One (model, style) measurement in this process; returns its numbers."""
    import keras
    import tensorflow as tf

    from nightact.data.batches import ClipBatches
    from nightact.training.train import TrainConfig, build_and_compile

    split = open_clips(Path(args.data))
    frames, height, width = split.frames.shape[1:4]
    keras.utils.set_random_seed(0)
    config = TrainConfig(
        data="benchmark",
        model=args.model,
        out="benchmark",
        batch_size=args.batch_size,
        learning_rate=1e-4,
        loss="crossentropy" if args.style == "nightact" else "msle",
        mixed_precision=args.mixed_precision,
        frames=frames,
        height=height,
        width=width,
        **common.model_settings(args.full_shape),
    )
    model = build_and_compile(config, NUM_CLASSES)
    batches = ClipBatches(split, args.batch_size, shuffle=True, seed=0)
    steps = len(batches)
    epoch_seconds = []

    if args.style == "nightact":

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                epoch_seconds.append(time.perf_counter() - self.started)

        model.fit(
            batches,
            steps_per_epoch=steps,
            epochs=1 + args.epochs,
            callbacks=[Timer()],
            verbose=0,
            shuffle=False,
        )
    else:
        optimizer = model.optimizer  # Adam, wrapped in a LossScaleOptimizer under mixed_float16
        loss_function = keras.losses.MeanSquaredLogarithmicError()
        accuracy_function = keras.metrics.categorical_accuracy
        index = 0
        for _ in range(1 + args.epochs):
            started = time.perf_counter()
            accuracies = []
            for _ in range(steps):
                clips, labels = batches[index]
                index += 1
                with tf.GradientTape() as tape:
                    probabilities = model(clips, training=True)
                    loss = loss_function(labels, probabilities)
                    scaled = optimizer.scale_loss(loss)
                gradients = tape.gradient(scaled, model.trainable_variables)
                optimizer.apply(gradients, model.trainable_variables)
                # The original ran the model again, in inference mode, only for the accuracy.
                again = model(clips, training=False)
                accuracies.append(float(tf.reduce_mean(accuracy_function(labels, again))))
            float(loss)  # wait for the last step
            epoch_seconds.append(time.perf_counter() - started)

    timed = epoch_seconds[1:]
    clips_per_epoch = len(split)
    result = {
        "model": args.model,
        "style": args.style,
        "clips_per_second": clips_per_epoch * len(timed) / sum(timed),
        "ms_per_step": 1000 * sum(timed) / (len(timed) * steps),
        "warmup_seconds": epoch_seconds[0],
        "epoch_seconds": timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": int(model.count_params()),
    }
    if tf.config.list_physical_devices("GPU"):
        result["peak_gpu_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return result


def run_one(args, model: str, style: str, data: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--model",
        model,
        "--style",
        style,
        "--data",
        str(data),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
    ]
    if args.mixed_precision:
        command.append("--mixed-precision")
    if args.full_shape:
        command.append("--full-shape")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        raise RuntimeError(f"{model} / {style} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def format_table(results: list[dict], full_shape: bool) -> str:
    header = ["model", "style", "clips/s", "ms/step", "peak RSS MB", "speed-up"]
    gpu = any("peak_gpu_mb" in row for row in results)
    if gpu:
        header.insert(5, "peak GPU MB")
    if full_shape:
        header.append("original published ms/step")
    lines = []
    baseline = {
        row["model"]: row["clips_per_second"] for row in results if row["style"] == "original"
    }
    for row in results:
        cells = [
            row["model"],
            row["style"],
            f"{row['clips_per_second']:.1f}",
            f"{row['ms_per_step']:.0f}",
            f"{row['peak_rss_mb']:.0f}",
        ]
        if gpu:
            cells.append(f"{row.get('peak_gpu_mb', 0):.0f}")
        speedup = (
            row["clips_per_second"] / baseline[row["model"]] if row["model"] in baseline else None
        )
        cells.append(f"{speedup:.2f}x" if speedup else "")
        if full_shape:
            cells.append(str(ORIGINAL_MS_PER_STEP[row["model"]]))
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]

    def render(line) -> str:
        return "  ".join(str(cell).rjust(width) for cell, width in zip(line, widths, strict=True))

    return "\n".join(
        [render(header), "  ".join("-" * width for width in widths), *map(render, lines)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, choices=MODEL_NAMES)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per model and style; the best is kept"
    )
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument(
        "--full-shape",
        action="store_true",
        help="the original's 10 x 240x320 clips, batch 64, mixed_float16, all six models (GPU)",
    )
    parser.add_argument("--json", default=str(HERE / "results" / "train.json"))
    # Internal: one measurement in a fresh process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--style", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    if args.full_shape:
        args.frames, args.height, args.width, args.batch_size = 10, 240, 320, 64
        args.mixed_precision = True
        models = args.models or list(MODEL_NAMES)
    else:
        models = args.models or ["cnn_gru", "lstm"]
    runs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nightact-bench-") as folder:
        data = Path(folder)
        make_clips(data, args.steps * args.batch_size, args.frames, args.height, args.width, seed=0)
        for repeat in range(args.repeats):
            for model in models:
                for style in args.styles:
                    print(
                        f"timing {model} / {style} (run {repeat + 1} of {args.repeats}) ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.append(run_one(args, model, style, data))
    results = [
        max(
            (run for run in runs if run["model"] == model and run["style"] == style),
            key=lambda run: run["clips_per_second"],
        )
        for model in models
        for style in args.styles
    ]
    table = format_table(results, args.full_shape)
    print(table)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shape": [args.frames, args.height, args.width],
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps,
        "timed_epochs": args.epochs,
        "repeats": args.repeats,
        "mixed_precision": args.mixed_precision,
        "machine": common.machine_summary(),
        "seconds": time.perf_counter() - started,
        "results": results,
        "all_runs": runs,
        "table": table,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
