"""Re-run everything the README's figures come from, and keep the results with the machine.

``make figures`` runs this. Each step is one command, run in its own process, in this order:

    demo       nightact demo --out WORK/demo       (a fresh folder: the demo table, wall time)
    models     nightact models                     (parameter counts at the original shape)
    prepare    python benchmarks/prepare.py
    train      python benchmarks/train.py
    backends   python benchmarks/backends.py
    torch_threads  python benchmarks/torch_threads.py (with the interpreter given for torch)
    ...        every other benchmarks/*.py script present at run time (its QUICK_ARGS, a
               module-level list literal, are used by --quick)

Before each step the machine is described (CPU model, cores, load average, GPU, versions); the
step's table is printed under it. Everything lands in OUT (default benchmarks/measured/)::

    OUT/
      <step>-<date>.json      each benchmark's own JSON (demo: accuracies, F1, parameters, time)
      figures-<date>.json     per step: command, machine and load before, load after, seconds,
                              exit code, printed table
    WORK/                     (default benchmarks/results/figures-<date-time>/, not tracked)
      demo/                   the demo's videos, store, runs and report
      <step>.log              each step's progress output

    python benchmarks/figures.py                  # everything (over an hour on 2 cores)
    python benchmarks/figures.py --quick          # every step with tiny settings, into
                                                  # benchmarks/results/figures-quick/
    python benchmarks/figures.py --only demo models
    python benchmarks/figures.py --gpu            # also train.py --full-shape and
                                                  # backends.py --gpu
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent

# Files under benchmarks/ that are not steps here: helpers, and gpu.py, which benchmarks/gpu.sh
# runs on a GPU machine in one call (--gpu below adds the GPU-shaped runs of train and backends).
NOT_BENCHMARKS = {"figures.py", "common.py", "machine.py", "gpu.py"}
PYTHON = sys.executable
CLI = [PYTHON, "-m", "nightact.cli"]


@dataclass
class Step:
    """One command behind README figures."""

    name: str
    command: list[str]
    quick: list[str] = field(default_factory=list)  # appended under --quick
    json_flag: bool = True  # the command takes --json PATH
    gpu_only: bool = False


def known_steps(work: Path, backend_pythons: list[str]) -> list[Step]:
    forwarded = [f"--python={pair}" for pair in backend_pythons]
    torch_python = dict(pair.split("=", 1) for pair in backend_pythons).get("torch", PYTHON)
    return [
        Step(
            "demo",
            [*CLI, "demo", "--out", str(work / "demo")],
            quick=["--videos-per-class", "4", "--epochs", "1", "--models", "cnn_gru"],
            json_flag=False,
        ),
        Step(
            "models",
            [*CLI, "models"],
            quick=["--frames", "3", "--size", "24x32"],
            json_flag=False,
        ),
        Step(
            "prepare",
            [PYTHON, str(HERE / "prepare.py"), "--work", str(work / "prepare")],
            quick=["--per-class", "1", "--scale", "2"],
        ),
        Step(
            "train",
            [PYTHON, str(HERE / "train.py")],
            quick=["--models", "cnn_gru", "--steps", "2", "--epochs", "1", "--repeats", "1"],
        ),
        Step(
            "backends",
            [PYTHON, str(HERE / "backends.py"), *forwarded],
            quick=["--models", "cnn_gru", "--steps", "1", "--warmup", "1", "--repeats", "1"],
        ),
        Step(
            "torch_threads",
            [torch_python, str(HERE / "torch_threads.py")],
            quick=["--models", "simple_rnn", "--steps", "1", "--repeats", "1"],
        ),
        Step(
            "train-gpu",
            [PYTHON, str(HERE / "train.py"), "--full-shape"],
            quick=["--models", "cnn_gru", "--steps", "2", "--epochs", "1", "--repeats", "1"],
            gpu_only=True,
        ),
        Step(
            "backends-gpu",
            [PYTHON, str(HERE / "backends.py"), "--gpu", *forwarded],
            quick=["--models", "cnn_gru", "--steps", "1", "--warmup", "1", "--repeats", "1"],
            gpu_only=True,
        ),
    ]


def other_benchmarks(known: set[str]) -> list[Step]:
    """Benchmark scripts added under benchmarks/ that this file does not know by name."""
    steps = []
    for script in sorted(HERE.glob("*.py")):
        if script.name in NOT_BENCHMARKS or script.name in known or script.name.startswith("_"):
            continue
        source = script.read_text(encoding="utf-8")
        if "__main__" not in source:
            continue
        steps.append(
            Step(
                script.stem,
                [PYTHON, str(script)],
                quick=quick_args(source, script),
                json_flag='"--json"' in source,
            )
        )
    return steps


def quick_args(source: str, script: Path) -> list[str]:
    """The script's module-level ``QUICK_ARGS = [...]``; ``--help`` where it has none."""
    for node in ast.parse(source, filename=str(script)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "QUICK_ARGS" for target in node.targets
        ):
            return [str(value) for value in ast.literal_eval(node.value)]
    return ["--help"]


def demo_summary(folder: Path, seconds: float) -> dict:
    """The demo table's figures, read back from the runs' evaluation/metrics.json."""
    rows = []
    for metrics_path in sorted(folder.glob("runs/*/evaluation/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        rows.append(
            {
                "model": metrics["model"],
                "test_accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "parameters": metrics["parameters"],
                "clips": metrics["clips"],
                "inference_ms_per_clip": metrics["inference_ms_per_clip"],
            }
        )
    config = json.loads((folder / "demo_config.json").read_text())
    return {"benchmark": "demo", "seconds": seconds, "demo_config": config, "rows": rows}


def format_demo(summary: dict) -> str:
    lines = [
        f"{'model':<16} {'test accuracy':>13} {'macro F1':>8} {'parameters':>11} {'clips':>5}",
    ]
    for row in summary["rows"]:
        lines.append(
            f"{row['model']:<16} {100 * row['test_accuracy']:>12.1f}% {row['macro_f1']:>8.3f} "
            f"{row['parameters']:>11,} {row['clips']:>5}"
        )
    minutes, seconds = divmod(round(summary["seconds"]), 60)
    lines.append(f"wall time of `nightact demo`: {minutes} min {seconds} s")
    return "\n".join(lines)


def run_step(step: Step, quick: bool, out: Path, work: Path, date: str) -> dict:
    command = [*step.command, *(step.quick if quick else [])]
    json_path = out / f"{step.name}-{date}.json"
    if step.json_flag and command[-1] != "--help":
        command += ["--json", str(json_path)]
    machine = common.describe_machine()
    print(f"\n== {step.name}: {' '.join(command)}", flush=True)
    print(common.format_machine(machine), flush=True)
    log_path = work / f"{step.name}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    seconds = time.perf_counter() - started
    printed = finished.stdout
    record = {
        "step": step.name,
        "command": command,
        "machine_before": machine,
        "load_average_after": list(common.describe_machine()["load_average"]),
        "seconds": seconds,
        "exit_code": finished.returncode,
        "log": str(log_path),
    }
    if finished.returncode == 0 and step.name == "demo":
        summary = demo_summary(work / "demo", seconds)
        summary["machine"] = machine
        json_path.write_text(json.dumps(summary, indent=2))
        printed = format_demo(summary)
    if finished.returncode == 0 and json_path.exists():
        record["json"] = str(json_path)
    record["printed"] = printed
    print(printed.rstrip(), flush=True)
    if finished.returncode != 0:
        tail = log_path.read_text()[-2000:]
        print(f"!! {step.name} failed (exit code {finished.returncode}):\n{tail}", flush=True)
    load = ", ".join(f"{value:.2f}" for value in record["load_average_after"])
    print(f"-- {step.name}: {seconds:.0f} s; load average after: {load}", flush=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the chain")
    parser.add_argument("--only", nargs="+", default=None, metavar="STEP")
    parser.add_argument("--gpu", action="store_true", help="also the GPU-shaped benchmarks")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="BACKEND=PATH",
        help="passed to backends.py: a backend installed in another environment",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    now = datetime.datetime.now(datetime.timezone.utc)
    date = now.strftime("%Y-%m-%d")
    out = args.out or (HERE / "results" / "figures-quick" if args.quick else HERE / "measured")
    work = args.work or HERE / "results" / f"figures-{now.strftime('%Y-%m-%d-%H%M%S')}"
    if (work / "demo").exists():
        raise SystemExit(f"{work / 'demo'} exists: the demo must run in a fresh folder")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    steps = known_steps(work, args.python)
    steps += other_benchmarks({Path(step.command[1]).name for step in steps})
    if not args.gpu:
        steps = [step for step in steps if not step.gpu_only]
    if args.only:
        unknown = set(args.only) - {step.name for step in steps}
        if unknown:
            raise SystemExit(f"unknown steps {sorted(unknown)}; known: {[s.name for s in steps]}")
        steps = [step for step in steps if step.name in args.only]

    records = [run_step(step, args.quick, out, work, date) for step in steps]
    summary_path = out / f"figures-{date}.json"
    summary_path.write_text(
        json.dumps({"quick": args.quick, "work": str(work), "steps": records}, indent=2)
    )
    failed = [record["step"] for record in records if record["exit_code"] != 0]
    print(f"\nwrote {summary_path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
