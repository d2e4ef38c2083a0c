"""The GPU figures in one run: the six models at the full shape, the loader, data parallelism.

Run through ``benchmarks/gpu.sh OUT`` (it picks the Python and sets the paths). Every part runs
in its own process with its own time limit, inside one overall budget, and ``OUT/gpu.json`` is
rewritten after each part, so a part that fails or hangs costs only its own box::

    OUT/
      gpu.json        environment, then one entry per part: "models", "kernels", "loader",
                      "parallel"
      loader.json     benchmarks/loader.py's own report
      gpu.log         everything the parts printed (gpu.sh writes it)
      nvidia-smi.txt  (gpu.sh writes it)

Parts, in order of importance (a later part gets what time is left):

1. environment: Python, NumPy, Keras, JAX, TensorFlow versions and the devices each backend sees,
   and what is missing;
2. models: each of the six at 10 x 240x320, batch 64, mixed_float16, timed with ``model.fit`` on
   random uint8 clips from a memory-mapped file read by nightact's ``ClipBatches``, after one
   untimed warm-up epoch (tracing, compilation): ms per step and clips/s. The LSTM models run
   the kernel ``lstm_kernel="auto"`` picks, as ``nightact train`` does;
3. kernels: lstm and cnn_lstm (those of ``--models``) under mixed_float16, mixed_bfloat16 and
   float32 with each LSTM kernel (``scan``, ``cudnn-float32``, ``cudnn``; see docs/backends.md),
   built and compiled as ``nightact train`` does, timed with ``train_on_batch`` on one batch
   already on the device, so only the step is measured: the median step in ms, and the first
   step (tracing, compilation) in seconds. A kernel that fails (Keras' cuDNN LSTM under 16 bits
   on JAX) is recorded with its error. One process per model; each result is kept as it comes;
4. loader: ``benchmarks/loader.py`` with 1, 2, 4, 8 readers, warm and cold;
5. parallel: cnn_gru on 2 devices against 1, at the same global batch, where 2 devices exist.

``--parts`` runs only some (``--parts kernels``: the LSTM kernels alone, about 5 minutes at the
full shape). ``--smoke`` runs every part at a tiny shape, for checking the code path on a CPU
(there, 2 logical CPU devices stand in for 2 GPUs).
"""

from __future__ import annotations

import argparse
import gc
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
# The smoke run's convolution, scaled down with its frames.
SMOKE_MODEL = {"conv_filters": 16, "conv_kernel": 4, "conv_stride": 4}

PARTS = ("models", "kernels", "loader", "parallel")
# The kernels part: each (policy, LSTM kernel) in turn, most wanted first. Keras' own "cudnn" under
# 16 bits failed on JAX (docs/backends.md); it stays in the list to see whether it still does.
# Under float32, "cudnn-float32" is "cudnn".
KERNEL_RUNS = (
    ("mixed_float16", "scan"),
    ("mixed_float16", "cudnn-float32"),
    ("mixed_float16", "cudnn"),
    ("mixed_bfloat16", "scan"),
    ("mixed_bfloat16", "cudnn-float32"),
    ("mixed_bfloat16", "cudnn"),
    ("float32", "cudnn"),
    ("float32", "scan"),
)
KERNEL_MODELS = ("lstm", "cnn_lstm")
# train_on_batch calls per kernel: untimed (the first one compiles), then timed one by one.
KERNEL_STEPS = {"full": (3, 20), "smoke": (2, 2)}


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
    settings = SMOKE_MODEL if args.smoke else {}
    with setup.scope():
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(args.policy)
        try:
            model = build_model(
                args.model,
                frames=frames,
                height=height,
                width=width,
                num_classes=NUM_CLASSES,
                lstm_kernel=args.lstm_kernel,
                **settings,
            )
            kernel = _lstm_kernel(args.model, args.lstm_kernel)
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
        "policy": args.policy,
        "lstm_kernel": kernel,
        "ms_per_step": 1000 * sum(timed) / (len(timed) * steps),
        "clips_per_second": steps * args.batch_size * len(timed) / sum(timed),
        "warmup_seconds": epoch_seconds[0],
        "timed_steps": steps * len(timed),
        "parameters": int(model.count_params()),
        "original_ms_per_step": ORIGINAL_MS_PER_STEP[args.model],
    }
    result.update(_peak_memory(keras.config.backend()))
    return result


def _lstm_kernel(model: str, kernel: str) -> str | None:
    """The LSTM kernel a model built with ``kernel`` under the policy in force runs (None: no
    LSTM)."""
    from nightact.nets.models import choose_lstm_kernel

    if "lstm" not in model:
        return None
    return choose_lstm_kernel() if kernel == "auto" else kernel


def kernels_worker(args) -> None:
    """Time ``args.model`` under each (policy, LSTM kernel) of KERNEL_RUNS; one JSON line each.

    Built and compiled by ``nightact.training.train.build_and_compile``, as ``nightact train``
    does; timed with ``train_on_batch`` on one batch placed on the device beforehand. Each line
    is printed as soon as it is measured, so a process that runs out of time keeps what it did.
    """
    import keras

    from nightact.training.train import TrainConfig, build_and_compile

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.frames, args.height, args.width, 3)
    clips = rng.integers(0, 60, size=shape, dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, args.batch_size)]
    clips, labels = _on_device(clips), _on_device(labels)
    warmup, timed = KERNEL_STEPS["smoke" if args.smoke else "full"]
    for policy, kernel in KERNEL_RUNS:
        config = TrainConfig(
            data="-",
            model=args.model,
            out="-",
            batch_size=args.batch_size,
            mixed_precision=policy != "float32",
            mixed_dtype=policy.removeprefix("mixed_") if policy != "float32" else "float16",
            lstm_kernel=kernel,
            frames=args.frames,
            height=args.height,
            width=args.width,
            **(SMOKE_MODEL if args.smoke else {}),
        )
        row = {"model": args.model, "policy": policy, "lstm_kernel": kernel}
        row["backend"] = keras.config.backend()
        try:
            model = build_and_compile(config, NUM_CLASSES)
            row.update(_time_steps(model, clips, labels, warmup, timed))
        except Exception as error:  # the measured crash is a result too; the next kernel runs
            row["error"] = f"{type(error).__name__}: {_first_line(error)}"
        finally:
            model = None
            keras.backend.clear_session()
            gc.collect()
        print(json.dumps(row), flush=True)


def _time_steps(model, clips, labels, warmup: int, timed: int) -> dict:
    """The first step's seconds (tracing, compilation) and the median of ``timed`` steps in ms.

    ``train_on_batch`` returns the loss as a Python number, so each call waits for its step.
    """
    started = time.perf_counter()
    model.train_on_batch(clips, labels)
    first = time.perf_counter() - started
    for _ in range(warmup - 1):
        model.train_on_batch(clips, labels)
    seconds = []
    for _ in range(timed):
        started = time.perf_counter()
        loss = model.train_on_batch(clips, labels)
        seconds.append(time.perf_counter() - started)
    loss = float(np.ravel(loss)[0])
    return {
        "ms_per_step": 1000 * float(np.median(seconds)),
        "ms_fastest": 1000 * min(seconds),
        "ms_slowest": 1000 * max(seconds),
        "first_step_seconds": first,
        "timed_steps": timed,
        "loss_finite": bool(np.isfinite(loss)),
        "parameters": int(model.count_params()),
    }


def _on_device(array: np.ndarray):
    """``array`` on the backend's first device, so a timed step copies nothing from the host."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        # Uncommitted, as Keras' own variables are: an array committed to a device changes the
        # step's input placement after the first call, and the step is compiled a second time.
        return jax.device_put(array)
    if backend == "tensorflow":
        import tensorflow as tf

        device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
        with tf.device(device):
            return tf.identity(tf.constant(array))
    if backend == "torch":
        import torch

        return torch.as_tensor(array, device="cuda" if torch.cuda.is_available() else "cpu")
    return array


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


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


def run_lines(command: list[str], seconds: float, log) -> tuple[list[dict], str]:
    """Run a part that prints one JSON line per result; keep them even if it fails or times out."""
    if seconds < 5:
        return [], "skipped: no time left in the budget"
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds, env=os.environ.copy()
        )
        stdout, stderr = finished.stdout, finished.stderr
        status = "ok" if finished.returncode == 0 else f"failed (exit {finished.returncode})"
    except subprocess.TimeoutExpired as expired:
        stdout, stderr = _text(expired.stdout), _text(expired.stderr)
        status = f"timed out after {seconds:.0f} s"
    log.write(stderr[-4000:] + "\n")
    log.flush()
    rows = []
    for line in stdout.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a library's own print, not a result
    return rows, status


def format_kernel_table(rows: list[dict]) -> str:
    """One line per (model, policy, kernel): median ms per step and first step, or the error."""
    header = ["model", "policy", "lstm kernel", "ms/step", "first step s", "error"]
    lines = [
        [
            row["model"],
            row["policy"],
            row["lstm_kernel"],
            f"{row['ms_per_step']:.1f}" if "ms_per_step" in row else "-",
            f"{row['first_step_seconds']:.1f}" if "first_step_seconds" in row else "-",
            row.get("error", "")[:60],
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(line) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line).rstrip() for line in lines)])


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
    header = [
        "model",
        "lstm kernel",
        "devices",
        "ms/step",
        "clips/s",
        "warm-up s",
        "original ms/step",
    ]
    lines = [
        [
            row["model"],
            row.get("lstm_kernel") or "-",
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
    parser.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=PARTS, help="the parts to run"
    )
    parser.add_argument("--model-seconds", type=float, default=75, help="limit per model")
    parser.add_argument(
        "--kernel-seconds", type=float, default=240, help="limit per model of the kernels part"
    )
    parser.add_argument("--loader-seconds", type=float, default=75)
    parser.add_argument("--parallel-seconds", type=float, default=75)
    # Internal: one part in a fresh process.
    parser.add_argument(
        "--worker", choices=["environment", "model", "kernels"], help=argparse.SUPPRESS
    )
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="mixed_float16", help=argparse.SUPPRESS)
    parser.add_argument("--lstm-kernel", default="auto", help=argparse.SUPPRESS)
    for name in ("frames", "height", "width"):
        parser.add_argument(f"--{name}", type=int, default=FULL[name], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "environment":
        print(json.dumps(environment_worker(args)))
        return 0
    if args.worker == "model":
        print(json.dumps(model_worker(args)))
        return 0
    if args.worker == "kernels":
        kernels_worker(args)
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
        loader_reserve = (
            min(args.loader_seconds, 0.2 * args.budget) if "loader" in args.parts else 0
        )

        with tempfile.TemporaryDirectory(prefix="nightact-gpu-") as folder:
            if {"models", "parallel"} & set(args.parts):
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
                ]
                return command + (["--smoke"] if args.smoke else [])

            report.record["models"], report.record["model_failures"] = [], {}
            for model in args.models if "models" in args.parts else []:
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

            if "kernels" in args.parts:
                run_kernels(args, shape, me, report, log, note, lambda: left(loader_reserve))

            if "loader" in args.parts:
                run_loader(args, out, report, log, note, left)
            if "parallel" in args.parts:
                run_parallel(args, gpus, model_command, report, log, note, left)
        # Inside the log's block: note() writes to the log too.
        report.record["seconds"] = time.perf_counter() - started
        report.save()
        note(f"wrote {report.path}")
    kernels = [row for row in report.record.get("kernels", []) if "ms_per_step" in row]
    timing = {"models", "kernels"} & set(args.parts)
    return 0 if report.record["models"] or kernels or not timing else 1


def run_kernels(args, shape: dict, me: list[str], report, log, note, left) -> None:
    """The kernels part: one process per LSTM model, every (policy, kernel) of KERNEL_RUNS."""
    report.record["kernels"], report.record["kernel_failures"] = [], {}
    for model in [name for name in args.models if name in KERNEL_MODELS]:
        command = [*me, "--worker", "kernels", "--model", model]
        command += ["--batch-size", str(shape["batch_size"])]
        for name in ("frames", "height", "width"):
            command += [f"--{name}", str(shape[name])]
        rows, status = run_lines(
            command + (["--smoke"] if args.smoke else []), min(args.kernel_seconds, left()), log
        )
        for row in rows:
            timing = row.get("error") or f"{row['ms_per_step']:.1f} ms/step"
            note(f"{model} {row['policy']} {row['lstm_kernel']}: {timing}")
        note(f"kernels of {model}: {status}, {len(rows)} of {len(KERNEL_RUNS)} measured")
        report.record["kernels"].extend(rows)
        if status != "ok" or len(rows) < len(KERNEL_RUNS):
            report.record["kernel_failures"][model] = f"{status}, {len(rows)} measured"
        report.save()
    if report.record["kernels"]:
        report.record["kernel_table"] = format_kernel_table(report.record["kernels"])
        print(report.record["kernel_table"])
        report.save()


def run_loader(args, out: Path, report, log, note, left) -> None:
    """The loader part: benchmarks/loader.py, its JSON kept even when it runs out of time."""
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


def run_parallel(args, gpus: int, model_command, report, log, note, left) -> None:
    """The parallel part: cnn_gru on 2 devices, against the models part's 1 where it ran."""
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


if __name__ == "__main__":
    sys.exit(main())
