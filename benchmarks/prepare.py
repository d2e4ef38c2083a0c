"""Benchmark `nightact prepare` against the original project's way of preparing clips.

The baseline re-implements the original's method: OpenCV, trust the header frame count, seek to
each of the 10 frames with CAP_PROP_POS_FRAMES, pad and resize with OpenCV, keep every clip in one
list in RAM, stack it into one array and split it in memory. nightact decodes with PyAV in worker
processes and streams rows to disk.

Each method runs in its own process; the benchmark samples the resident memory of that process
and all its children (workers included) every 20 ms and reports the peak. It runs on a corpus of
N synthetic 640x480 clips of 5-15 s, and on a corpus of 4N made of the same clips linked four times
under other names, to show how peak memory grows with the number of clips.

    python benchmarks/prepare.py                       # N = 108 (9 per class), 4N = 432
    python benchmarks/prepare.py --per-class 3         # a quick run

Prints a table and writes benchmarks/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
FRAMES, HEIGHT, WIDTH = 10, 240, 320


def original_prepare(src: Path, out: Path) -> int:
    """The original project's preparation, in our words: header count, seek, all in RAM."""
    import cv2

    class_names = sorted(path.name for path in src.iterdir() if path.is_dir())
    clips, labels = [], []
    for label, name in enumerate(class_names):
        for path in sorted((src / name).glob("*.mp4")):
            capture = cv2.VideoCapture(str(path))
            total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            indices = [int(i * total / FRAMES) for i in range(FRAMES)]
            indices[-1] = min(indices[-1], total - 1)
            frames = []
            for index in indices:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                ok, frame = capture.read()
                if not ok:
                    break  # the original printed "errrr" and kept the short clip
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                frames.append(cv2.resize(_pad_to_aspect(frame), (WIDTH, HEIGHT)))
            capture.release()
            clips.append(np.array(frames))
            labels.append(label)
    data = np.array(clips)  # the whole dataset in memory, as the original did
    one_hot = np.eye(len(class_names), dtype=np.float32)[labels]
    order = np.random.default_rng(31).permutation(len(data))  # unstratified 80/20 split
    cut = int(0.8 * len(data))
    train, validation = data[order[:cut]], data[order[cut:]]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train.npy", train)
    np.save(out / "validation.npy", validation)
    np.save(out / "labels.npy", one_hot)
    return len(data)


def _pad_to_aspect(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    target = WIDTH / HEIGHT
    if width / height > target:
        new_height = int(width / target)
        top = (new_height - height) // 2
        return np.pad(frame, ((top, new_height - height - top), (0, 0), (0, 0)))
    new_width = int(height * target)
    left = (new_width - width) // 2
    return np.pad(frame, ((0, 0), (left, new_width - width - left), (0, 0)))


def measure(command: list[str]) -> dict:
    """Run a command; return wall seconds and the peak RSS of it and its children, in MB."""
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(member.memory_info().rss for member in tree))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{stderr.decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20}


def make_corpora(work: Path, per_class: int, scale: int) -> tuple[Path, Path]:
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    small = work / "corpus-n"
    write_synthetic_dataset(
        SynthConfig(
            out=small, videos_per_class=per_class, seed=7, min_seconds=5, max_seconds=15,
            size=(480, 640),
        )
    )  # fmt: skip
    large = work / f"corpus-{scale}n"
    if not large.exists():
        for video in small.rglob("*.mp4"):
            for copy in range(scale):
                target = large / video.parent.name / f"{video.stem}-copy{copy}.mp4"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(video, target)
    return small, large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=9, help="clips per class in corpus N")
    parser.add_argument("--scale", type=int, default=4, help="the large corpus is SCALE x N")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "results" / "prepare-work")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "prepare.json")
    parser.add_argument("--baseline-only", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_only:
        original_prepare(Path(args.baseline_only[0]), Path(args.baseline_only[1]))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    corpora = make_corpora(args.work, args.per_class, args.scale)
    rows = []
    for corpus in corpora:
        clips = len(list(corpus.rglob("*.mp4")))
        for method in ("original", "nightact"):
            out = args.work / f"out-{method}-{corpus.name}"
            shutil.rmtree(out, ignore_errors=True)
            if method == "original":
                command = [sys.executable, __file__, "--baseline-only", str(corpus), str(out)]
            else:
                command = [
                    sys.executable, "-m", "nightact.cli", "prepare", str(corpus), str(out),
                    "--workers", str(args.workers), "--frames", str(FRAMES),
                    "--size", f"{HEIGHT}x{WIDTH}",
                ]  # fmt: skip
            result = measure(command)
            rows.append(
                {
                    "corpus": corpus.name,
                    "clips": clips,
                    "method": method,
                    "workers": 1 if method == "original" else args.workers,
                    **result,
                    "clips_per_second": clips / result["seconds"],
                }
            )
            print(f"  {corpus.name} {method}: {result['seconds']:.1f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)

    def rate(corpus: str, method: str) -> float:
        return next(
            row["clips_per_second"]
            for row in rows
            if row["corpus"] == corpus and row["method"] == method
        )

    speedups = {
        corpus.name: rate(corpus.name, "nightact") / rate(corpus.name, "original")
        for corpus in corpora
    }
    print()
    print(f"{'corpus':<12} {'clips':>5}  {'method':<9} {'workers':>7} {'s':>7} "
          f"{'clips/s':>8} {'peak RSS MB':>12}")  # fmt: skip
    for row in rows:
        print(
            f"{row['corpus']:<12} {row['clips']:>5}  {row['method']:<9} {row['workers']:>7} "
            f"{row['seconds']:>7.1f} {row['clips_per_second']:>8.2f} {row['peak_rss_mb']:>12.0f}"
        )
    print()
    for corpus, speedup in speedups.items():
        print(f"throughput nightact / original on {corpus}: {speedup:.2f}x")
    report = {
        "benchmark": "prepare",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "frames": FRAMES,
        "size": [HEIGHT, WIDTH],
        "rows": rows,
        "speedup": speedups,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
