"""Time the torch backend's training step with each thread count, alternating in one process.

Torch computes on a CPU with an OpenMP thread pool, one thread per core by default. When the
machine is busier than it has cores, a pool thread that is not scheduled holds up every
operation's barrier, so the default can be far slower than one thread. This script shows how
much, on the machine as it is: one model at a time is built and compiled as ``nightact train``
does it (see benchmarks/backends.py), warmed up, and then ``train_on_batch`` is timed with each
thread count in turn (``torch.set_num_threads``), ``--repeats`` times in alternating order.

    KERAS_BACKEND is set to torch here; run it with an interpreter where torch is installed:
    python benchmarks/torch_threads.py                      # simple_rnn, cnn_gru; 1 and all cores
    python benchmarks/torch_threads.py --models simple_rnn --steps 1 --repeats 1   # quick

Prints a table and writes benchmarks/results/torch_threads.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import common
from nightact.core.names import NUM_CLASSES

# Set over nightact's own choice, which importing it made; Keras is imported later, in main().
os.environ["KERAS_BACKEND"] = "torch"

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["simple_rnn", "cnn_gru"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count()])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "results" / "torch_threads.json"))
    args = parser.parse_args()
    if importlib.util.find_spec("torch") is None:
        print(f"torch is not installed for {sys.executable}: nothing to measure")
        return 0

    import keras
    import numpy as np
    import torch

    from nightact.training.train import TrainConfig, build_and_compile

    machine = common.describe_machine()
    print(common.format_machine(machine), file=sys.stderr)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 60, size=(16, 10, 60, 80, 3), dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, size=16)]
    settings = common.model_settings()
    rows, loads = [], []
    for name in args.models:
        keras.utils.set_random_seed(0)
        config = TrainConfig(
            data="benchmark", model=name, out="benchmark", batch_size=16,
            frames=10, height=60, width=80, **settings,
        )  # fmt: skip
        model = build_and_compile(config, NUM_CLASSES)
        for _ in range(2):
            model.train_on_batch(clips, labels)
        times = {threads: [] for threads in args.threads}
        for repeat in range(args.repeats):
            order = args.threads if repeat % 2 == 0 else args.threads[::-1]
            for threads in order:
                torch.set_num_threads(threads)
                loads.append(os.getloadavg()[0])
                started = time.perf_counter()
                for _ in range(args.steps):
                    model.train_on_batch(clips, labels)
                times[threads].append(1000 * (time.perf_counter() - started) / args.steps)
        for threads, values in times.items():
            rows.append(
                {"model": name, "threads": threads, "train_ms_per_step": statistics.median(values)}
            )
            print(f"{name:<16} {threads:>2} threads  {statistics.median(values):>9.0f} ms/step")
    print(f"load average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f}")
    report = {
        "benchmark": "torch_threads",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "torch": torch.__version__,
        "shape": [10, 60, 80],
        "batch_size": 16,
        "steps_per_turn": args.steps,
        "repeats": args.repeats,
        "load_1min": [min(loads), max(loads)],
        "results": rows,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
