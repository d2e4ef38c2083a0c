"""Benchmark inference of the six models in Keras against their ONNX export in ONNX Runtime.

For each model and clip shape, the model is built with seeded random weights, exported with
``nightact.serve.export.export_model`` (which also checks that ONNX Runtime matches Keras within
1e-4), and both are timed on this CPU, side by side in one process:

- latency: milliseconds per clip at batch 1 (median of ``--calls`` calls after warm-up);
- throughput: clips per second at batch 32 (best of ``--calls`` calls after warm-up).

Keras runs ``model.predict_on_batch`` (a compiled predict step); ONNX Runtime runs its session
with default options (all cores). Shapes: the demo's (8 x 48x64, its small widths) and the
original's (10 x 240x320, full widths).

    python benchmarks/export.py                 # all six at the demo's shape, the CNN ones at full
    python benchmarks/export.py --full-models simple_rnn lstm gru cnn_simple_rnn cnn_lstm cnn_gru
    python benchmarks/export.py --models cnn_gru --shapes demo --calls 5   # a quick run

The RNN-only models at the full shape are left out by default: the flat LSTM has 118 M
parameters, and exporting and timing it at batch 32 took over 12 GB of memory, more than a shared
24 GB machine should give one benchmark.

Prints a table and writes benchmarks/results/export.json (rewritten after every measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from nightact.core.names import MODEL_NAMES, NUM_CLASSES

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--models", "gru", "--shapes", "demo", "--calls", "1"]
# name -> (frames, height, width, build settings)
SHAPES = {
    "demo": (8, 48, 64, common.demo_model_settings()),
    "full": (10, 240, 320, {}),
}


def time_calls(function, clips: np.ndarray, calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls, after two untimed warm-up calls."""
    for _ in range(2):
        function(clips)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        function(clips)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(name: str, shape: str, calls: int, folder: Path) -> dict:
    import keras
    import onnxruntime

    from nightact.nets.models import build_model
    from nightact.serve.export import export_model

    frames, height, width, settings = SHAPES[shape]
    keras.utils.set_random_seed(0)
    model = build_model(name, frames, height, width, NUM_CLASSES, **settings)
    rng = np.random.default_rng(0)
    single = rng.integers(0, 256, (1, frames, height, width, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (32, frames, height, width, 3), dtype=np.uint8)
    path = folder / f"{name}-{shape}.onnx"
    started = time.perf_counter()
    export = export_model(
        model, "onnx", path, clips=batch[:4], class_names=[f"c{i}" for i in range(NUM_CLASSES)]
    )
    export_seconds = time.perf_counter() - started
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run_onnx(clips):
        return session.run(None, {input_name: clips})[0]

    row = {
        "model": name,
        "shape": shape,
        "clip": [frames, height, width],
        "parameters": int(model.count_params()),
        "export_seconds": export_seconds,
        "max_difference": export.max_difference,
        "onnx_mb": path.stat().st_size / 2**20,
    }
    for engine, function in (("keras", model.predict_on_batch), ("onnx", run_onnx)):
        latency = time_calls(function, single, calls)
        throughput = time_calls(function, batch, calls)
        row[f"{engine}_ms_batch1"] = 1000 * statistics.median(latency)
        row[f"{engine}_clips_per_s_batch32"] = 32 / min(throughput)
    path.unlink()
    return row


def format_table(rows: list[dict]) -> str:
    header = (
        "model",
        "shape",
        "Keras ms (b1)",
        "ORT ms (b1)",
        "ORT speed-up",
        "Keras clips/s (b32)",
        "ORT clips/s (b32)",
        "ORT speed-up",
        "max |diff|",
    )
    body = [
        (
            row["model"],
            "x".join(str(side) for side in row["clip"]),
            f"{row['keras_ms_batch1']:.1f}",
            f"{row['onnx_ms_batch1']:.1f}",
            f"{row['keras_ms_batch1'] / row['onnx_ms_batch1']:.2f}x",
            f"{row['keras_clips_per_s_batch32']:.1f}",
            f"{row['onnx_clips_per_s_batch32']:.1f}",
            f"{row['onnx_clips_per_s_batch32'] / row['keras_clips_per_s_batch32']:.2f}x",
            f"{row['max_difference']:.1e}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line) -> str:
        return "  ".join(
            text.ljust(width) if i < 2 else text.rjust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def main() -> int:
    from nightact.core.backend import prefer_backend

    # Before Keras is imported: exports run under TensorFlow (nightact.serve.export), so Keras' side
    # of the comparison does too.
    prefer_backend("tensorflow")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument(
        "--full-models",
        nargs="+",
        default=["cnn_simple_rnn", "cnn_lstm", "cnn_gru"],
        choices=MODEL_NAMES,
        help="models timed at the full shape (default: the CNN ones)",
    )
    parser.add_argument("--calls", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--json", default=str(HERE / "results" / "export.json"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nightact-export-bench-") as folder:
        for shape in args.shapes:
            names = args.full_models if shape == "full" else args.models
            for name in names:
                print(f"timing {name} at {shape} ...", file=sys.stderr, flush=True)
                rows.append(measure(name, shape, args.calls, Path(folder)))
                table = format_table(rows)
                report = {
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "machine": common.machine_summary(),
                    "load_average_before": load_before,
                    "load_average_now": os.getloadavg(),
                    "seconds": time.perf_counter() - started,
                    "calls": args.calls,
                    "results": rows,
                    "table": table,
                }
                path.write_text(json.dumps(report, indent=2))
    print(table)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
