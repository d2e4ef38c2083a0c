"""The GPU figures in one run: step times, nightact train and study, prepare, the loader.

Run through ``benchmarks/gpu.sh OUT`` (it picks the Python and sets the paths). Every part runs
in its own process with its own time limit, inside one overall budget (420 s: with gpu.sh's own
set-up, under 8 minutes), and ``OUT/gpu.json`` is rewritten after each part, so a part that fails
or hangs costs only its own box::

    OUT/
      gpu.json        environment, then one entry per part: "device", "prepare", "study",
                      "loader", "parallel" (and "models" with --fit)
      prepare.json    benchmarks/prepare_scaling.py's own report
      loader.json     benchmarks/loader.py's own report
      gpu.log         everything the parts printed (gpu.sh writes it)
      nvidia-smi.txt  (gpu.sh writes it)

Parts, in order of importance (a later part gets what time is left):

1. environment: Python, NumPy, Keras, JAX, TensorFlow versions and the devices each backend sees,
   and what is missing;
2. device: the step time with the data already on the device: ``train_on_batch`` on one batch of
   64 random clips at 10 x 240x320, placed on the device once, 30 steps after 4 warm-ups, for
   each model and precision (float32, mixed_bfloat16, mixed_float16; one process per precision),
   each model built and compiled by nightact train's own code with the original's settings;
3. prepare: ``benchmarks/prepare_scaling.py``: ``nightact prepare`` on 384 synthetic 640x480
   clips of 5-8 s with 1, 2, 4, 8 and 16 workers, where one worker's time goes, and whether PyAV
   decodes on the GPU (NVDEC);
4. study: the real ``nightact study --preset original --epochs 2`` over the six models on a
   synthetic store of a quarter of NoctAct-HAR's size (1,653 of its 6,613 clips; ``--study-clips``),
   in series on one GPU: its wall time, and from each run's history.csv the epoch times of
   ``nightact train`` itself (the first with compilation, the second steady), scaled to the full
   size, and the arithmetic that turns them into a full study's time (50 epochs, 6,613 clips);
5. loader: ``benchmarks/loader.py`` with 1, 2, 4, 8 readers, warm and cold;
6. parallel: cnn_gru on 2 devices against 1, at the same global batch, where 2 devices exist;
7. models (only with ``--fit``): each model timed with ``model.fit`` on random uint8 clips from a
   memory-mapped file read by nightact's ``ClipBatches``, after one untimed warm-up epoch. The
   study's epoch times are nightact train's own, so this stand-in is off by default.

``--smoke`` runs every part at a tiny shape, for checking the code path on a CPU (there, 2
logical CPU devices stand in for 2 GPUs); ``tests/test_benchmarks.py`` runs it so that it cannot
rot unnoticed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
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

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# NoctAct-HAR's clips, the size of the store the study trains on (--study-clips: a fraction of it).
DATASET_CLIPS = 6613
STUDY_EPOCHS = 50  # the original preset's, for the estimate of a full study
# The model widths of --smoke (the original's 256 filters of 15x15 do not fit a 24x32 frame, and
# narrow layers compile sooner).
SMOKE_SETTINGS = {"conv_filters": 16, "conv_kernel": 4, "conv_stride": 4, "units": (8, 8, 8)}


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
    if "av" not in record["versions"]:
        record["missing"].append("av: not installed, prepare cannot run (see gpu.sh)")
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
    settings = {} if not args.smoke else SMOKE_SETTINGS
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


def device_worker(args) -> dict:
    """Step time with the batch already on the device, for each of ``args.models`` at each of
    ``args.precisions``: a model that fails (a backend without a kernel for a precision) is
    reported as such, and the others still run."""
    import keras

    shape = SMOKE if args.smoke else FULL
    rng = np.random.default_rng(0)
    size = (shape["batch_size"], shape["frames"], shape["height"], shape["width"], 3)
    clips = _on_device(rng.integers(0, 60, size=size, dtype=np.uint8))
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, size[0])]
    labels = _on_device(labels)
    rows = []
    for precision in args.precisions:
        for model in args.models:
            try:
                rows.append(_time_steps(model, precision, clips, labels, args))
            except Exception as error:  # noqa: BLE001 - one cell's failure is a figure too
                message = str(error).strip().splitlines()
                status = f"failed: {type(error).__name__}: {message[0] if message else ''}"
                rows.append({"model": model, "precision": precision, "status": status})
            print(f"{model} {precision}: {rows[-1].get('status', 'ok')}", file=sys.stderr)
    return {"backend": keras.config.backend(), "rows": rows}


def _on_device(array: np.ndarray):
    """``array`` as a tensor on the backend's first device (a GPU where there is one)."""
    import keras

    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        # TensorFlow keeps a converted array on the host unless told otherwise.
        device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
        with tf.device(device):
            return tf.identity(array)
    return keras.ops.convert_to_tensor(array)


def _time_steps(model_name: str, precision: str, clips, labels, args) -> dict:
    """Build and compile as nightact train does (the original preset), then time
    ``train_on_batch`` on the one batch."""
    import keras

    from nightact.training.train import PRESETS, TrainConfig, build_and_compile

    settings = {**PRESETS["original"], **(SMOKE_SETTINGS if args.smoke else {})}
    frames, height, width = clips.shape[1:4]
    settings.update(frames=frames, height=height, width=width)
    config = TrainConfig(data="", model=model_name, out="", mixed_precision=False, **settings)
    previous = keras.config.dtype_policy()
    # Built under the policy; compile adds loss scaling itself under mixed_float16.
    keras.config.set_dtype_policy(precision)
    try:
        model = build_and_compile(config, NUM_CLASSES)
    finally:
        keras.config.set_dtype_policy(previous)
    started = time.perf_counter()
    model.train_on_batch(clips, labels)  # tracing and compilation
    compile_seconds = time.perf_counter() - started
    warm_ups, steps = (1, 2) if args.smoke else (3, 30)
    for _ in range(warm_ups):
        model.train_on_batch(clips, labels)
    started = time.perf_counter()
    for _ in range(steps):
        # Returns the loss as a host number: each step has finished when it returns.
        model.train_on_batch(clips, labels)
    seconds = time.perf_counter() - started
    batch = int(clips.shape[0])
    return {
        "model": model_name,
        "precision": precision,
        "status": "ok",
        "batch_size": batch,
        "ms_per_step": 1000 * seconds / steps,
        "clips_per_second": steps * batch / seconds,
        "compile_seconds": compile_seconds,
        "timed_steps": steps,
        "parameters": int(model.count_params()),
        "original_ms_per_step": ORIGINAL_MS_PER_STEP[model_name],
    }


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


def write_store(store: Path, clips: int, frames: int, height: int, width: int) -> dict:
    """A finished clip store in nightact's format (nightact.core.store), of random dark clips.

    Split 70/15/15 as ``nightact prepare`` splits; each split's rows written in large blocks.
    Returns the split sizes.
    """
    from nightact.core.names import CLASS_NAMES
    from nightact.core.store import (
        CLASSES_FILE,
        MANIFEST_COLUMNS,
        MANIFEST_FILE,
        SPLIT_NAMES,
        STORE_FILE,
    )

    store.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = dict(zip(SPLIT_NAMES, (round(0.7 * clips), round(0.15 * clips)), strict=False))
    sizes["test"] = clips - sum(sizes.values())
    block = rng.integers(0, 60, size=(16, frames, height, width, 3), dtype=np.uint8).tobytes()
    manifest = []
    for split, count in sizes.items():
        header = np.lib.format.open_memmap(
            store / f"{split}.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(count, frames, height, width, 3),
        )
        offset = header.offset
        del header
        with open(store / f"{split}.npy", "r+b") as handle:
            handle.seek(offset)
            row_bytes = len(block) // 16
            for start in range(0, count, 16):
                # Each block shifted by a byte: not one clip repeated, and quick to make.
                shifted = block[start % 7 :] + block[: start % 7]
                handle.write(shifted[: row_bytes * min(16, count - start)])
        labels = rng.integers(0, NUM_CLASSES, size=count).astype(np.int64)
        np.save(store / f"{split}_labels.npy", labels)
        for row, label in enumerate(labels):
            path = f"{CLASS_NAMES[label]}/{split}-{row:05d}.mp4"
            manifest.append({**dict.fromkeys(MANIFEST_COLUMNS, ""), "path": path, "group": path})
            manifest[-1].update({"class": CLASS_NAMES[label], "label": label, "split": split})
            manifest[-1].update({"row": row, "status": "ok"})
    with open(store / MANIFEST_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest)
    (store / CLASSES_FILE).write_text(json.dumps({"class_names": list(CLASS_NAMES)}))
    settings = {"frames": frames, "height": height, "width": width, "split": [0.7, 0.15, 0.15]}
    info = {
        "format": 1,
        "settings": {**settings, "seed": 31, "short_clips": "repeat-last"},
        "fingerprint": "synthetic",
        "class_names": list(CLASS_NAMES),
        "splits": sizes,
        "src": "synthetic (benchmarks/gpu.py)",
    }
    (store / STORE_FILE).write_text(json.dumps(info, indent=2))
    return sizes


def study_command(store: Path, folder: Path, models: list[str], smoke: bool) -> list[str]:
    """``nightact study`` as a user runs it: the original preset, two epochs (one in --smoke)."""
    command = [sys.executable, "-m", "nightact.cli", "study", "--data", str(store)]
    command += ["--out", str(folder), "--models", ",".join(models)]
    if smoke:
        # The preset's shape and widths do not fit the tiny store; its batch would exceed it.
        settings = {**SMOKE_SETTINGS, "batch_size": SMOKE["batch_size"]}
        command += ["--epochs", "1", "--loss", "msle"]
        for name, value in settings.items():
            value = ",".join(map(str, value)) if isinstance(value, tuple) else value
            command += ["--" + name.replace("_", "-"), str(value)]
        return command
    return command + ["--preset", "original", "--epochs", "2"]


def study_results(folder: Path, models: list[str], clips: int, wall: float) -> dict:
    """Each run's epoch times from its history.csv, and the estimate of a full study."""
    from nightact.core import runs

    rows, measured = [], 0.0
    scale = DATASET_CLIPS / clips
    estimate = 0.0
    for model in models:
        run = folder / "runs" / f"{model}-seed0"
        try:
            history = runs.read_history(run)
            config = runs.read_config(run)
        except (OSError, ValueError, KeyError):
            history = []
        if not history:
            # Not run (out of time), or failed before its first epoch: its log says which.
            log_file = folder / "logs" / f"{model}-seed0.log"
            last = _last_line(log_file.read_text(errors="replace")) if log_file.exists() else ""
            rows.append({"model": model, "status": f"no epoch finished: {last or 'not run'}"})
            continue
        seconds = [row["seconds"] for row in history]
        measured += sum(seconds)
        train_clips = round(0.7 * clips)
        steps = train_clips // config["batch_size"]
        steady = seconds[-1]
        # At the full size the first epoch is its compilation plus one steady epoch.
        estimate += (seconds[0] - steady if len(seconds) > 1 else 0.0) + (
            STUDY_EPOCHS * steady * scale
        )
        rows.append(
            {
                "model": model,
                "status": "ok",
                "precision": "mixed_float16" if config.get("mixed_precision") else "float32",
                "batch_size": config["batch_size"],
                "epoch_seconds": seconds,
                "first_epoch_seconds": seconds[0],
                "steady_epoch_seconds": steady,
                "train_clips": train_clips,
                "ms_per_step": 1000 * steady / max(1, steps),
                # Training clips per second of the epoch (validation included in its time).
                "clips_per_second": steps * config["batch_size"] / steady,
                "full_size_epoch_seconds": steady * scale,
                "original_ms_per_step": ORIGINAL_MS_PER_STEP[model],
            }
        )
    overhead = wall - measured
    return {
        "runs": rows,
        "estimate": {
            "full_study_seconds": overhead + estimate,
            "full_clips": DATASET_CLIPS,
            "measured_clips": clips,
            "scale": scale,
            "epochs": STUDY_EPOCHS,
            "models_included": [row["model"] for row in rows if row["status"] == "ok"],
            "arithmetic": (
                "wall - sum(measured epochs) [start-up, store checks, report] + per model "
                "(first epoch - steady epoch [compilation] + epochs x steady epoch x scale); "
                "an epoch's time (validation included) taken as linear in the clips"
            ),
        },
    }


def study_part(out: Path, folder: Path, args, seconds: float, log) -> dict:
    """Write the synthetic store, run ``nightact study`` on it, and read what the runs did."""
    if seconds < 20:
        return {"status": "skipped: no time left in the budget"}
    shape = SMOKE if args.smoke else FULL
    clips = args.study_clips or (48 if args.smoke else round(DATASET_CLIPS / 4))
    started = time.perf_counter()
    store = folder / "study-store"
    sizes = write_store(store, clips, shape["frames"], shape["height"], shape["width"])
    record = {
        "clips": clips,
        "fraction_of_dataset": clips / DATASET_CLIPS,
        "splits": sizes,
        "shape": [shape["frames"], shape["height"], shape["width"]],
        "store_seconds": time.perf_counter() - started,
    }
    command = study_command(store, folder / "study", list(args.models), args.smoke)
    record["command"] = " ".join(command[1:])
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=max(5.0, seconds - record["store_seconds"]),
        )
        log.write(finished.stderr[-4000:] + "\n")
        record["status"] = (
            "ok"
            if finished.returncode == 0
            else (f"failed (exit {finished.returncode}): {_last_line(finished.stderr)}")
        )
    except subprocess.TimeoutExpired as expired:
        log.write(_text(expired.stderr)[-4000:] + "\n")
        record["status"] = f"timed out after {time.perf_counter() - started:.0f} s"
    record["wall_seconds"] = time.perf_counter() - started
    record.update(study_results(folder / "study", list(args.models), clips, record["wall_seconds"]))
    shutil.rmtree(store, ignore_errors=True)
    return record


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def device_part(me: list[str], args, seconds: float, log) -> dict:
    """The device worker: one process per precision (one for all in --smoke)."""
    groups = [list(args.precisions)] if args.smoke else [[p] for p in args.precisions]
    rows, statuses = [], {}
    started = time.perf_counter()
    for index, precisions in enumerate(groups):
        # What is left of the part's time, shared by the processes still to run.
        share = (seconds - (time.perf_counter() - started)) / (len(groups) - index)
        command = [*me, "--worker", "device", "--models", *args.models]
        command += ["--precisions", *precisions] + (["--smoke"] if args.smoke else [])
        result, status = run_part(command, share, log)
        statuses[",".join(precisions)] = status
        if result:
            rows.extend(result["rows"])
    return {"rows": rows, "processes": statuses, "table": format_device_table(rows)}


def format_device_table(rows: list[dict]) -> str:
    """ms per step: a row per model, a column per precision."""
    precisions = list(dict.fromkeys(row["precision"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    cells = {(row["model"], row["precision"]): row for row in rows}
    lines = ["model".ljust(15) + "".join(p.rjust(16) for p in precisions) + "   original"]
    for model in models:
        line = model.ljust(15)
        for precision in precisions:
            row = cells.get((model, precision), {})
            ok = row.get("status") == "ok"
            line += (f"{row['ms_per_step']:.1f} ms" if ok else "failed").rjust(16)
        lines.append(line + f"{ORIGINAL_MS_PER_STEP[model]:>8} ms")
    return "\n".join(lines)


def prepare_part(out: Path, args, seconds: float, log) -> dict:
    """benchmarks/prepare_scaling.py, its JSON kept whole, even when it runs out of time."""
    if seconds < 5:
        return {"status": "skipped: no time left in the budget"}
    path = out / "prepare.json"
    command = [sys.executable, str(HERE / "prepare_scaling.py"), "--json", str(path)]
    command += (
        ["--smoke", "--workers", "1", "2"]
        if args.smoke
        else ["--workers", "1", "2", "4", "8", "16"]
    )
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
        log.write(finished.stderr[-4000:] + "\n")
        status = (
            "ok"
            if finished.returncode == 0
            else (f"failed (exit {finished.returncode}): {_last_line(finished.stderr)}")
        )
    except subprocess.TimeoutExpired as expired:
        log.write(_text(expired.stderr)[-4000:] + "\n")
        status = f"timed out after {time.perf_counter() - started:.0f} s"
    # The script rewrites its JSON after every part: keep what it finished.
    record = json.loads(path.read_text()) if path.exists() else {}
    return {"status": status, "seconds": time.perf_counter() - started, **record}


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
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument(
        "--study-clips",
        type=int,
        default=None,
        help=f"clips in the study's store (default a quarter of {DATASET_CLIPS}; 48 in --smoke)",
    )
    parser.add_argument(
        "--fit", action="store_true", help="also time model.fit over a memory map (part 7)"
    )
    parser.add_argument("--device-seconds", type=float, default=140)
    parser.add_argument("--prepare-seconds", type=float, default=90)
    parser.add_argument("--study-seconds", type=float, default=170)
    parser.add_argument("--model-seconds", type=float, default=75, help="limit per model (--fit)")
    parser.add_argument("--loader-seconds", type=float, default=75)
    parser.add_argument("--parallel-seconds", type=float, default=75)
    # Internal: one part in a fresh process.
    parser.add_argument(
        "--worker", choices=["environment", "model", "device"], help=argparse.SUPPRESS
    )
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
    if args.worker == "device":
        print(json.dumps(device_worker(args)))
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
            # Each part's limit keeps back what the later ones need at least; a part that ends
            # early leaves its time to them.
            device = device_part(me, args, min(args.device_seconds, left(200)), log)
            report.record["device"] = device
            report.save()
            print(device["table"])
            note(f"device: {device['processes']}")
            report.record["prepare"] = prepare_part(
                out, args, min(args.prepare_seconds, left(150)), log
            )
            report.save()
            if "table" in report.record["prepare"]:
                print(report.record["prepare"]["table"])
            note(f"prepare: {report.record['prepare']['status']}")
            study = study_part(out, Path(folder), args, min(args.study_seconds, left(30)), log)
            report.record["study"] = study
            report.save()
            note(f"study: {study['status']}, {study.get('wall_seconds', 0):.0f} s")

            # Where a machine has one GPU, 2 devices is only checked in --smoke, on the CPU.
            devices = 2 if (args.smoke or gpus >= 2) else 0
            if args.fit or devices:
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
            for model in args.models if args.fit else []:
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

            # --smoke: the cheapest of the models asked for, on 2 logical CPU devices.
            model = "cnn_gru" if not args.smoke else args.models[0]
            if devices:
                one = [row for row in report.record["models"] if row["model"] == model]
                if not one and not args.smoke:
                    result, _ = run_part(
                        model_command(model, 1), min(args.model_seconds, left()), log
                    )
                    one = [result] if result else []
                result, status = run_part(
                    model_command(model, devices), min(args.parallel_seconds, left()), log
                )
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
    measured = [row for row in device["rows"] if row.get("status") == "ok"]
    measured += [row for row in study.get("runs", []) if row.get("status") == "ok"]
    return 0 if measured or report.record["models"] else 1


if __name__ == "__main__":
    sys.exit(main())
