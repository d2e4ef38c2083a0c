"""Train and run the six models under every installed Keras backend, side by side in one run.

Each backend (TensorFlow, JAX, torch) runs in its own worker process, started with KERAS_BACKEND
set before Keras is imported. A worker builds and compiles a model as ``nightact train`` does
(``nightact.training.train.build_and_compile``: Adam, categorical cross-entropy, XLA on
TensorFlow's CPU, jit on JAX, Keras' default on torch, which runs eagerly) and warms it up
(tracing, compilation) the first time it is asked for it. Then the parent asks the workers in
turn, one at a time and in a rotating order, to time one model:

- training: ``--steps`` calls of ``train_on_batch`` (the compiled step ``fit`` runs) on batches
  held in memory, so the data loader is not in the figure; milliseconds per step;
- inference: ``--steps`` calls of ``predict_on_batch`` on batches of the same size, as
  ``nightact evaluate`` times it; milliseconds per clip.

Only one worker computes at a time and the backends take turns, so the load of a shared machine
falls on all of them alike; each figure is the median of ``--repeats`` turns. The load average is
sampled before every turn and reported.

Also per backend: the time to ``import keras`` with that backend in a fresh interpreter (median of
``--repeats``, taken in turns), and the install size: the files (per the package metadata) of the
backend's distributions and of every dependency they add to what Keras itself needs.

    python benchmarks/backends.py                   # installed backends, six models,
                                                    # 10 x 60x80, batch 16, 5 repeats (~10 min)
    python benchmarks/backends.py --models lstm --steps 2 --repeats 1      # a quick run
    python benchmarks/backends.py --gpu             # on a GPU: 10 x 240x320, batch 64, the
                                                    # original's widths; backends that see no
                                                    # GPU are left out
    python benchmarks/backends.py --python torch=/other/venv/bin/python   # a backend installed
                                                    # in another environment

Prints a table and writes benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from nightact.core.names import NUM_CLASSES

HERE = Path(__file__).resolve().parent

# Keras backend name -> the module it imports and the distributions that make it.
BACKENDS = {
    "tensorflow": ("tensorflow", ["tensorflow"]),
    "jax": ("jax", ["jax", "jaxlib"]),
    "torch": ("torch", ["torch"]),
}
# Distinct random batches the timed steps cycle through.
DISTINCT_BATCHES = 4


# ---------------------------------------------------------------------------------------------
# The worker: one backend, in its own process, driven by JSON lines on stdin.


def worker(args) -> None:
    """Answer the parent's orders, one JSON line each, on a private copy of stdout.

    Everything else that writes to stdout (TensorFlow's C++ logging, stray prints) is sent to
    stderr, so the protocol stays clean.
    """
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    import keras
    import numpy as np

    from nightact.core.names import MODEL_NAMES
    from nightact.training.train import TrainConfig, build_and_compile, gpu_available

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")

    backend = keras.config.backend()
    send(
        {
            "backend": backend,
            "keras": keras.__version__,
            "backend_version": _backend_version(backend),
            "gpu": gpu_available(),
            "threads": _threads(backend),
            "model_names": list(MODEL_NAMES),
        }
    )

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.frames, args.height, args.width, 3)
    # Dark, noisy frames, as prepared night clips look.
    clips = [rng.integers(0, 60, size=shape, dtype=np.uint8) for _ in range(DISTINCT_BATCHES)]
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)
    labels = [
        one_hot[rng.integers(0, NUM_CLASSES, size=args.batch_size)] for _ in range(DISTINCT_BATCHES)
    ]
    models = {}

    def batch(index: int):
        return clips[index % DISTINCT_BATCHES], labels[index % DISTINCT_BATCHES]

    for line in sys.stdin:
        order = json.loads(line)
        if order["do"] == "quit":
            break
        name, steps = order["model"], order["steps"]
        answer = {"backend": backend, "model": name}
        if name not in models:
            keras.utils.set_random_seed(0)
            config = TrainConfig(
                data="benchmark",
                model=name,
                out="benchmark",
                batch_size=args.batch_size,
                learning_rate=1e-4,
                mixed_precision=args.mixed_precision,
                xla=not args.no_xla,
                frames=args.frames,
                height=args.height,
                width=args.width,
                **common.model_settings(args.full_shape),
            )
            started = time.perf_counter()
            model = build_and_compile(config, NUM_CLASSES)
            model.train_on_batch(*batch(0))
            answer["first_step_seconds"] = time.perf_counter() - started
            for index in range(1, args.warmup):
                model.train_on_batch(*batch(index))
            started = time.perf_counter()
            model.predict_on_batch(clips[0])
            answer["first_prediction_seconds"] = time.perf_counter() - started
            for index in range(1, args.warmup):
                model.predict_on_batch(clips[index % DISTINCT_BATCHES])
            answer["parameters"] = int(model.count_params())
            models[name] = model
        model = models[name]

        # train_on_batch and predict_on_batch return NumPy values: each call has finished on
        # the device before the next starts, so the clock measures the work, not its dispatch.
        started = time.perf_counter()
        for index in range(steps):
            logs = model.train_on_batch(*batch(index), return_dict=True)
        answer["train_ms_per_step"] = 1000 * (time.perf_counter() - started) / steps
        answer["loss"] = float(logs["loss"])
        started = time.perf_counter()
        for index in range(steps):
            model.predict_on_batch(clips[index % DISTINCT_BATCHES])
        seconds = time.perf_counter() - started
        answer["inference_ms_per_clip"] = 1000 * seconds / (steps * args.batch_size)
        send(answer)


def _backend_version(backend: str) -> str:
    return str(importlib.import_module(backend).__version__)


def _threads(backend: str) -> int | None:
    """Threads the backend computes with on a CPU, where it says so."""
    if backend == "torch":
        import torch

        return torch.get_num_threads()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    return os.cpu_count()  # XLA's CPU client uses one thread per core


# ---------------------------------------------------------------------------------------------
# Measurements made from the parent in fresh interpreters: import time and install size.

IMPORT_PROBE = """
import time
started = time.perf_counter()
import keras
import {module}
print(time.perf_counter() - started)
"""

# Sums the files of a backend's distributions and of the dependencies they add to Keras'.
SIZE_PROBE = """
import importlib.metadata as metadata, json, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

def requirements(name):
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return []
    found = []
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        found.append(canonicalize_name(requirement.name))
    return found

def closure(names):
    seen, todo = set(), [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(requirements(name))
    return seen

def size(name):
    total = 0
    for file in metadata.distribution(name).files or []:
        if file.size is not None:
            total += file.size
        else:
            path = file.locate()
            total += path.stat().st_size if path.is_file() else 0
    return total

own = closure(sys.argv[1:]) - closure(["keras"])
sizes = {name: size(name) for name in sorted(own)}
print(json.dumps({"distributions": sizes, "bytes": sum(sizes.values())}))
"""


def backend_environment(backend: str) -> dict:
    return {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Several backends share one GPU in --gpu runs: none may take all of its memory.
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }


def import_seconds(python: str, backend: str) -> float:
    module = BACKENDS[backend][0]
    finished = subprocess.run(
        [python, "-c", IMPORT_PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=backend_environment(backend),
        check=True,
    )
    return float(finished.stdout.strip().splitlines()[-1])


def install_size(python: str, backend: str) -> dict:
    finished = subprocess.run(
        [python, "-c", SIZE_PROBE, *BACKENDS[backend][1]],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(finished.stdout)


def installed(python: str, backend: str) -> bool:
    if python == sys.executable:
        return importlib.util.find_spec(BACKENDS[backend][0]) is not None
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({backend!r}) is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------------------------
# The parent: start the workers, take turns, collect, print.


class Worker:
    """One backend's worker process and its log file."""

    def __init__(self, args, backend: str, python: str, log_folder: Path):
        self.backend = backend
        self.log_path = log_folder / f"{backend}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        command = [python, __file__, "--worker", *worker_flags(args)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
            env=backend_environment(backend),
        )
        self.hello = self.receive()

    def ask(self, model: str, steps: int) -> dict:
        self.process.stdin.write(json.dumps({"do": "time", "model": model, "steps": steps}) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.log.flush()
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"the {self.backend} worker stopped:\n{tail}")
        return json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"do": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=120)
        self.log.close()


def worker_flags(args) -> list[str]:
    flags = [
        f"--frames={args.frames}",
        f"--height={args.height}",
        f"--width={args.width}",
        f"--batch-size={args.batch_size}",
        f"--warmup={args.warmup}",
    ]
    if args.mixed_precision:
        flags.append("--mixed-precision")
    if args.full_shape:
        flags.append("--full-shape")
    if args.no_xla:
        flags.append("--no-xla")
    return flags


def rotate(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


def summarise(runs: list[dict], backends: list[str], models: list[str]) -> list[dict]:
    """Median over repeats of every (model, backend), with the spread."""
    rows = []
    for model in models:
        for backend in backends:
            mine = [run for run in runs if run["model"] == model and run["backend"] == backend]
            if not mine:
                continue
            train = [run["train_ms_per_step"] for run in mine]
            inference = [run["inference_ms_per_clip"] for run in mine]
            rows.append(
                {
                    "model": model,
                    "backend": backend,
                    "train_ms_per_step": statistics.median(train),
                    "train_ms_min_max": [min(train), max(train)],
                    "inference_ms_per_clip": statistics.median(inference),
                    "inference_ms_min_max": [min(inference), max(inference)],
                    "first_step_seconds": mine[0].get("first_step_seconds"),
                    "parameters": mine[0].get("parameters"),
                    "repeats": len(mine),
                }
            )
    return rows


def render(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]

    def one(line) -> str:
        cells = [str(line[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    return "\n".join([one(header), "  ".join("-" * width for width in widths), *map(one, lines)])


def format_tables(rows: list[dict], backends: list[str], models: list[str], info: dict) -> str:
    def figure(model: str, backend: str, key: str, digits: int) -> str:
        row = next((r for r in rows if r["model"] == model and r["backend"] == backend), None)
        return f"{row[key]:.{digits}f}" if row else "-"

    def ratio_to_fastest(model: str, backend: str, key: str) -> str:
        mine = {r["backend"]: r[key] for r in rows if r["model"] == model}
        if backend not in mine or len(mine) < 2:
            return "-"
        others = [value for name, value in mine.items() if name != backend]
        return f"{mine[backend] / min(others):.2f}x"

    short = {"tensorflow": "TF", "jax": "JAX", "torch": "torch"}
    header = ["model"]
    header += [f"train {short[b]}" for b in backends]
    header += [f"infer {short[b]}" for b in backends]
    header += ["fastest train"]
    if "torch" in backends and len(backends) > 1:
        header += ["torch train / best other"]
    lines = []
    for model in models:
        line = [model]
        line += [figure(model, b, "train_ms_per_step", 1) for b in backends]
        line += [figure(model, b, "inference_ms_per_clip", 2) for b in backends]
        timed = [r for r in rows if r["model"] == model]
        line.append(short[min(timed, key=lambda r: r["train_ms_per_step"])["backend"]])
        if "torch" in backends and len(backends) > 1:
            line.append(ratio_to_fastest(model, "torch", "train_ms_per_step"))
        lines.append(line)
    speed = render(header, lines)
    speed += "\n(train: ms per training step; infer: ms per clip; medians of the repeats)"

    header = ["backend", "version", "device", "threads", "import keras s", "install MB"]
    lines = [
        [
            b,
            info[b]["backend_version"],
            "GPU" if info[b]["gpu"] else "CPU",
            str(info[b]["threads"]),
            f"{info[b]['import_seconds']:.1f}",
            f"{info[b]['install']['bytes'] / 2**20:.0f}",
        ]
        for b in backends
    ]
    return speed + "\n\n" + render(header, lines)


def finish(args, machine, info, skipped, runs, models, backends) -> dict:
    """Print the tables and return the JSON report of a run."""
    rows = summarise(runs, backends, models)
    table = format_tables(rows, backends, models, info)
    loads = [run["load_1min"] for run in runs]
    load_line = (
        f"load average (1 min) during the run: min {min(loads):.2f}, "
        f"median {statistics.median(loads):.2f}, max {max(loads):.2f} "
        f"(includes the benchmark's own worker)"
    )
    shape = f"{args.frames} x {args.height}x{args.width}, batch {args.batch_size}"
    turns = sorted({row["repeats"] for row in rows})
    print(f"{shape}, {args.steps} steps per turn, median of {'-'.join(map(str, turns))} turns")
    if machine:
        print(common.format_machine(machine))
    print(table)
    print(load_line)
    for backend, reason in skipped.items():
        print(f"{backend}: left out ({reason})")
    return {
        "benchmark": "backends",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "shape": [args.frames, args.height, args.width],
        "batch_size": args.batch_size,
        "steps_per_turn": args.steps,
        "warmup_steps": args.warmup,
        "repeats": args.repeats,
        "mixed_precision": args.mixed_precision,
        "xla": not args.no_xla,
        "model_settings": common.model_settings(args.full_shape),
        "backends": info,
        "skipped": skipped,
        "load_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "results": rows,
        "all_runs": runs,
        "table": table,
    }


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", file=sys.stderr)


def summarise_partial(args) -> None:
    """Tables and JSON from the turns a stopped run had finished (its .partial.json)."""
    partial = json.loads(Path(args.summarise).read_text())
    runs = partial["all_runs"]
    backends = [backend for backend in BACKENDS if any(r["backend"] == backend for r in runs)]
    models = list(dict.fromkeys(run["model"] for run in runs))
    info = {backend: partial["backends"][backend] for backend in backends}
    report = finish(
        args, partial.get("machine"), info, partial.get("skipped", {}), runs, models, backends
    )
    report["partial"] = args.summarise
    write_report(report, Path(args.json))


def parse_pythons(pairs: list[str]) -> dict[str, str]:
    pythons = {}
    for pair in pairs:
        backend, separator, python = pair.partition("=")
        if not separator or backend not in BACKENDS:
            raise SystemExit(f"--python wants BACKEND=PATH with BACKEND in {list(BACKENDS)}")
        pythons[backend] = python
    return pythons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--models", nargs="+", default=None, help="default: all six")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the first")
    parser.add_argument("--repeats", type=int, default=5, help="turns per backend and model")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--no-xla", action="store_true", help="nightact train --no-xla")
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="the original's 10 x 240x320 clips, batch 64 and widths; GPU backends only",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="BACKEND=PATH",
        help="run a backend with another interpreter (one where it is installed)",
    )
    parser.add_argument("--json", default=str(HERE / "results" / "backends.json"))
    parser.add_argument(
        "--summarise",
        metavar="PARTIAL_JSON",
        help="print and save the turns a stopped run finished (give it the run's other flags)",
    )
    # Internal: one backend's worker.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--full-shape", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args)
        return 0
    if args.summarise:
        summarise_partial(args)
        return 0

    if args.gpu:
        args.frames, args.height, args.width, args.batch_size = 10, 240, 320, 64
        args.full_shape = True
    pythons = {backend: sys.executable for backend in BACKENDS} | parse_pythons(args.python)
    started = time.perf_counter()
    machine = common.describe_machine()
    print(common.format_machine(machine), file=sys.stderr)

    backends, skipped = [], {}
    for backend in args.backends:
        if installed(pythons[backend], backend):
            backends.append(backend)
        else:
            skipped[backend] = f"not installed for {pythons[backend]}"
    if not backends:
        raise SystemExit("no Keras backend is installed")

    info = {}
    for backend in backends:
        info[backend] = {"python": pythons[backend], "import_runs": []}
        info[backend]["install"] = install_size(pythons[backend], backend)
    for repeat in range(args.repeats):
        for backend in rotate(backends, repeat):
            info[backend]["import_runs"].append(import_seconds(pythons[backend], backend))
    for backend in backends:
        info[backend]["import_seconds"] = statistics.median(info[backend]["import_runs"])

    runs, loads = [], []
    partial = Path(args.json).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "skipped": skipped, "backends": info}
    with tempfile.TemporaryDirectory(prefix="nightact-backends-") as folder:
        workers = {}
        try:
            for backend in backends:
                print(f"starting the {backend} worker ...", file=sys.stderr, flush=True)
                workers[backend] = Worker(args, backend, pythons[backend], Path(folder))
                info[backend].update(workers[backend].hello)
            if args.gpu:
                for backend in [b for b in backends if not info[b]["gpu"]]:
                    skipped[backend] = "sees no GPU"
                    workers.pop(backend).stop()
                backends = [b for b in backends if b in workers]
                if not backends:
                    raise SystemExit("--gpu: no backend sees a GPU")
            known = workers[backends[0]].hello["model_names"]
            models = args.models or known
            unknown = sorted(set(models) - set(known))
            if unknown:
                raise SystemExit(f"unknown models {unknown}; choose from {known}")
            for repeat in range(args.repeats):
                for model in models:
                    for backend in rotate(backends, repeat + models.index(model)):
                        # Let the last worker's threads go idle before the next one starts.
                        time.sleep(0.3)
                        load = os.getloadavg()[0]
                        loads.append(load)
                        print(
                            f"run {repeat + 1}/{args.repeats}: {model} on {backend} "
                            f"(load {load:.2f}) ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        run = workers[backend].ask(model, args.steps)
                        runs.append({**run, "repeat": repeat, "load_1min": load})
                        # Keep what is measured so far, in case a long run is stopped.
                        partial.write_text(json.dumps({**record, "all_runs": runs}))
        finally:
            for one in workers.values():
                one.stop()

    report = finish(args, machine, info, skipped, runs, models, backends)
    report["seconds"] = time.perf_counter() - started
    write_report(report, Path(args.json))
    partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
