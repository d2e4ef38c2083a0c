"""Benchmark the near-duplicate detector: seconds per 100 clips, recall and precision.

Writes a corpus of known copies (:mod:`support.copies`: every transform, and a same-scene retake
of each original as a hard negative), prepares it like a real dataset (``nightact prepare``
defaults: 10 frames at 240x320), then times, side by side on the same machine:

- ``prepare`` itself (the cost the detector should be a fraction of),
- ``nightact leakage``'s check on the store (signatures + comparisons),
- the ``--group-by near-duplicates`` pre-pass (decode at 60x80, sign, compare),

and scores the pairs found against the truth at the default threshold and a sweep of others.

    python benchmarks/leakage.py                      # 12 classes x 3 originals: 108 clips
    python benchmarks/leakage.py --per-class 1        # a quick run (36 clips)
    python benchmarks/leakage.py --seed 1             # another corpus (the defaults were tuned
                                                      # on seed 0)

Prints a table and writes benchmarks/results/leakage.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

# For its side effect: tests/ on sys.path, where the corpus of known copies (support.copies) is.
import common  # noqa: F401
from nightact.core.names import NUM_CLASSES

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--per-class", "1", "--frames", "4", "--size", "48x64", "--source-size", "48x64"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=3, help="originals per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="240x320", help="store HEIGHTxWIDTH")
    parser.add_argument("--source-size", default="240x320", help="originals' HEIGHTxWIDTH")
    parser.add_argument("--workers", type=int, default=None, help="prepare/pre-pass processes")
    parser.add_argument("--work", default=None, help="folder for the corpus (default: a temp)")
    parser.add_argument(
        "--json", "--out", dest="out", default=str(HERE / "results" / "leakage.json")
    )
    args = parser.parse_args()

    from nightact.data import leakage
    from nightact.data.groups import near_duplicate_groups
    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.data.splits import index_videos
    from support import copies

    height, width = (int(side) for side in args.size.split("x"))
    source = tuple(int(side) for side in args.source_size.split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="nightact-leakage-"))
    videos, store = work / "videos", work / "store"
    shutil.rmtree(store, ignore_errors=True)

    started = time.perf_counter()
    truth = copies.write_copy_corpus(
        copies.CopyCorpusConfig(
            videos, originals_per_class=args.per_class, size=source, seed=args.seed
        )
    )
    corpus_seconds = time.perf_counter() - started
    clips = len(truth["recordings"])

    started = time.perf_counter()
    prepare(
        PrepareConfig(
            videos,
            store,
            frames=args.frames,
            height=height,
            width=width,
            workers=args.workers,
            # prepare's own time, without the check it runs at its end (timed below).
            check_leakage=False,
        )
    )
    prepare_seconds = time.perf_counter() - started

    config = leakage.LeakageConfig(store, within=True)
    report = leakage.check_store(config)
    check_seconds = report.seconds

    started = time.perf_counter()
    _, entries, _ = index_videos(videos)
    _, prepass_pairs = near_duplicate_groups(videos, entries, args.frames, args.workers)
    prepass_seconds = time.perf_counter() - started

    # Every pair compared in full, to score thresholds without the candidate stage's cut.
    clip_list, signatures = leakage.store_signatures(store, config.grid)
    sweep = {}
    for threshold in (0.7, 0.75, 0.8, 0.85, 0.9):
        full = leakage.find_near_duplicates(
            clip_list,
            signatures,
            leakage.LeakageConfig(store, within=True, threshold=threshold, candidates=0),
        )
        sweep[str(threshold)] = copies.score_detection(
            [(p.path_a, p.path_b) for p in full.pairs], truth
        )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "corpus": {
            "clips": clips,
            "originals": args.per_class * NUM_CLASSES,
            "seed": args.seed,
            "source_size": list(source),
            "store": [args.frames, height, width],
            "seconds_to_write": round(corpus_seconds, 1),
        },
        "prepare_seconds": round(prepare_seconds, 2),
        "check_seconds": round(check_seconds, 2),
        "check_seconds_per_100_clips": round(100 * check_seconds / clips, 2),
        "check_share_of_prepare": round(check_seconds / prepare_seconds, 3),
        "prepass_seconds": round(prepass_seconds, 2),
        "prepass_seconds_per_100_clips": round(100 * prepass_seconds / clips, 2),
        "prepass_share_of_prepare": round(prepass_seconds / prepare_seconds, 3),
        "default_threshold": config.threshold,
        "check": copies.score_detection([(p.path_a, p.path_b) for p in report.pairs], truth),
        "prepass": copies.score_detection([(p.path_a, p.path_b) for p in prepass_pairs], truth),
        "all_pairs_by_threshold": sweep,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {out}")


def table(result: dict) -> str:
    check, prepass = result["check"], result["prepass"]
    lines = [
        f"corpus: {result['corpus']['clips']} clips "
        f"({result['corpus']['originals']} originals, a copy and a retake of each), store "
        f"{'x'.join(str(v) for v in result['corpus']['store'])}",
        "",
        "| step | seconds | s / 100 clips | share of prepare | recall | precision |",
        "|---|---:|---:|---:|---:|---:|",
        f"| prepare | {result['prepare_seconds']:.1f} | "
        f"{100 * result['prepare_seconds'] / result['corpus']['clips']:.1f} | 1.00 | | |",
        f"| leakage check on the store | {result['check_seconds']:.1f} | "
        f"{result['check_seconds_per_100_clips']:.1f} | {result['check_share_of_prepare']:.2f} | "
        f"{check['recall']:.2f} | {check['precision']:.2f} |",
        f"| near-duplicates pre-pass | {result['prepass_seconds']:.1f} | "
        f"{result['prepass_seconds_per_100_clips']:.1f} | "
        f"{result['prepass_share_of_prepare']:.2f} | "
        f"{prepass['recall']:.2f} | {prepass['precision']:.2f} |",
        "",
        "recall per transform (check): "
        + ", ".join(f"{k} {v:.2f}" for k, v in check["recall_per_transform"].items()),
        f"retakes taken for copies (check): {check['retakes_taken_for_copies']}",
        "",
        "| threshold (every pair compared) | recall | precision | retakes taken |",
        "|---:|---:|---:|---:|",
    ]
    for threshold, score in result["all_pairs_by_threshold"].items():
        lines.append(
            f"| {threshold} | {score['recall']:.2f} | {score['precision']:.2f} | "
            f"{score['retakes_taken_for_copies']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
