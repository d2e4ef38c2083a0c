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
2. models: each of the six at 10 x 240x320, batch 64, mixed_float16 (``--float32``: without), on
   random uint8 clips in a store of nightact's format, in one process per model, in this order
   (each result is kept as soon as it is measured, so a model that runs out of time keeps what
   it finished):
   - ``step``: the step with the data already on the device: ``train_on_batch`` on one batch put
     there with ``jax.device_put``, 30 steps after 4 warm-ups (the model as ``nightact train``
     builds and compiles it);
   - ``train``: ``nightact train`` itself (``nightact.training.train.train``) on each path of
     ``--paths``: ``device`` (``--data-on-device yes``: the splits copied to the device once,
     batches gathered there) and ``host`` (``--data-on-device no``: reading threads put batches
     on the device ahead of the step); ms per step over the epochs after the first (tracing and
     compilation), each epoch's first steps left out (see ``train_step``), until its last step
     has finished, and its ratio to ``step`` (``over_step``): the goal is 1.2 or less;
3. loader: ``benchmarks/loader.py`` with 1, 2, 4, 8 readers, warm and cold;
4. parallel: cnn_gru on 2 devices against 1, at the same global batch, where 2 devices exist.

``--smoke`` runs every part at a tiny shape, in float32, for checking the code path on a CPU
(there, 2 logical CPU devices stand in for 2 GPUs). ``--parts`` runs a few of the parts,
``--models`` a few models, ``--paths`` one path only: a session with little GPU time sizes the
run with them (and ``--budget``, with ``NIGHTACT_GPU_GUARD`` above it for gpu.sh).
"""

from __future__ import annotations

import argparse
import csv
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

FULL = {"frames": 10, "height": 240, "width": 320, "batch_size": 64, "steps": 16, "epochs": 2}
SMOKE = {"frames": 10, "height": 24, "width": 32, "batch_size": 8, "steps": 3, "epochs": 1}
# Batches nightact train reads ahead of the step: its default reading threads less one, plus the
# one Keras puts on the device ahead.
READ_AHEAD = 4


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


def model_worker(args) -> None:
    """Time ``args.model`` on ``args.devices`` devices; print one JSON line per measurement."""
    import keras

    from nightact.training.devices import setup_devices

    setup = setup_devices(args.devices)
    record = {
        "model": args.model,
        "devices": setup.count,
        "platform": setup.platform,
        "backend": keras.config.backend(),
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision,
        "original_ms_per_step": ORIGINAL_MS_PER_STEP[args.model],
    }
    print(json.dumps({**record, **reference_step(args, setup)}), flush=True)
    for path in args.paths:
        print(json.dumps({"train": {path: train_step(args, path)}}), flush=True)


def train_config(args, out: Path, data_on_device: str = "auto"):
    """The TrainConfig the benchmark trains (and builds its reference model) with."""
    from nightact.training.train import TrainConfig

    # At the smoke test's tiny shape, a tiny model: it checks the code path, and compiles fast.
    tiny = {"units": (16,), "conv_filters": 16, "conv_kernel": 4, "conv_stride": 4}
    settings = tiny if args.smoke else {}
    return TrainConfig(
        data=args.data,
        model=args.model,
        out=str(out),
        epochs=1 + args.epochs,
        batch_size=args.batch_size,
        mixed_precision=args.mixed_precision,
        devices=args.devices,
        # The original's setting, and the step the goal is measured against has none.
        augment=False,
        data_on_device=data_on_device,
        **settings,
    )


def reference_step(args, setup) -> dict:
    """ms per ``train_on_batch`` on one batch already on the device, as the goal's yardstick."""
    import keras

    from nightact.core.store import open_split
    from nightact.data.placement import batch_sharding
    from nightact.training.train import build_and_compile, check_store

    config, class_names = check_store(train_config(args, Path(args.data) / "unused"))
    with setup.scope():
        model = build_and_compile(config, len(class_names), setup)
    split = open_split(args.data, "train")
    clips = np.asarray(split.frames[: args.batch_size])
    labels = np.eye(len(class_names), dtype=np.float32)[split.labels[: args.batch_size]]
    if keras.config.backend() == "jax":
        import jax

        clips = jax.device_put(clips, batch_sharding(clips.ndim))
        labels = jax.device_put(labels, batch_sharding(labels.ndim))
    started = time.perf_counter()
    for _ in range(4):
        model.train_on_batch(clips, labels)
    warmup = time.perf_counter() - started
    steps = 30 if not args.smoke else 3
    started = time.perf_counter()
    for _ in range(steps):
        # Returns the logs as Python floats: every step waits for the device, as in MEASURED.md.
        model.train_on_batch(clips, labels)
    seconds = time.perf_counter() - started
    return {
        "step_ms": 1000 * seconds / steps,
        "step_warmup_seconds": warmup,
        "parameters": int(model.count_params()),
        **_peak_memory(keras.config.backend()),
    }


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
            if record.getMessage().startswith("batches "):
                said.append(record.getMessage())

    logging.getLogger("nightact.training.train").setLevel(logging.INFO)
    logging.getLogger("nightact.training.train").addHandler(Said())
    timer = StepTimer()
    out = Path(tempfile.mkdtemp(prefix=f"run-{path}-", dir=Path(args.data).parent))
    setting = {"device": "yes", "host": "no"}[path]
    started = time.perf_counter()
    train(train_config(args, out / "run", setting), callbacks=[timer], verbose=0)
    timed = timer.seconds[1:]
    steps -= skip
    saved = json.loads((out / "run" / "config.json").read_text())
    return {
        "ms_per_step": 1000 * sum(timed) / (len(timed) * steps),
        "clips_per_second": steps * args.batch_size * len(timed) / sum(timed),
        "timed_steps": steps * len(timed),
        "run_seconds": time.perf_counter() - started,
        "data_path": saved["data_path"],
        "workers": saved["workers"],
        "why": said[-1] if said else None,
    }


def write_store(folder: Path, clips: int, frames: int, height: int, width: int, batch_size: int):
    """A store in nightact's format: ``clips`` random dark training clips, one batch to validate.

    Written directly (not prepared from videos): training reads only the arrays, store.json and
    the manifest's split and row columns.
    """
    from numpy.lib.format import open_memmap

    from nightact.core.names import CLASS_NAMES
    from nightact.core.store import MANIFEST_COLUMNS, MANIFEST_FILE, STORE_FILE

    rng = np.random.default_rng(0)
    block = rng.integers(0, 60, size=(16, frames, height, width, 3), dtype=np.uint8)
    sizes = {"train": clips, "val": batch_size, "test": batch_size}
    rows = []
    for split, count in sizes.items():
        array = open_memmap(
            folder / f"{split}.npy", "w+", np.uint8, (count, frames, height, width, 3)
        )
        for start in range(0, count, len(block)):
            stop = min(count, start + len(block))
            array[start:stop] = np.roll(block[: stop - start], start + len(split))
        array.flush()
        del array
        labels = rng.integers(0, NUM_CLASSES, size=count).astype(np.int64)
        np.save(folder / f"{split}_labels.npy", labels)
        rows += [
            {
                "path": f"{split}/{row}.mp4",
                "class": CLASS_NAMES[label],
                "label": int(label),
                "split": split,
                "row": row,
                "status": "ok",
            }
            for row, label in enumerate(labels)
        ]
    with open(folder / MANIFEST_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    settings = {"frames": frames, "height": height, "width": width, "frames_per_segment": 1}
    info = {"format": 1, "settings": settings, "class_names": list(CLASS_NAMES), "splits": sizes}
    (folder / STORE_FILE).write_text(json.dumps(info))


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
    """Run one part's process for at most ``seconds``; merge the JSON lines it printed.

    A worker prints a line as soon as it has a result, so a part that fails or runs out of time
    still gives what it finished (with the status saying what happened).
    """
    if seconds < 5:
        return None, "skipped: no time left in the budget"
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds, env=os.environ.copy()
        )
        stdout, stderr = finished.stdout, finished.stderr
        status = "ok"
        if finished.returncode != 0:
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            status = f"failed (exit {finished.returncode}): {last[-1] if last else ''}"
    except subprocess.TimeoutExpired as expired:
        stdout, stderr = _text(expired.stdout), _text(expired.stderr)
        status = f"timed out after {seconds:.0f} s"
    log.write(stderr[-4000:] + "\n")
    log.flush()
    result = merge_lines(stdout)
    if result is None and status == "ok":
        status = "failed: printed no JSON"
    if result is not None:
        result["part_seconds"] = time.perf_counter() - started
    return result, status


def merge_lines(stdout: str) -> dict | None:
    """The JSON objects among ``stdout``'s lines, merged (one level deep) in order."""
    merged = None
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        merged = merged or {}
        for key, item in value.items():
            if isinstance(item, dict) and isinstance(merged.get(key), dict):
                merged[key].update(item)
            else:
                merged[key] = item
    return merged


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def add_ratios(result: dict) -> dict:
    """Each path's ms per step over the step with the data on the device (the goal: <= 1.2)."""
    for path in result.get("train", {}).values():
        if "ms_per_step" in path and result.get("step_ms"):
            path["over_step"] = path["ms_per_step"] / result["step_ms"]
    return result


def format_table(models: list[dict]) -> str:
    header = ["model", "devices", "step ms", "train ms: device", "host", "clips/s", "original ms"]

    def path(row, name) -> str:
        measured = row.get("train", {}).get(name)
        if not measured or "ms_per_step" not in measured:
            return "-"
        return f"{measured['ms_per_step']:.1f} ({measured['over_step']:.2f}x)"

    lines = [
        [
            row["model"],
            str(row["devices"]),
            f"{row['step_ms']:.1f}" if "step_ms" in row else "-",
            path(row, "device"),
            path(row, "host"),
            f"{row['train']['device']['clips_per_second']:.0f}"
            if "device" in row.get("train", {})
            else "-",
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


PARTS = ("models", "loader", "parallel")


def parse_arguments(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for gpu.json and loader.json (required)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check the code path")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all parts")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["device", "host"],
        choices=["device", "host"],
        help="the paths nightact train is timed on, after the step itself",
    )
    parser.add_argument(
        "--float32",
        action="store_true",
        help="no mixed precision (lstm and cnn_lstm crash under mixed_float16 on JAX's cuDNN)",
    )
    parser.add_argument("--model-seconds", type=float, default=150, help="limit per model")
    parser.add_argument("--loader-seconds", type=float, default=75)
    parser.add_argument("--parallel-seconds", type=float, default=150)
    # Internal: one part in a fresh process.
    parser.add_argument("--worker", choices=["environment", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--mixed-precision", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker and not args.out:
        parser.error("--out is required")
    return args


class Driver:
    """The parts in order, each in its own process, within one budget; notes to gpu.log."""

    def __init__(self, args, report: Report, log):
        self.args, self.report, self.log = args, report, log
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget
        self.shape = SMOKE if args.smoke else FULL
        self.me = [sys.executable, str(Path(__file__).resolve())]
        self.gpus = 0

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - time.perf_counter() - reserve

    def note(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.started:6.1f} s] {message}"
        print(line, file=sys.stderr, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def environment(self) -> None:
        command = [*self.me, "--worker", "environment"]
        environment, status = run_part(command, min(60, self.left()), self.log)
        self.report.record["environment"] = environment or {"status": status}
        self.report.save()
        self.note(f"environment: {status}")
        if environment:
            for missing in environment["missing"]:
                self.note(f"MISSING {missing}")
            self.gpus = max(environment.get("jax_gpus", 0), environment.get("tensorflow_gpus", 0))
        if not self.args.smoke and self.gpus == 0:
            self.note("NO GPU seen by the Keras backend: the figures below are CPU figures")

    def model_command(self, store: Path, model: str, devices: int) -> list[str]:
        shape = self.shape
        command = [*self.me, "--worker", "model", "--model", model, "--data", str(store)]
        command += ["--devices", str(devices), "--batch-size", str(shape["batch_size"])]
        command += ["--epochs", str(shape["epochs"]), "--paths", *self.args.paths]
        # float16 on a CPU only slows the smoke test down (and its compiling most).
        if self.args.smoke:
            return [*command, "--smoke"]
        return command if self.args.float32 else [*command, "--mixed-precision"]

    def models(self, store: Path) -> None:
        # Leave the loader its share of the budget; 2-device runs only take what is left.
        reserve = min(self.args.loader_seconds, 0.2 * self.args.budget)
        if "loader" not in self.args.parts:
            reserve = 0.0
        record = self.report.record
        record["models"], record["model_failures"] = [], {}
        for model in self.args.models:
            result, status = run_part(
                self.model_command(store, model, 1),
                min(self.args.model_seconds, self.left(reserve)),
                self.log,
            )
            if result:
                record["models"].append(add_ratios({**result, "status": status}))
            if status != "ok":
                record["model_failures"][model] = status
            self.note(f"{model}: {status}" + (f"\n{format_table([result])}" if result else ""))
            self.report.save()
        if record["models"]:
            record["table"] = format_table(record["models"])
            print(record["table"])
            self.report.save()

    def loader(self) -> None:
        out = Path(self.args.out)
        command = [sys.executable, str(HERE / "loader.py"), "--json", str(out / "loader.json")]
        command += ["--repeats", "1", *(["--smoke"] if self.args.smoke else ["--clips", "512"])]
        started = time.perf_counter()
        try:
            finished = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=max(5.0, min(self.args.loader_seconds, self.left())),
            )
            self.log.write(finished.stderr[-4000:] + "\n")
            if finished.returncode == 0:
                loader = json.loads((out / "loader.json").read_text())
                self.report.record["loader"] = loader
                status = "ok"
                print(loader["table"])
            else:
                status = f"failed (exit {finished.returncode})"
                self.report.record["loader"] = {"status": status}
        except subprocess.TimeoutExpired as expired:
            self.log.write(_text(expired.stderr)[-4000:] + "\n")
            status = f"timed out after {time.perf_counter() - started:.0f} s"
            # The loader rewrites its JSON after every measurement: keep those it finished.
            partial = out / "loader.json"
            self.report.record["loader"] = {
                "status": status,
                **(json.loads(partial.read_text()) if partial.exists() else {}),
            }
        self.report.save()
        self.note(f"loader: {status}")

    def parallel(self, store: Path) -> None:
        # Where a machine has one GPU, 2 devices is only checked in --smoke, on the CPU.
        devices = 2 if (self.args.smoke or self.gpus >= 2) else 0
        if not devices:
            status = f"skipped: {self.gpus} GPU(s)"
            self.report.record["parallel"] = {"status": status}
        else:
            command = self.model_command(store, "cnn_gru", devices)
            result, status = run_part(
                command, min(self.args.parallel_seconds, self.left()), self.log
            )
            one = [row for row in self.report.record.get("models", []) if row["model"] == "cnn_gru"]
            if result:
                add_ratios(result)
                for path, measured in result.get("train", {}).items():
                    alone = one[0].get("train", {}).get(path) if one else None
                    if alone and "clips_per_second" in measured:
                        measured["speedup_over_one_device"] = (
                            measured["clips_per_second"] / alone["clips_per_second"]
                        )
            self.report.record["parallel"] = {**(result or {}), "status": status}
        self.report.save()
        self.note(f"parallel: {status}")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.worker == "environment":
        print(json.dumps(environment_worker(args)))
        return 0
    if args.worker == "model":
        model_worker(args)
        return 0

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
    with open(out / "gpu.log", "a", encoding="utf-8") as log:
        driver = Driver(args, report, log)
        driver.environment()
        with tempfile.TemporaryDirectory(prefix="nightact-gpu-") as folder:
            store = Path(folder) / "store"
            store.mkdir()
            count = shape["steps"] * shape["batch_size"]
            frames, height, width = shape["frames"], shape["height"], shape["width"]
            write_store(store, count, frames, height, width, shape["batch_size"])
            driver.note(f"wrote a store of {count} training clips of {frames}x{height}x{width}")
            if "models" in args.parts:
                driver.models(store)
            if "loader" in args.parts:
                driver.loader()
            if "parallel" in args.parts:
                driver.parallel(store)
        # Inside the log's block: note() writes to the log too.
        report.record["seconds"] = time.perf_counter() - driver.started
        report.save()
        driver.note(f"wrote {report.path}")
    return 0 if report.record.get("models") or "models" not in args.parts else 1


if __name__ == "__main__":
    sys.exit(main())
