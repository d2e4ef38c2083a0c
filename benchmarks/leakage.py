"""Benchmark the near-duplicate detector: seconds per 100 clips, recall and precision.

Writes a corpus of known copies (:mod:`support.copies`: every transform, a same-scene retake of
each original as a hard negative, and dark near-still scenes with a copy and two other takes
each), prepares it like a real dataset (``nightact prepare`` defaults: 10 frames at 240x320), then
times, side by side on the same machine:

- ``prepare`` itself (the cost the detector should be a fraction of),
- ``nightact leakage``'s check on the store (signatures + comparisons),
- the ``--group-by near-duplicates`` pre-pass (decode at 60x80, sign, compare),

and scores the pairs found against the truth at the default threshold and a sweep of others.
Last, it counts the pairs the check reports on the demo's own synthetic videos (``nightact
synth`` with ``DemoConfig``'s settings, prepared as the demo prepares them), where every video is
a recording of its own: any pair there is a false alarm the demo would print.

    python benchmarks/leakage.py                      # 12 classes x 3 originals and 12 dark
                                                      # stills: 156 clips; 600 demo videos
    python benchmarks/leakage.py --per-class 1        # a quicker run
    python benchmarks/leakage.py --seed 1             # another corpus (the defaults were tuned
                                                      # on seed 0)
    python benchmarks/leakage.py --baseline main      # also score leakage.py as of a git
                                                      # revision on the same stores, side by side
    python benchmarks/leakage.py --real ../shared/videos --per-class 0 --demo-per-class 0
                                                      # only the corpus cut from real footage

With ``--real DIR`` it also cuts the real videos in DIR (``support.copies.write_real_copy_corpus``)
into segments of one scene each, darkened into night footage (``--daylight``: as they are), with a
copy of every segment: the other segments of a source are other takes of its scene, filmed by the
same camera.

Prints a table and writes benchmarks/results/leakage.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# For its side effect: tests/ on sys.path, where the corpus of known copies (support.copies) is.
import common
from nightact.core.names import NUM_CLASSES

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = [
    "--per-class",
    "1",
    "--dark-stills",
    "2",
    "--frames",
    "4",
    "--size",
    "48x64",
    "--source-size",
    "48x64",
    "--demo-per-class",
    "2",
]
THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=3, help="originals per class")
    parser.add_argument("--dark-stills", type=int, default=12, help="dark near-still scenes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="240x320", help="store HEIGHTxWIDTH")
    parser.add_argument("--source-size", default="240x320", help="originals' HEIGHTxWIDTH")
    parser.add_argument(
        "--demo-per-class", type=int, default=50, help="demo videos per class (0: skip)"
    )
    parser.add_argument(
        "--baseline", default=None, help="git revision whose leakage.py to score as well"
    )
    parser.add_argument("--real", default=None, help="folder of real videos to cut a corpus from")
    parser.add_argument(
        "--segment-seconds", type=float, default=3.0, help="length of each real take (--real)"
    )
    parser.add_argument(
        "--daylight", action="store_true", help="keep daylight footage as it is (--real)"
    )
    parser.add_argument("--workers", type=int, default=None, help="prepare/pre-pass processes")
    parser.add_argument("--work", default=None, help="folder for the corpus (default: a temp)")
    parser.add_argument(
        "--json", "--out", dest="out", default=str(HERE / "results" / "leakage.json")
    )
    args = parser.parse_args()

    from nightact.data import leakage

    work = Path(args.work or tempfile.mkdtemp(prefix="nightact-leakage-"))
    detectors = {"current": leakage}
    if args.baseline:
        detectors[f"baseline {args.baseline}"] = load_baseline(args.baseline, work)
    result = {"machine": machine(), "default_threshold": leakage.LeakageConfig("").threshold}
    if args.per_class:
        result.update(benchmark_corpus(args, work, detectors))
    if args.real:
        result["real"] = benchmark_real(args, work, detectors)
    if args.demo_per_class:
        result["demo"] = benchmark_demo(args, work, detectors)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {out}")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def load_baseline(revision: str, work: Path):
    """``nightact.data.leakage`` as of a git revision, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:src/nightact/data/leakage.py"],
        cwd=common.REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = work / f"leakage_{revision.replace('/', '_')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"baseline_leakage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prepare_store(args, videos: Path, store: Path) -> None:
    """Prepare ``videos`` as ``--frames`` x ``--size``, without the check prepare runs at its end
    (the benchmark times and scores the check itself)."""
    from nightact.data.prepare import PrepareConfig, prepare

    height, width = (int(side) for side in args.size.split("x"))
    prepare(
        PrepareConfig(
            videos,
            store,
            frames=args.frames,
            height=height,
            width=width,
            workers=args.workers,
            check_leakage=False,
        )
    )


def found_pairs(pairs) -> list[tuple[str, str]]:
    return [(pair.path_a, pair.path_b) for pair in pairs]


def benchmark_corpus(args, work: Path, detectors: dict) -> dict:
    """The corpus of known copies: write, prepare, check, pre-pass, and a threshold sweep."""
    from nightact.data.groups import near_duplicate_groups
    from nightact.data.splits import index_videos
    from support import copies

    height, width = (int(side) for side in args.size.split("x"))
    source = tuple(int(side) for side in args.source_size.split("x"))
    videos, store = work / "videos", work / "store"
    shutil.rmtree(store, ignore_errors=True)

    started = time.perf_counter()
    truth = copies.write_copy_corpus(
        copies.CopyCorpusConfig(
            videos,
            originals_per_class=args.per_class,
            dark_stills=args.dark_stills,
            size=source,
            seed=args.seed,
        )
    )
    corpus_seconds = time.perf_counter() - started
    clips = len(truth["recordings"])

    started = time.perf_counter()
    prepare_store(args, videos, store)
    prepare_seconds = time.perf_counter() - started

    started = time.perf_counter()
    _, entries, _ = index_videos(videos)
    _, prepass_pairs = near_duplicate_groups(videos, entries, args.frames, args.workers)
    prepass_seconds = time.perf_counter() - started

    result = {
        "corpus": {
            "clips": clips,
            "originals": args.per_class * NUM_CLASSES,
            "dark_stills": args.dark_stills,
            "seed": args.seed,
            "source_size": list(source),
            "store": [args.frames, height, width],
            "seconds_to_write": round(corpus_seconds, 1),
        },
        "prepare_seconds": round(prepare_seconds, 2),
        "prepass_seconds": round(prepass_seconds, 2),
        "prepass_seconds_per_100_clips": round(100 * prepass_seconds / clips, 2),
        "prepass_share_of_prepare": round(prepass_seconds / prepare_seconds, 3),
        "prepass": copies.score_detection(found_pairs(prepass_pairs), truth),
        "detectors": {},
    }
    for name, module in detectors.items():
        report = module.check_store(module.LeakageConfig(store, within=True))
        # Every pair compared in full, to score thresholds without the candidate stage's cut.
        clip_list, signatures = module.store_signatures(store, report.config.grid)
        sweep = {}
        for threshold in THRESHOLDS:
            full = module.find_near_duplicates(
                clip_list,
                signatures,
                module.LeakageConfig(store, within=True, threshold=threshold, candidates=0),
            )
            sweep[str(threshold)] = copies.score_detection(found_pairs(full.pairs), truth)
        result["detectors"][name] = {
            "threshold": report.config.threshold,
            "check_seconds": round(report.seconds, 2),
            "check_seconds_per_100_clips": round(100 * report.seconds / clips, 2),
            "check_share_of_prepare": round(report.seconds / prepare_seconds, 3),
            "check": copies.score_detection(found_pairs(report.pairs), truth),
            "all_pairs_by_threshold": sweep,
        }
    return result


REAL_SOURCES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def benchmark_real(args, work: Path, detectors: dict) -> dict:
    """The corpus cut from real footage: takes of one scene by one camera, and their copies."""
    from support import copies

    sources = sorted(
        path
        for path in Path(args.real).iterdir()
        # The quirk clips (a dog, a near-black clip without people) hold no scene to cut.
        if path.suffix.lower() in REAL_SOURCES and not path.name.startswith("quirk")
    )
    videos, store = work / "real-videos", work / "real-store"
    shutil.rmtree(store, ignore_errors=True)
    truth = copies.write_real_copy_corpus(
        copies.RealCopyCorpusConfig(
            videos,
            sources,
            segment_seconds=args.segment_seconds,
            night=not args.daylight,
            seed=args.seed,
        )
    )
    prepare_store(args, videos, store)
    result = {
        "sources": [path.name for path in sources],
        "clips": len(truth["recordings"]),
        "segment_seconds": args.segment_seconds,
        "night": not args.daylight,
        "seed": args.seed,
        "detectors": {},
    }
    for name, module in detectors.items():
        report = module.check_store(module.LeakageConfig(store, within=True))
        result["detectors"][name] = {
            "check_seconds": round(report.seconds, 2),
            "check": copies.score_detection(found_pairs(report.pairs), truth),
        }
    return result


def benchmark_demo(args, work: Path, detectors: dict) -> dict:
    """Pairs reported on the demo's synthetic videos, prepared as the demo does: all false."""
    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.demo import DemoConfig
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    demo = DemoConfig()
    videos, store = work / "demo-videos", work / "demo-store"
    shutil.rmtree(store, ignore_errors=True)
    write_synthetic_dataset(
        SynthConfig(
            videos,
            videos_per_class=args.demo_per_class,
            seed=demo.seed,
            min_seconds=demo.min_seconds,
            max_seconds=demo.max_seconds,
            size=demo.video_size,
            workers=args.workers,
        )
    )
    prepare(
        PrepareConfig(
            videos,
            store,
            frames=demo.frames,
            height=demo.height,
            width=demo.width,
            workers=args.workers,
            check_leakage=False,
        )
    )
    result = {
        "videos": args.demo_per_class * NUM_CLASSES,
        "store": [demo.frames, demo.height, demo.width],
        "detectors": {},
    }
    for name, module in detectors.items():
        summary = module.check_store(module.LeakageConfig(store)).summary()
        result["detectors"][name] = {
            key: summary[key]
            for key in ("pairs_across_splits", "pairs_within_splits", "clusters", "seconds")
        }
    return result


def table(result: dict) -> str:
    lines = corpus_table(result) if "corpus" in result else []
    if "real" in result:
        real = result["real"]
        lines += [
            "",
            f"real footage ({real['clips']} clips cut from {', '.join(real['sources'])}, "
            f"takes of {real['segment_seconds']} s, "
            f"{'darkened to night' if real.get('night', True) else 'daylight as it is'}, "
            f"seed {real['seed']}):",
            "| detector | recall | precision | takes taken for copies | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, found in real["detectors"].items():
            check = found["check"]
            lines.append(
                f"| {name} | {check['recall']:.2f} ({check['correct_pairs']}/"
                f"{check['true_pairs']}) | {check['precision']:.2f} ({check['correct_pairs']}/"
                f"{check['found_pairs']}) | {check['retakes_taken_for_copies']} | "
                f"{found['check_seconds']:.1f} |"
            )
    return "\n".join(lines)


def corpus_table(result: dict) -> list[str]:
    corpus, prepass = result["corpus"], result["prepass"]
    clips = corpus["clips"]
    lines = [
        f"corpus: {clips} clips ({corpus['originals']} originals with a copy and a retake each, "
        f"{corpus['dark_stills']} dark stills with a copy and two takes each), store "
        f"{'x'.join(str(v) for v in corpus['store'])}",
        "",
        "| step | seconds | s / 100 clips | share of prepare | recall | precision | "
        "dark stills: recall | precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| prepare | {result['prepare_seconds']:.1f} | "
        f"{100 * result['prepare_seconds'] / clips:.1f} | 1.00 | | | | |",
    ]
    for name, detector in result["detectors"].items():
        check = detector["check"]
        lines.append(
            f"| leakage check ({name}) | {detector['check_seconds']:.1f} | "
            f"{detector['check_seconds_per_100_clips']:.1f} | "
            f"{detector['check_share_of_prepare']:.2f} | {check['recall']:.2f} | "
            f"{check['precision']:.2f} | {check['dark_stills']['recall']:.2f} | "
            f"{check['dark_stills']['precision']:.2f} |"
        )
    lines.append(
        f"| near-duplicates pre-pass (current) | {result['prepass_seconds']:.1f} | "
        f"{result['prepass_seconds_per_100_clips']:.1f} | "
        f"{result['prepass_share_of_prepare']:.2f} | {prepass['recall']:.2f} | "
        f"{prepass['precision']:.2f} | {prepass['dark_stills']['recall']:.2f} | "
        f"{prepass['dark_stills']['precision']:.2f} |"
    )
    for name, detector in result["detectors"].items():
        check = detector["check"]
        lines += [
            "",
            f"{name}, threshold {detector['threshold']}: found {check['found_pairs']}, "
            f"{check['correct_pairs']} of {check['true_pairs']} copies, "
            f"{check['retakes_taken_for_copies']} retakes taken for copies",
            "recall per transform: "
            + ", ".join(f"{k} {v:.2f}" for k, v in check["recall_per_transform"].items()),
            "",
            "| threshold (every pair compared) | recall | precision | retakes taken | "
            "dark stills: recall | precision |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for threshold, score in detector["all_pairs_by_threshold"].items():
            lines.append(
                f"| {threshold} | {score['recall']:.2f} | {score['precision']:.2f} | "
                f"{score['retakes_taken_for_copies']} | {score['dark_stills']['recall']:.2f} | "
                f"{score['dark_stills']['precision']:.2f} |"
            )
    if "demo" in result:
        demo = result["demo"]
        lines += [
            "",
            f"demo's synthetic videos ({demo['videos']}, no copies; store "
            f"{'x'.join(str(v) for v in demo['store'])}):",
            "| detector | pairs across splits | pairs within splits | clusters | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, found in demo["detectors"].items():
            lines.append(
                f"| {name} | {found['pairs_across_splits']} | {found['pairs_within_splits']} | "
                f"{found['clusters']} | {found['seconds']:.1f} |"
            )
    return lines


if __name__ == "__main__":
    main()
