"""The GPU figures in one run: step times, nightact train and study, LSTM kernels, prepare, loader.

Run through ``benchmarks/gpu.sh OUT`` (it picks the Python and sets the paths). Every part runs
in its own process (or one per model or precision) with its own time limit, inside one overall
budget (420 s: with gpu.sh's own set-up, under 8 minutes); each part keeps back for the parts
after it the least they need, and one that ends early leaves its time to them. ``OUT/gpu.json``
is rewritten after each part (and after each model in paths and kernels, whose workers print
each result as it comes), so a part that fails or hangs costs only its own box::

    OUT/
      gpu.json        environment, then one entry per part run ("device", "paths", "kernels",
                      "prepare", "study", "loader", "parallel"; "models" with --fit)
      prepare.json    benchmarks/prepare_scaling.py's own report
      loader.json     benchmarks/loader.py's own report
      gpu.log         everything the parts printed (gpu.sh writes it)
      nvidia-smi.txt  (gpu.sh writes it)

Parts, in order of importance (a later part gets what time is left). A plain run does device,
prepare, study, loader and parallel; paths and kernels take minutes each at the full shape and
run when ``--parts`` names them (``--parts device paths``, ``--parts kernels``); ``--smoke`` runs
all seven:

1. environment: Python, NumPy, Keras, JAX, TensorFlow versions and the devices each backend sees,
   and what is missing;
2. device: the step time with the data already on the device: ``train_on_batch`` on one batch of
   64 random clips at 10 x 240x320, placed on the device once, 30 steps after 4 warm-ups, for
   each model and precision (float32, mixed_bfloat16, mixed_float16; one process per precision),
   each model built and compiled by nightact train's own code with the original preset's
   settings (an LSTM with the kernel ``lstm_kernel="auto"`` picks: scan under 16 bits on JAX);
3. paths: ``nightact train`` itself (``nightact.training.train.train``, the original preset at
   ``--paths-precision``, default mixed_float16) on each of ``--paths``: ``device``
   (``--data-on-device yes``: the splits copied to the device once, batches gathered there) and
   ``host`` (``--data-on-device no``: reading threads put batches on the device ahead of the
   step), on a synthetic store of 16 training batches, one process per model: ms per step over
   the epochs after the first (tracing, compilation), each epoch's first 5 steps left out, and
   its ratio to the device part's step of the same model and precision (``over_step``; the goal
   is 1.2 or less for all six);
4. kernels: lstm and cnn_lstm (those of ``--models``) under mixed_float16, mixed_bfloat16 and
   float32 with each LSTM kernel (``scan``, ``cudnn-float32``, ``cudnn``; docs/backends.md),
   built as the device part builds, ``train_on_batch`` on one batch already on the device: the
   median of 20 steps after 3 warm-ups, and the first step's seconds; a kernel that fails is
   recorded with its error. One process per model;
5. prepare: ``benchmarks/prepare_scaling.py``: ``nightact prepare`` on 384 synthetic 640x480
   clips of 5-8 s with 1, 2, 4, 8 and 16 workers, where one worker's time goes, and whether PyAV
   decodes on the GPU (NVDEC);
6. study: the real ``nightact study --preset original --epochs 2`` over the six models on a
   synthetic store of a quarter of NoctAct-HAR's size (1,653 of its 6,613 clips; ``--study-clips``),
   in series on one GPU: its wall time, and from each run's history.csv the epoch times of
   ``nightact train`` itself (the first with compilation, the second steady), scaled to the full
   size, and the arithmetic that turns them into a full study's time (50 epochs, 6,613 clips);
7. loader: ``benchmarks/loader.py`` with 1, 2, 4, 8 readers, warm and cold;
8. parallel: cnn_gru on 2 devices against 1, at the same global batch, where 2 devices exist;
9. models (only with ``--fit``): each model timed with ``model.fit`` on random uint8 clips from a
   memory-mapped file read by nightact's ``ClipBatches``, after one untimed warm-up epoch. The
   study's epoch times are nightact train's own, so this stand-in is off by default.

``--smoke`` runs every part at a tiny shape, for checking the code path on a CPU (there, 2
logical CPU devices stand in for 2 GPUs); ``tests/test_benchmarks.py`` runs it so that it cannot
rot unnoticed. A session with little GPU time sizes a run with ``--parts``, ``--models``,
``--precisions``, ``--paths`` and ``--budget`` (and ``NIGHTACT_GPU_GUARD`` above it for gpu.sh).
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

# steps: batches of the --fit part's clips; train_steps: of the paths part's training split.
FULL = {"frames": 10, "height": 240, "width": 320, "batch_size": 64, "steps": 8, "epochs": 2}
FULL["train_steps"] = 16
SMOKE = {"frames": 10, "height": 24, "width": 32, "batch_size": 8, "steps": 2, "epochs": 1}
SMOKE["train_steps"] = 3

PARTS = ("device", "paths", "kernels", "prepare", "study", "loader", "parallel")
# What a plain run measures in its 8 minutes; paths and kernels are asked for with --parts (each
# needs minutes of its own at the full shape). --smoke runs them all.
DEFAULT_PARTS = ("device", "prepare", "study", "loader", "parallel")
# The least time a part needs to say anything, kept back for it by the parts before it.
MINIMUM_SECONDS = {"paths": 60, "kernels": 60, "prepare": 50, "study": 120, "loader": 30}
# The paths part: nightact train's --data-on-device for each path.
DATA_PATHS = {"device": "yes", "host": "no"}
# Batches nightact train reads ahead of the step: its default reading threads less one, plus the
# one Keras puts on the device ahead.
READ_AHEAD = 4
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
    ``args.precisions``: a model that fails is reported with its error, and the others still
    run."""
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

    from nightact.nets.models import choose_lstm_kernel
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
        # What lstm_kernel="auto" ran under this policy (scan under 16 bits on JAX).
        kernel = choose_lstm_kernel() if "lstm" in model_name else None
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
        "lstm_kernel": kernel,
        "batch_size": batch,
        "ms_per_step": 1000 * seconds / steps,
        "clips_per_second": steps * batch / seconds,
        "compile_seconds": compile_seconds,
        "timed_steps": steps,
        "parameters": int(model.count_params()),
        "original_ms_per_step": ORIGINAL_MS_PER_STEP[model_name],
    }


def paths_worker(args) -> None:
    """``nightact train`` on each of ``args.paths``; one JSON line per path, as it is measured."""
    for path in args.paths:
        try:
            row = {"model": args.model, "path": path, "status": "ok", **train_step(args, path)}
        except Exception as error:  # noqa: BLE001 - one path's failure is a figure too
            row = {"model": args.model, "path": path, "status": f"failed: {_error(error)}"}
        print(json.dumps(row), flush=True)


def train_config(args, out: Path, path: str):
    """The TrainConfig of the paths part: the original preset, as the device part builds it."""
    from nightact.training.train import PRESETS, TrainConfig

    mixed = args.precision != "float32"
    settings = {**PRESETS["original"], **(SMOKE_SETTINGS if args.smoke else {})}
    settings.update(frames=args.frames, height=args.height, width=args.width)
    settings.update(epochs=1 + args.epochs, batch_size=args.batch_size)
    return TrainConfig(
        **settings,
        data=args.data,
        model=args.model,
        out=str(out),
        mixed_precision=mixed,
        mixed_dtype=args.precision.removeprefix("mixed_") if mixed else "float16",
        data_on_device=DATA_PATHS[path],
    )


def train_step(args, path: str) -> dict:
    """ms per step of ``nightact train`` on ``path`` ("device" or "host"), after its first epoch."""
    import logging

    import keras

    from nightact.training.train import train

    steps = len(np.load(Path(args.data) / "train_labels.npy")) // args.batch_size
    # Each epoch's first steps go untimed: Keras' JAX trainer compiles its step again at the
    # start of the second epoch (its metrics' variables are made anew), and the reading threads
    # have filled their queue during the epoch's end; the clock starts once they are used up.
    skip = min(1 + READ_AHEAD, steps - 1)

    class StepTimer(keras.callbacks.Callback):
        """Each epoch's steps after the first ``skip``, until the last one has finished."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_train_batch_end(self, batch, logs=None):
            if batch == skip - 1:
                # The step's loss comes out of the step: reading it waits for it.
                keras.ops.convert_to_numpy(logs["loss"])
                self.started = time.perf_counter()

        def on_test_begin(self, logs=None):
            # The model's variables now hold the last step's results: reading one waits for it.
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            self.seconds.append(time.perf_counter() - self.started)

    said = []

    class Said(logging.Handler):
        def emit(self, record):
            if record.funcName == "choose_data_path":
                said.append(record.getMessage())

    logger = logging.getLogger("nightact.training.train")
    logger.setLevel(logging.INFO)
    logger.addHandler(Said())
    timer = StepTimer()
    out = Path(tempfile.mkdtemp(prefix=f"run-{path}-", dir=Path(args.data).parent))
    started = time.perf_counter()
    train(train_config(args, out / "run", path), callbacks=[timer], verbose=0)
    timed = timer.seconds[1:]
    steps -= skip
    saved = json.loads((out / "run" / "config.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "precision": args.precision,
        "batch_size": args.batch_size,
        "ms_per_step": 1000 * sum(timed) / (len(timed) * steps),
        "clips_per_second": steps * args.batch_size * len(timed) / sum(timed),
        "timed_steps": steps * len(timed),
        "run_seconds": time.perf_counter() - started,
        "data_path": saved["data_path"],
        "workers": saved["workers"],
        "lstm_kernel": saved.get("lstm_kernel"),
        "why": said[-1] if said else None,
    }


def kernels_worker(args) -> None:
    """Time ``args.model`` under each (policy, LSTM kernel) of KERNEL_RUNS; one JSON line each.

    Built and compiled by ``nightact.training.train.build_and_compile`` with the original
    preset's settings, as the device part builds; timed with ``train_on_batch`` on one batch put
    on the device beforehand. A kernel that fails is a row with its error; the next one runs.
    """
    import gc

    import keras

    from nightact.training.train import PRESETS, TrainConfig, build_and_compile

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.frames, args.height, args.width, 3)
    clips = _on_device(rng.integers(0, 60, size=shape, dtype=np.uint8))
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, args.batch_size)]
    labels = _on_device(labels)
    settings = {**PRESETS["original"], **(SMOKE_SETTINGS if args.smoke else {})}
    settings.update(frames=args.frames, height=args.height, width=args.width)
    settings["batch_size"] = args.batch_size
    warm_ups, steps = KERNEL_STEPS["smoke" if args.smoke else "full"]
    for policy, kernel in KERNEL_RUNS:
        row = {"model": args.model, "policy": policy, "lstm_kernel": kernel}
        row["backend"] = keras.config.backend()
        try:
            config = TrainConfig(
                **settings,
                data="-",
                model=args.model,
                out="-",
                mixed_precision=policy != "float32",
                mixed_dtype=policy.removeprefix("mixed_") if policy != "float32" else "float16",
                lstm_kernel=kernel,
            )
            model = build_and_compile(config, NUM_CLASSES)
            row.update(_median_steps(model, clips, labels, warm_ups, steps))
        except Exception as error:  # noqa: BLE001 - the measured crash is a result too
            row["error"] = _error(error)
        finally:
            model = None
            keras.backend.clear_session()
            gc.collect()
        print(json.dumps(row), flush=True)


def _median_steps(model, clips, labels, warm_ups: int, steps: int) -> dict:
    """The first step's seconds (tracing, compilation) and the median of ``steps`` steps in ms.

    ``train_on_batch`` returns the loss as a Python number, so each call waits for its step.
    """
    started = time.perf_counter()
    model.train_on_batch(clips, labels)
    first = time.perf_counter() - started
    for _ in range(warm_ups - 1):
        model.train_on_batch(clips, labels)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model.train_on_batch(clips, labels)
        seconds.append(time.perf_counter() - started)
    loss = float(np.ravel(loss)[0])
    return {
        "ms_per_step": 1000 * float(np.median(seconds)),
        "ms_fastest": 1000 * min(seconds),
        "ms_slowest": 1000 * max(seconds),
        "first_step_seconds": first,
        "timed_steps": steps,
        "loss_finite": bool(np.isfinite(loss)),
        "parameters": int(model.count_params()),
    }


def _error(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


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


def run_lines(command: list[str], seconds: float, log) -> tuple[list[dict], str]:
    """Run a part that prints one JSON line per result; keep them even if it fails or times out."""
    if seconds < 5:
        return [], "skipped: no time left in the budget"
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds, env=os.environ.copy()
        )
        stdout, stderr = finished.stdout, finished.stderr
        status = "ok"
        if finished.returncode != 0:
            status = f"failed (exit {finished.returncode}): {_last_line(stderr)}"
    except subprocess.TimeoutExpired as expired:
        stdout, stderr = _text(expired.stdout), _text(expired.stderr)
        status = f"timed out after {seconds:.0f} s"
    log.write(stderr[-4000:] + "\n")
    log.flush()
    rows = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue  # a library's own print, not a result
        if isinstance(value, dict):
            rows.append(value)
    return rows, status


def shape_options(shape: dict, smoke: bool) -> list[str]:
    """The worker options that give it the run's shape."""
    options = ["--batch-size", str(shape["batch_size"]), "--epochs", str(shape["epochs"])]
    for name in ("frames", "height", "width"):
        options += [f"--{name}", str(shape[name])]
    return options + (["--smoke"] if smoke else [])


def paths_part(me: list[str], folder: Path, args, seconds: float, report, log, note) -> dict:
    """nightact train on each of --paths, one process per model, against the device part's step.

    A path's ``over_step`` is its ms per step over the device part's row of the same model and
    precision (the issue's goal: 1.2 or less). Each model's rows go into gpu.json as they come.
    """
    shape = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    # Split 70/15/15 as prepare splits: the training split holds train_steps batches.
    clips = round(shape["train_steps"] * shape["batch_size"] / 0.7)
    store = folder / "paths-store"
    write_store(store, clips, shape["frames"], shape["height"], shape["width"])
    record = {"precision": args.paths_precision, "paths": list(args.paths), "store_clips": clips}
    record.update(rows=[], processes={})
    report.record["paths"] = record
    steps = report.record.get("device", {}).get("rows", [])
    step = {(row["model"], row["precision"]): row for row in steps if row.get("status") == "ok"}
    for index, model in enumerate(args.models):
        share = (seconds - (time.perf_counter() - started)) / (len(args.models) - index)
        command = [*me, "--worker", "paths", "--model", model, "--data", str(store)]
        command += ["--precision", args.paths_precision, "--paths", *args.paths]
        rows, status = run_lines(command + shape_options(shape, args.smoke), share, log)
        for row in rows:
            yardstick = step.get((model, args.paths_precision))
            if yardstick and "ms_per_step" in row:
                row["step_ms"] = yardstick["ms_per_step"]
                row["over_step"] = row["ms_per_step"] / yardstick["ms_per_step"]
            record["rows"].append(row)
        record["processes"][model] = status
        timed = sum(row["status"] == "ok" for row in rows)
        note(f"paths of {model}: {status}, {timed} of {len(args.paths)} timed")
        report.save()
    shutil.rmtree(store, ignore_errors=True)
    record["table"] = format_paths_table(record["rows"], args.paths)
    return record


def format_paths_table(rows: list[dict], paths: list[str]) -> str:
    """ms per step of nightact train on each path, and its ratio to the step on the device."""
    cells = {(row["model"], row["path"]): row for row in rows}
    lines = ["model".ljust(15) + "step ms".rjust(10) + "".join(p.rjust(22) for p in paths)]
    for model in dict.fromkeys(row["model"] for row in rows):
        steps = [row["step_ms"] for row in rows if row["model"] == model and "step_ms" in row]
        line = model.ljust(15) + (f"{steps[0]:.1f}" if steps else "-").rjust(10)
        for path in paths:
            row = cells.get((model, path), {})
            cell = f"{row['ms_per_step']:.1f} ms" if "ms_per_step" in row else "failed"
            if "over_step" in row:
                cell += f" ({row['over_step']:.2f}x)"
            line += cell.rjust(22)
        lines.append(line)
    return "\n".join(lines)


def kernels_part(me: list[str], args, seconds: float, report, log, note) -> dict:
    """Every (policy, LSTM kernel) of KERNEL_RUNS, one process per LSTM model of --models."""
    shape = SMOKE if args.smoke else FULL
    models = [name for name in args.models if name in KERNEL_MODELS]
    record = {"rows": [], "processes": {}}
    report.record["kernels"] = record
    started = time.perf_counter()
    for index, model in enumerate(models):
        share = (seconds - (time.perf_counter() - started)) / (len(models) - index)
        command = [*me, "--worker", "kernels", "--model", model]
        rows, status = run_lines(command + shape_options(shape, args.smoke), share, log)
        for row in rows:
            timing = row.get("error") or f"{row['ms_per_step']:.1f} ms/step"
            note(f"{model} {row['policy']} {row['lstm_kernel']}: {timing}")
        record["rows"].extend(rows)
        timed = sum("ms_per_step" in row for row in rows)
        record["processes"][model] = f"{status}, {timed} of {len(KERNEL_RUNS)} timed"
        note(f"kernels of {model}: {record['processes'][model]}")
        report.save()
    if not models:
        record["status"] = f"skipped: none of {', '.join(KERNEL_MODELS)} in --models"
    record["table"] = format_kernel_table(record["rows"])
    return record


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


def loader_part(args, out: Path, report, log, note, left) -> None:
    """benchmarks/loader.py, its JSON kept even when it runs out of time."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for gpu.json and loader.json (required)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check the code path")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all parts")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        help=f"the parts to run (default {' '.join(DEFAULT_PARTS)}; with --smoke all)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=list(DATA_PATHS),
        choices=list(DATA_PATHS),
        help="the data paths nightact train is timed on (the paths part)",
    )
    parser.add_argument(
        "--paths-precision",
        default="mixed_float16",
        choices=PRECISIONS,
        help="the precision of the paths part (the original preset's on a GPU)",
    )
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
    parser.add_argument("--paths-seconds", type=float, default=150, help="limit per model")
    parser.add_argument("--kernel-seconds", type=float, default=240, help="limit per model")
    parser.add_argument("--prepare-seconds", type=float, default=90)
    parser.add_argument("--study-seconds", type=float, default=170)
    parser.add_argument("--model-seconds", type=float, default=75, help="limit per model (--fit)")
    parser.add_argument("--loader-seconds", type=float, default=75)
    parser.add_argument("--parallel-seconds", type=float, default=75)
    # Internal: one part in a fresh process.
    parser.add_argument(
        "--worker",
        choices=["environment", "model", "device", "paths", "kernels"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--mixed-precision", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="mixed_float16", help=argparse.SUPPRESS)
    for name in ("frames", "height", "width"):
        parser.add_argument(f"--{name}", type=int, default=FULL[name], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = args.parts or list(PARTS if args.smoke else DEFAULT_PARTS)

    if args.worker == "environment":
        print(json.dumps(environment_worker(args)))
        return 0
    if args.worker == "model":
        print(json.dumps(model_worker(args)))
        return 0
    if args.worker == "device":
        print(json.dumps(device_worker(args)))
        return 0
    if args.worker == "paths":
        paths_worker(args)
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
            "parts": args.parts,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    me = [sys.executable, str(Path(__file__).resolve())]
    with open(out / "gpu.log", "a", encoding="utf-8") as log:

        def left(reserve: float = 0.0) -> float:
            return deadline - time.perf_counter() - reserve

        def after(part: str) -> float:
            """The least time the parts asked for after ``part`` need."""
            later = [name for name in PARTS[PARTS.index(part) + 1 :] if name in args.parts]
            return sum(MINIMUM_SECONDS.get(name, 0) for name in later)

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
            # Each part's limit keeps back what the later ones need at least; a part that ends
            # early leaves its time to them.
            device = {"rows": []}
            if "device" in args.parts:
                device = device_part(me, args, min(args.device_seconds, left(after("device"))), log)
                report.record["device"] = device
                report.save()
                print(device["table"])
                note(f"device: {device['processes']}")
            if "paths" in args.parts:
                seconds = min(args.paths_seconds * len(args.models), left(after("paths")))
                paths = paths_part(me, Path(folder), args, seconds, report, log, note)
                report.save()
                print(paths["table"])
            if "kernels" in args.parts:
                lstms = sum(name in KERNEL_MODELS for name in args.models)
                seconds = min(args.kernel_seconds * max(1, lstms), left(after("kernels")))
                kernels = kernels_part(me, args, seconds, report, log, note)
                report.save()
                print(kernels["table"])
            if "prepare" in args.parts:
                report.record["prepare"] = prepare_part(
                    out, args, min(args.prepare_seconds, left(after("prepare"))), log
                )
                report.save()
                if "table" in report.record["prepare"]:
                    print(report.record["prepare"]["table"])
                note(f"prepare: {report.record['prepare']['status']}")
            study = {}
            if "study" in args.parts:
                seconds = min(args.study_seconds, left(after("study")))
                study = study_part(out, Path(folder), args, seconds, log)
                report.record["study"] = study
                report.save()
                note(f"study: {study['status']}, {study.get('wall_seconds', 0):.0f} s")

            # Where a machine has one GPU, 2 devices is only checked in --smoke, on the CPU.
            devices = 2 if (args.smoke or gpus >= 2) and "parallel" in args.parts else 0
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

            if "loader" in args.parts:
                loader_part(args, out, report, log, note, left)

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
            elif "parallel" in args.parts:
                status = f"skipped: {gpus} GPU(s)"
                report.record["parallel"] = {"status": status}
            if "parallel" in args.parts:
                report.save()
                note(f"parallel: {status}")
        # Inside the log's block: note() writes to the log too.
        report.record["seconds"] = time.perf_counter() - started
        report.save()
        note(f"wrote {report.path}")
    measured = [row for row in device["rows"] if row.get("status") == "ok"]
    measured += [row for row in study.get("runs", []) if row.get("status") == "ok"]
    measured += [
        row for row in report.record.get("paths", {}).get("rows", []) if row["status"] == "ok"
    ]
    measured += [
        row for row in report.record.get("kernels", {}).get("rows", []) if "ms_per_step" in row
    ]
    timing = {"device", "paths", "kernels", "study"} & set(args.parts) or args.fit
    return 0 if measured or report.record["models"] or not timing else 1


if __name__ == "__main__":
    sys.exit(main())
