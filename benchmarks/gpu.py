"""The GPU figures in one run: the six models at the full shape, the loader, data parallelism.

Run through ``benchmarks/gpu.sh OUT`` (it picks the Python and sets the paths). Every part runs
in its own process with its own time limit, inside one overall budget, and ``OUT/gpu.json`` is
rewritten after each part, so a part that fails or hangs costs only its own box::

    OUT/
      gpu.json        environment, then one entry per part: "models", "loader", "parallel"
      loader.json     benchmarks/loader.py's own report
      gpu.log         everything the parts printed (gpu.sh writes it)
      nvidia-smi.txt  (gpu.sh writes it)

Parts, in order of importance (a later part gets what time is left):

1. environment: Python, NumPy, Keras, JAX, TensorFlow versions and the devices each backend sees,
   and what is missing;
2. models: each of the six at 10 x 240x320, batch 64, mixed_float16, timed with ``model.fit`` on
   random uint8 clips from a memory-mapped file read by nightact's ``ClipBatches``, after one
   untimed warm-up epoch (tracing, compilation): ms per step and clips/s;
3. loader: ``benchmarks/loader.py`` with 1, 2, 4, 8 readers, warm and cold;
4. parallel: cnn_gru on 2 devices against 1, at the same global batch, where 2 devices exist.

``--smoke`` runs every part at a tiny shape, for checking the code path on a CPU (there, 2
logical CPU devices stand in for 2 GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from nightact.core.names import MODEL_NAMES, NUM_CLASSES, ORIGINAL_MS_PER_STEP

HERE = Path(__file__).resolve().parent

FULL = {"frames": 10, "height": 240, "width": 320, "batch_size": 64, "steps": 8, "epochs": 2}
SMOKE = {"frames": 10, "height": 24, "width": 32, "batch_size": 8, "steps": 2, "epochs": 1}


# --- the parts' workers (each runs in a fresh process) ----------------------------------------


def environment_worker(_args) -> dict:
    """Versions (from the installed metadata, without importing) and the devices each sees."""
    from importlib import metadata

    record = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "machine": common.machine_summary(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": {},
        "missing": [],
    }
    for name in ("numpy", "keras", "jax", "jaxlib", "tensorflow", "tensorflow-cpu", "av"):
        try:
            record["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if "keras" not in record["versions"]:
        record["missing"].append("keras: not installed (carry the wheels in .whl, see gpu.sh)")
    if record["keras_backend"] == "jax":
        try:
            import jax

            record["jax_devices"] = [str(device) for device in jax.devices()]
            record["jax_gpus"] = sum(device.platform == "gpu" for device in jax.devices())
        except Exception as error:  # ImportError, or a CUDA plugin that fails to start
            record["missing"].append(f"jax: {error}")
    else:
        try:
            import tensorflow as tf

            record["tensorflow_gpus"] = len(tf.config.list_physical_devices("GPU"))
        except ImportError as error:
            record["missing"].append(f"tensorflow: {error}")
    return record


def model_worker(args) -> dict:
    """Time ``args.model`` with ``model.fit`` on ``args.devices`` devices."""
    import keras

    from nightact.nets.models import build_model
    from nightact.training.devices import setup_devices

    setup = setup_devices(args.devices)
    clips = np.load(Path(args.data) / "clips.npy", mmap_mode="r")
    labels = np.load(Path(args.data) / "labels.npy")
    frames, height, width = clips.shape[1:4]
    keras.utils.set_random_seed(0)
    settings = {} if not args.smoke else {"conv_filters": 16, "conv_kernel": 4, "conv_stride": 4}
    with setup.scope():
        previous = keras.config.dtype_policy()
        if args.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        try:
            model = build_model(
                args.model,
                frames=frames,
                height=height,
                width=width,
                num_classes=NUM_CLASSES,
                **settings,
            )
        finally:
            keras.config.set_dtype_policy(previous)
        # As nightact train compiles it; under mixed_float16 Keras adds the loss scaling.
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=1e-4),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            # XLA cannot compile a MirroredStrategy step (see nightact.training.train._jit_compile).
            jit_compile=False if setup.strategy is not None else "auto",
        )
    batches = _clip_batches(clips, labels, args.batch_size)
    epoch_seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.started)

    try:
        model.fit(
            batches,
            steps_per_epoch=len(batches),
            epochs=1 + args.epochs,
            callbacks=[Timer()],
            verbose=0,
            shuffle=False,
        )
    finally:
        batches.close()
    timed = epoch_seconds[1:]
    steps = len(batches)
    result = {
        "model": args.model,
        "devices": setup.count,
        "platform": setup.platform,
        "backend": keras.config.backend(),
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision,
        "ms_per_step": 1000 * sum(timed) / (len(timed) * steps),
        "clips_per_second": steps * args.batch_size * len(timed) / sum(timed),
        "warmup_seconds": epoch_seconds[0],
        "timed_steps": steps * len(timed),
        "parameters": int(model.count_params()),
        "original_ms_per_step": ORIGINAL_MS_PER_STEP[args.model],
    }
    result.update(_peak_memory(keras.config.backend()))
    return result


def _clip_batches(clips, labels, batch_size):
    """nightact's own training reader over the clips, endless and shuffled as in training."""
    from nightact.data.batches import ClipBatches

    split = common.split_from_arrays(clips, labels)
    return ClipBatches(split, batch_size, shuffle=True, seed=0, drop_remainder=True)


def _peak_memory(backend: str) -> dict:
    import resource

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        if backend == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                peak["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                peak["peak_device_mb"] = (
                    tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
                )
    except Exception:  # a figure we can do without; never the reason a timing is lost
        pass
    return peak


# --- the driver ---------------------------------------------------------------------------------


def run_part(command: list[str], seconds: float, log) -> tuple[dict | None, str]:
    """Run one part's process for at most ``seconds``; its last stdout line is its JSON."""
    if seconds < 5:
        return None, "skipped: no time left in the budget"
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds, env=os.environ.copy()
        )
    except subprocess.TimeoutExpired as expired:
        log.write(_text(expired.stderr)[-4000:] + "\n")
        return None, f"timed out after {seconds:.0f} s"
    log.write(finished.stderr[-4000:] + "\n")
    log.flush()
    if finished.returncode != 0:
        last = [line for line in finished.stderr.strip().splitlines() if line.strip()]
        return None, f"failed (exit {finished.returncode}): {last[-1] if last else ''}"
    lines = finished.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return None, "failed: no JSON on the last line of its output"
    result["part_seconds"] = time.perf_counter() - started
    return result, "ok"


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def write_clips(folder: Path, count: int, frames: int, height: int, width: int) -> None:
    """Random dark clips and labels in the layout benchmarks/train.py uses."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(0)
    clips = open_memmap(
        folder / "clips.npy", mode="w+", dtype=np.uint8, shape=(count, frames, height, width, 3)
    )
    block = rng.integers(0, 60, size=(min(count, 16), frames, height, width, 3), dtype=np.uint8)
    for start in range(0, count, len(block)):
        stop = min(count, start + len(block))
        clips[start:stop] = np.roll(block[: stop - start], start)
    clips.flush()
    del clips
    np.save(folder / "labels.npy", rng.integers(0, NUM_CLASSES, size=count).astype(np.int64))


def format_table(models: list[dict]) -> str:
    header = ["model", "devices", "ms/step", "clips/s", "warm-up s", "original ms/step"]
    lines = [
        [
            row["model"],
            str(row["devices"]),
            f"{row['ms_per_step']:.1f}",
            f"{row['clips_per_second']:.0f}",
            f"{row['warmup_seconds']:.1f}",
            str(row["original_ms_per_step"]),
        ]
        for row in models
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(line) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))

    return "\n".join(
        [render(header), "  ".join("-" * width for width in widths), *map(render, lines)]
    )


class Report:
    """gpu.json, rewritten whole (and atomically) after every part."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record

    def save(self) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.record, indent=2))
        os.replace(temporary, self.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for gpu.json and loader.json (required)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check the code path")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all parts")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--model-seconds", type=float, default=75, help="limit per model")
    parser.add_argument("--loader-seconds", type=float, default=75)
    parser.add_argument("--parallel-seconds", type=float, default=75)
    # Internal: one part in a fresh process.
    parser.add_argument("--worker", choices=["environment", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--mixed-precision", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "environment":
        print(json.dumps(environment_worker(args)))
        return 0
    if args.worker == "model":
        print(json.dumps(model_worker(args)))
        return 0

    if not args.out:
        parser.error("--out is required")
    started = time.perf_counter()
    deadline = started + args.budget
    shape = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(
        out / "gpu.json",
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "smoke": args.smoke,
            "shape": [shape["frames"], shape["height"], shape["width"]],
            "batch_size": shape["batch_size"],
            "budget_seconds": args.budget,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    me = [sys.executable, str(Path(__file__).resolve())]
    with open(out / "gpu.log", "a", encoding="utf-8") as log:

        def left(reserve: float = 0.0) -> float:
            return deadline - time.perf_counter() - reserve

        def note(message: str) -> None:
            line = f"[{time.perf_counter() - started:6.1f} s] {message}"
            print(line, file=sys.stderr, flush=True)
            log.write(line + "\n")
            log.flush()

        environment, status = run_part([*me, "--worker", "environment"], min(60, left()), log)
        report.record["environment"] = environment or {"status": status}
        report.save()
        note(f"environment: {status}")
        if environment:
            for missing in environment["missing"]:
                note(f"MISSING {missing}")
            gpus = max(environment.get("jax_gpus", 0), environment.get("tensorflow_gpus", 0))
        else:
            gpus = 0
        if not args.smoke and gpus == 0:
            note("NO GPU seen by the Keras backend: the figures below are CPU figures")
        # Leave the loader its share of the budget; 2-device runs only take what is left.
        loader_reserve = min(args.loader_seconds, 0.2 * args.budget)

        with tempfile.TemporaryDirectory(prefix="nightact-gpu-") as folder:
            count = shape["steps"] * shape["batch_size"]
            write_clips(Path(folder), count, shape["frames"], shape["height"], shape["width"])
            note(f"wrote {count} clips of {shape['frames']}x{shape['height']}x{shape['width']}")

            def model_command(model: str, devices: int) -> list[str]:
                command = [
                    *me,
                    "--worker",
                    "model",
                    "--model",
                    model,
                    "--data",
                    folder,
                    "--devices",
                    str(devices),
                    "--batch-size",
                    str(shape["batch_size"]),
                    "--epochs",
                    str(shape["epochs"]),
                    "--mixed-precision",
                ]
                return command + (["--smoke"] if args.smoke else [])

            report.record["models"], report.record["model_failures"] = [], {}
            for model in args.models:
                result, status = run_part(
                    model_command(model, 1), min(args.model_seconds, left(loader_reserve)), log
                )
                note(
                    f"{model}: {status}"
                    + (f", {result['ms_per_step']:.1f} ms/step" if result else "")
                )
                if result:
                    report.record["models"].append(result)
                else:
                    report.record["model_failures"][model] = status
                report.save()
            if report.record["models"]:
                report.record["table"] = format_table(report.record["models"])
                print(report.record["table"])
                report.save()

            loader_command = [
                sys.executable,
                str(HERE / "loader.py"),
                "--json",
                str(out / "loader.json"),
                "--repeats",
                "1",
                *(["--smoke"] if args.smoke else ["--clips", "512"]),
            ]
            loader_started = time.perf_counter()
            try:
                finished = subprocess.run(
                    loader_command,
                    capture_output=True,
                    text=True,
                    timeout=max(5.0, min(args.loader_seconds, left())),
                )
                log.write(finished.stderr[-4000:] + "\n")
                if finished.returncode == 0:
                    loader = json.loads((out / "loader.json").read_text())
                    report.record["loader"] = loader
                    status = "ok"
                    print(loader["table"])
                else:
                    status = f"failed (exit {finished.returncode})"
                    report.record["loader"] = {"status": status}
            except subprocess.TimeoutExpired as expired:
                log.write(_text(expired.stderr)[-4000:] + "\n")
                status = f"timed out after {time.perf_counter() - loader_started:.0f} s"
                # The loader rewrites its JSON after every measurement: keep those it finished.
                partial = out / "loader.json"
                report.record["loader"] = {
                    "status": status,
                    **(json.loads(partial.read_text()) if partial.exists() else {}),
                }
            report.save()
            note(f"loader: {status}")

            # Where a machine has one GPU, 2 devices is only checked in --smoke, on the CPU.
            devices = 2 if (args.smoke or gpus >= 2) else 0
            if devices:
                result, status = run_part(
                    model_command("cnn_gru", devices), min(args.parallel_seconds, left()), log
                )
                one = [row for row in report.record["models"] if row["model"] == "cnn_gru"]
                if result and one:
                    result["speedup_over_one_device"] = (
                        result["clips_per_second"] / one[0]["clips_per_second"]
                    )
                report.record["parallel"] = result or {"status": status}
            else:
                status = f"skipped: {gpus} GPU(s)"
                report.record["parallel"] = {"status": status}
            report.save()
            note(f"parallel: {status}")
        # Inside the log's block: note() writes to the log too.
        report.record["seconds"] = time.perf_counter() - started
        report.save()
        note(f"wrote {report.path}")
    return 0 if report.record["models"] else 1


if __name__ == "__main__":
    sys.exit(main())
