"""What Ray costs on one machine: `prepare` and a study of tiny runs, with and without `--ray`.

Side by side in one run, each command in a fresh process, alternating plain and Ray (``--repeats``
rounds) so that a change in the machine's load falls on both:

1. start-up: connecting to a new local Ray instance and letting it go (nothing run), the fixed
   price of every ``--ray`` command that starts its own;
2. prepare: ``nightact prepare SRC STORE --workers N`` against the same with ``--ray`` (a new
   local instance of N CPUs), on synthetic videos, without the leakage check; the two stores are
   compared byte for byte;
3. study: ``nightact study`` of tiny runs (``--models`` x ``--seeds``, one epoch of a small store)
   with ``--parallel N`` against ``--ray`` (one CPU per run, so N at a time).

    python benchmarks/ray_overhead.py                  # 96 videos, 2 models x 2 seeds
    python benchmarks/ray_overhead.py --smoke          # seconds: a few tiny videos, one run

Prints the table and writes benchmarks/results/ray_overhead.json (``--json``).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

# What `python benchmarks/figures.py --quick` runs this with.
QUICK_ARGS = ["--smoke"]
NIGHTACT = [sys.executable, "-m", "nightact.cli"]
STARTUP = (
    "from nightact.core import cluster\n"
    "with cluster.connect(cluster.LOCAL, cpus={cpus}):\n"
    "    cluster.cluster_cpus()\n"
)


def timed(command: list[str], log: Path) -> float:
    """Wall seconds of ``command``, run to its end (its output appended to ``log``)."""
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = log.read_text(encoding="utf-8").splitlines()[-20:]
        raise SystemExit(f"{' '.join(command)} failed; the end of its output:\n" + "\n".join(tail))
    return time.perf_counter() - started


def same_store(first: Path, second: Path) -> bool:
    names = ("train.npy", "val.npy", "test.npy", "train_labels.npy", "manifest.csv")
    return all(filecmp.cmp(first / name, second / name, shallow=False) for name in names)


def measure(args, work: Path) -> dict:
    log = work / "commands.log"
    videos = work / "videos"
    synth = [*NIGHTACT, "synth", str(videos), "--videos-per-class", str(args.videos_per_class)]
    synth += ["--min-seconds", "2", "--max-seconds", str(args.max_seconds), "--size", "240x320"]
    timed(synth, log)
    workers = ["--workers", str(args.workers)]
    prepare = [*NIGHTACT, "prepare", str(videos), "--no-leakage-check", "--size", args.size]
    study_store = work / "study-store"
    timed([*NIGHTACT, "prepare", str(videos), str(study_store), "--size", "48x64", "--frames",
           "8", "--no-leakage-check", *workers], log)  # fmt: skip
    study = [*NIGHTACT, "study", "--data", str(study_store), "--models", args.models]
    study += ["--seeds", args.seeds, "--epochs", "1", "--batch-size", "8"]

    rounds = []
    for round_number in range(args.repeats):
        seconds = {}
        startup = [sys.executable, "-c", STARTUP.format(cpus=args.workers)]
        python_alone = [sys.executable, "-c", "import nightact.core.cluster"]
        seconds["ray_startup"] = timed(startup, log) - timed(python_alone, log)
        for way, extra in (("plain", workers), ("ray", ["--ray", *workers])):
            store = work / f"store-{way}-{round_number}"
            seconds[f"prepare_{way}"] = timed([*prepare, str(store), *extra], log)
        plain_store = work / f"store-plain-{round_number}"
        seconds["stores_identical"] = same_store(plain_store, work / f"store-ray-{round_number}")
        for way, extra in (("plain", ["--parallel", str(args.workers)]), ("ray", ["--ray"])):
            out = work / f"study-{way}-{round_number}"
            seconds[f"study_{way}"] = timed([*study, "--out", str(out), *extra], log)
        rounds.append(seconds)
        for path in work.glob(f"*-{round_number}"):
            shutil.rmtree(path)
    return {
        "videos": args.videos_per_class * 12,
        "runs": len(args.models.split(",")) * len(args.seeds.split(",")),
        "rounds": rounds,
    }


def table(result: dict) -> str:
    rows = [
        f"| step ({result['videos']} videos; {result['runs']} runs) | plain s | --ray s | "
        "ratio | Ray's overhead s |",
        "|---|---:|---:|---:|---:|",
    ]
    for round_number, seconds in enumerate(result["rounds"]):
        startup = seconds["ray_startup"]
        rows.append(f"| round {round_number}: a new local Ray instance, started and stopped | | "
                    f"{startup:.1f} | | {startup:.1f} |")  # fmt: skip
        for step in ("prepare", "study"):
            plain, ray = seconds[f"{step}_plain"], seconds[f"{step}_ray"]
            rows.append(
                f"| round {round_number}: {step} | {plain:.1f} | {ray:.1f} | {ray / plain:.2f} "
                f"| {ray - plain:.1f} |"
            )
        rows.append(f"| round {round_number}: stores byte-identical | | | | "
                    f"{seconds['stores_identical']} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos-per-class", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=6)
    parser.add_argument("--size", default="240x320", help="prepare's clip size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", default="simple_rnn,gru")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a few tiny videos, one run")
    parser.add_argument("--json", type=Path, default=common.REPO / "benchmarks" / "results" /
                        "ray_overhead.json")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        args.videos_per_class, args.max_seconds, args.size = 3, 2.5, "48x64"
        args.models, args.seeds, args.repeats = "gru", "0", 1

    machine = common.describe_machine()
    print(common.format_machine(machine))
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as folder:
        result = measure(args, Path(folder))
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in vars(args).items() if key != "json"}
    record = {"machine": machine, "settings": settings, **result}
    args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
