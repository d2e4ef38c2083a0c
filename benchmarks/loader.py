"""How fast the clip store can be read: clips/s and GB/s, warm (page cache) and cold (disk).

A store's split is one uint8 ``.npy`` file of shape (clips, frames, height, width, 3) (see
``nightact.data.prepare``); a training batch is a sorted random set of its rows. Three readers run
over the same synthetic store, with 1, 2, 4 and 8 reading threads each:

- ``memmap``: ``ClipBatches`` reading each batch by indexing the memory map (page faults, one
  page at a time), as it read before ``nightact.data.batches.read_rows``; ``readers`` threads read
  whole batches ahead.
- ``clipbatches``: nightact's own ``ClipBatches`` as ``nightact train --workers N`` reads: one
  ``os.preadv`` per row into the batch's buffer, ``readers`` threads reading whole batches ahead.
- ``split``: the same reads, but every batch's rows split between ``readers`` threads (two
  batches ahead): each batch spread over all threads. (JSON before 2026-11-26 calls it
  ``pread``.) On 2 cores its lead over ``clipbatches`` came and went between runs
  (docs/scaling.md), so ``ClipBatches`` keeps reading whole batches until a many-core machine
  (``benchmarks/gpu.sh`` runs this script) shows a steady gain.

Cold runs drop the store from the page cache first (``posix_fadvise(DONTNEED)`` on the file; with
``--drop-caches``, the whole machine's cache via /proc/sys/vm/drop_caches, as root).

    python benchmarks/loader.py                       # 10 x 240x320, batch 64, 1,024 clips (2.4 GB)
    python benchmarks/loader.py --smoke               # a tiny shape, seconds: checks the code path

Prints a table and writes benchmarks/results/loader.json (or --json). The store is written to a
temporary folder (``--folder`` to choose its parent) and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import common
from nightact.core.names import NUM_CLASSES

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--smoke"]


def write_store(folder: Path, clips: int, shape: tuple[int, int, int]) -> Path:
    """A split file in the store's layout, filled with random bytes, written in big blocks."""
    from numpy.lib.format import open_memmap

    path = folder / "train.npy"
    frames = open_memmap(path, mode="w+", dtype=np.uint8, shape=(clips, *shape, 3))
    offset = frames.offset
    del frames  # the header is written; the rows go in with plain writes, much faster
    rng = np.random.default_rng(0)
    # A block of random clips, each copy shifted by one byte: incompressible, and quick to make.
    block = rng.integers(0, 256, size=(min(clips, 16), *shape, 3), dtype=np.uint8)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        written = 0
        while written < clips:
            count = min(len(block), clips - written)
            handle.write(np.roll(block[:count], written).tobytes())
            written += count
    np.save(folder / "train_labels.npy", rng.integers(0, NUM_CLASSES, size=clips))
    return path


def open_split(folder: Path):
    """The synthetic split as nightact.core.store.open_split would give it."""
    frames = np.load(folder / "train.npy", mmap_mode="r")
    return common.split_from_arrays(frames, np.load(folder / "train_labels.npy"))


def clip_batches_class():
    """nightact's training reader; importing it imports Keras."""
    from nightact.data.batches import ClipBatches

    return ClipBatches


def drop_from_cache(path: Path, whole_machine: bool) -> None:
    if whole_machine:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def warm_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


def batch_rows(clips: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """One epoch of sorted random batches, as ClipBatches(shuffle=True, drop_remainder) makes."""
    order = np.random.default_rng([seed, 0]).permutation(clips)
    return [
        np.sort(order[start : start + batch_size])
        for start in range(0, clips - batch_size + 1, batch_size)
    ]


def time_clipbatches(
    folder: Path, batch_size: int, readers: int, indexing: bool = False
) -> tuple[int, float]:
    ClipBatches = clip_batches_class()
    split = open_split(folder)
    if indexing:
        # A view of the map is read by indexing it, as ClipBatches read every store before it
        # learnt to read rows with preadv (nightact.data.batches.read_rows).
        split.frames = split.frames[:]
    batches = ClipBatches(split, batch_size, shuffle=True, workers=readers, drop_remainder=True)
    started = time.perf_counter()
    clips = 0
    try:
        for index in range(len(batches)):
            frames, _ = batches[index]
            clips += len(frames)
    finally:
        batches.close()
    return clips, time.perf_counter() - started


class SplitBatches:
    """Batches read with one ``preadv`` per row, each batch's rows split over ``readers`` threads.

    Reads ahead ``depth`` batches, so the disk always has work queued.
    """

    def __init__(self, path: Path, batches: list[np.ndarray], readers: int, depth: int = 2):
        header = np.load(path, mmap_mode="r")
        self.shape, self.offset = header.shape[1:], header.offset
        self.row_bytes = int(np.prod(self.shape))
        del header
        self.batches = batches
        self.descriptor = os.open(path, os.O_RDONLY)
        self.readers = readers
        self.depth = depth

    def _read_rows(self, out: np.ndarray, rows: np.ndarray, first: int) -> None:
        for position, row in enumerate(rows):
            view = memoryview(out[first + position]).cast("B")
            done = 0
            while done < self.row_bytes:
                done += os.preadv(
                    self.descriptor, [view[done:]], self.offset + int(row) * self.row_bytes + done
                )

    def _read_batch(self, index: int) -> np.ndarray:
        rows = self.batches[index]
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        shares = np.array_split(np.arange(len(rows)), self.readers)
        # The batch's rows, in ascending order, cut into one contiguous run per reader.
        futures = [
            self.reader_pool.submit(self._read_rows, out, rows[share], int(share[0]))
            for share in shares
            if len(share)
        ]
        for future in futures:
            future.result()
        return out

    def __iter__(self):
        self.reader_pool = ThreadPoolExecutor(self.readers)
        batch_pool = ThreadPoolExecutor(self.depth)
        try:
            pending = {}
            for index in range(len(self.batches)):
                for ahead in range(index, min(index + self.depth, len(self.batches))):
                    if ahead not in pending:
                        pending[ahead] = batch_pool.submit(self._read_batch, ahead)
                yield pending.pop(index).result()
        finally:
            batch_pool.shutdown(cancel_futures=True)
            self.reader_pool.shutdown()

    def close(self) -> None:
        os.close(self.descriptor)


def time_split(folder: Path, batch_size: int, readers: int) -> tuple[int, float]:
    path = folder / "train.npy"
    clips = len(np.load(path, mmap_mode="r"))
    reader = SplitBatches(path, batch_rows(clips, batch_size), readers)
    started = time.perf_counter()
    count = 0
    try:
        for frames in reader:
            count += len(frames)
    finally:
        reader.close()
    return count, time.perf_counter() - started


def time_memmap(folder: Path, batch_size: int, readers: int) -> tuple[int, float]:
    return time_clipbatches(folder, batch_size, readers, indexing=True)


METHODS = {"memmap": time_memmap, "clipbatches": time_clipbatches, "split": time_split}


def measure(args, folder: Path, results: list[dict], saved) -> None:
    """Fill ``results`` with one row per (cache, method, readers); call ``saved()`` after each."""
    path = folder / "train.npy"
    clip_bytes = int(np.prod(np.load(path, mmap_mode="r").shape[1:]))
    clip_batches_class()  # imports Keras now, so no timed run pays for it
    for cache in args.caches:
        for method in args.methods:
            for readers in args.readers:
                best = None
                for _ in range(args.repeats):
                    if cache == "cold":
                        drop_from_cache(path, args.drop_caches)
                    else:
                        warm_cache(path)
                    # CPU time of the whole process (all its threads): the cost of reading,
                    # which the load of other programs on the machine does not inflate.
                    cpu_started = time.process_time()
                    clips, seconds = METHODS[method](folder, args.batch_size, readers)
                    cpu_seconds = time.process_time() - cpu_started
                    if best is None or seconds < best[1]:
                        best = (clips, seconds, cpu_seconds)
                clips, seconds, cpu_seconds = best
                row = {
                    "cache": cache,
                    "method": method,
                    "readers": readers,
                    "clips": clips,
                    "seconds": seconds,
                    "clips_per_second": clips / seconds,
                    "gigabytes_per_second": clips * clip_bytes / seconds / 1e9,
                    "cpu_seconds": cpu_seconds,
                    "clips_per_cpu_second": clips / max(cpu_seconds, 1e-9),
                }
                print(
                    f"{cache:>4} {method:>11} {readers} readers: {row['clips_per_second']:8.0f} "
                    f"clips/s  {row['gigabytes_per_second']:6.2f} GB/s",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(row)
                saved()


def format_table(results: list[dict]) -> str:
    header = ["cache", "method", "readers", "clips/s", "GB/s", "vs 1 reader", "clips/CPU-s"]
    base = {
        (row["cache"], row["method"]): row["clips_per_second"]
        for row in results
        if row["readers"] == min(r["readers"] for r in results)
    }
    lines = [
        [
            row["cache"],
            row["method"],
            str(row["readers"]),
            f"{row['clips_per_second']:.0f}",
            f"{row['gigabytes_per_second']:.2f}",
            f"{row['clips_per_second'] / base[(row['cache'], row['method'])]:.2f}x",
            f"{row['clips_per_cpu_second']:.0f}",
        ]
        for row in results
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(line) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))

    return "\n".join(
        [render(header), "  ".join("-" * width for width in widths), *map(render, lines)]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1024, help="clips in the synthetic store")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--readers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--caches", nargs="+", default=["warm", "cold"], choices=["warm", "cold"])
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; best is kept")
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="cold: drop the whole page cache (root) instead of only the store's pages",
    )
    parser.add_argument("--folder", default=None, help="where the temporary store goes")
    parser.add_argument("--smoke", action="store_true", help="a tiny store: checks the code path")
    parser.add_argument("--json", default=str(HERE / "results" / "loader.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.clips, args.height, args.width, args.batch_size = 64, 24, 32, 16
        args.readers, args.repeats = [1, 2], 1

    started = time.perf_counter()
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def save(finished: bool) -> None:
        """The report so far: rewritten after every measurement, so a cut-off run keeps them."""
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "shape": [args.frames, args.height, args.width],
            "clip_megabytes": args.frames * args.height * args.width * 3 / 1e6,
            "clips": args.clips,
            "batch_size": args.batch_size,
            "cold_by": "drop_caches" if args.drop_caches else "posix_fadvise(DONTNEED)",
            "machine": common.machine_summary(),
            "load_average": os.getloadavg(),
            "seconds": time.perf_counter() - started,
            "finished": finished,
            "results": results,
            "table": format_table(results) if results else "",
        }
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(report, indent=2))
        os.replace(temporary, path)

    folder = Path(tempfile.mkdtemp(prefix="nightact-loader-", dir=args.folder))
    try:
        write_store(folder, args.clips, (args.frames, args.height, args.width))
        written = time.perf_counter() - started
        print(f"wrote a {args.clips}-clip store in {written:.1f} s", file=sys.stderr, flush=True)
        measure(args, folder, results, lambda: save(False))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    save(True)
    print(format_table(results))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
