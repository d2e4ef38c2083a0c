"""How `nightact prepare` scales with worker processes, and where one worker spends its time.

On a corpus like the one behind issue 20's figures (synthetic 640x480 videos of 5-8 s, each
hard-linked several times under other names: 24 x 16 = 384 clips, prepared to 10 x 240x320 without
the leakage check), in parts:

1. profile: ``prepare`` with one worker on a few clips under cProfile: ms per clip of wall time in
   each step (demuxing the packet index, decoding, scaling and letterboxing, the file's SHA-256,
   the row's write, syncing rows and journal), the CPU time per clip, and what pickling a job and
   its result between processes costs; then how long the store's disk takes to make one row
   durable, and a batch of 16.
2. decoder: CPU ms and wall ms per clip of ``read_clip`` at several decoder thread counts: what a
   decoder with more threads than it has CPUs costs (each of 16 workers on 16 cores used to
   start 16).
3. scaling: ``prepare()`` in a fresh process for each number of workers (and each checkout given
   with ``--code``): wall seconds, clips/s end to end and between the first and last clip
   finished (without start-up and finishing), CPU seconds per clip of the process and its
   workers, how busy that kept the CPUs, and the main process's own ms per clip (journal and
   syncs: 1000 / that is the most clips/s it can take, however many workers).
4. hwaccel: the PyAV and FFmpeg versions, the hardware device types this PyAV was built with and
   its hardware H.264 decoders; where a CUDA device opens (NVDEC), the corpus' videos decoded on it
   against the CPU decoder, frames/s, and whether the model's input comes out the same.

    python benchmarks/prepare_scaling.py                       # 1 2 4 8 16 workers (up to 2x
                                                               # the CPUs), 384 clips
    python benchmarks/prepare_scaling.py --workers 1 2 4 --classes 6 --copies 4   # 48 clips
    python benchmarks/prepare_scaling.py --code before=/tmp/old/src --code after=src
    python benchmarks/prepare_scaling.py --smoke               # seconds: tiny videos
    python benchmarks/prepare_scaling.py --smoke --copies 8 --store \
        '{"frames": 10, "height": 240, "width": 320}'   # cheap decoding, full-size rows: the
                                                        # parent's syncs, not decoding, decide

``--code NAME=SRC`` runs the scaling part once per checkout (``SRC`` is put first on PYTHONPATH
for that run), side by side in one table; ``--ffmpeg-threads [NAME ...]`` adds those checkouts
(every one when none is named) again as ``NAME+ff``, their decoders on FFmpeg's own thread count
(one per CPU), to tell that change apart from the others. Prints the tables and writes
benchmarks/results/prepare_scaling.json (``--json``). ``benchmarks/gpu.sh`` runs it on a GPU host.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pickle
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
REPO_SRC = common.REPO / "src"
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--smoke"]

FULL = {"videos_per_class": 2, "copies": 16, "size": (480, 640), "seconds": (5.0, 8.0)}
SMOKE = {"videos_per_class": 1, "copies": 2, "size": (96, 128), "seconds": (1.0, 1.5)}
STORE = {"frames": 10, "height": 240, "width": 320}
SMOKE_STORE = {"frames": 4, "height": 24, "width": 32}

# Function names in the profile, and the step of prepare each one is.
STEPS = {
    "_packet_index": "demux the packet index",
    "read_clip": "read_clip (all of it)",
    "frame_to_picture": "scale, rotate and letterbox",
    "sha256_of": "SHA-256 of the file",
    "_write_row": "write the row",
    "<built-in method posix.fdatasync>": "sync the rows",
    "<built-in method posix.fsync>": "sync the journal",
    "_prepare_one": "one clip in the worker (all of it)",
}


# --- the corpus -------------------------------------------------------------------------------


def make_corpus(work: Path, shape: dict, classes: int | None) -> Path:
    """Synthetic videos, each linked ``copies`` times: the same decoding work at any count."""
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    originals, corpus = work / "originals", work / "corpus"
    if corpus.exists():
        return corpus
    write_synthetic_dataset(
        SynthConfig(
            out=originals,
            videos_per_class=shape["videos_per_class"],
            seed=7,
            min_seconds=shape["seconds"][0],
            max_seconds=shape["seconds"][1],
            size=shape["size"],
        )
    )
    folders = sorted(path for path in originals.iterdir() if path.is_dir())[:classes]
    for folder in folders:
        for video in sorted(folder.glob("*.mp4")):
            for copy in range(shape["copies"]):
                target = corpus / folder.name / f"{video.stem}-copy{copy:02d}.mp4"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(video, target)
    return corpus


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# --- 1. profile -------------------------------------------------------------------------------


def profile_part(corpus: Path, work: Path, store: dict, clips: int) -> dict:
    """One worker, in this process, under cProfile: ms per clip in each step of prepare."""
    from nightact.data.prepare import PrepareConfig, prepare

    src = work / "profile-src"
    shutil.rmtree(src, ignore_errors=True)  # left by an earlier run in the same --work folder
    for video in sorted(corpus.rglob("*.mp4"))[:clips]:
        target = src / video.parent.name / video.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(video, target)
    out = work / "profile-store"
    config = PrepareConfig(src, out, workers=1, check_leakage=False, **store)
    profiler = cProfile.Profile()
    started, cpu = time.perf_counter(), cpu_seconds()
    profiler.enable()
    summary = prepare(config)
    profiler.disable()
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    shutil.rmtree(out)
    count = summary.processed_now
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, _, tottime, cumtime, _)
    steps = {}
    for (_, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in STEPS:
            steps[STEPS[name]] = steps.get(STEPS[name], 0.0) + 1000 * cumulative / count
    inside = ("demux the packet index", "scale, rotate and letterbox")
    steps["decode (read_clip less the two above)"] = steps.get("read_clip (all of it)", 0.0) - sum(
        steps.get(name, 0.0) for name in inside
    )
    return {
        "clips": count,
        "wall_ms_per_clip": 1000 * wall / count,
        "cpu_ms_per_clip": 1000 * cpu / count,
        "steps_ms_per_clip": steps,
        "pickle_us_per_clip": pickle_cost(src),
        "sync": sync_cost(work, store),
    }


def pickle_cost(src: Path) -> float:
    """Microseconds to pickle and unpickle one job and one result, as the pool does."""
    from nightact.data.prepare import ClipJob

    job = ClipJob(str(src), str(src), "class/clip.mp4", "train", 0, 10, 240, 320, "repeat-last")
    result = {
        "path": "class/clip.mp4",
        "split": "train",
        "row": 0,
        "status": "ok",
        "error": "",
        "sha256": "0" * 64,
        "indices": " ".join(str(index) for index in range(10)),
    }
    repeats = 2000
    started = time.perf_counter()
    for _ in range(repeats):
        pickle.loads(pickle.dumps(job))
        pickle.loads(pickle.dumps(result))
    return 1e6 * (time.perf_counter() - started) / repeats


def sync_cost(work: Path, store: dict) -> dict:
    """Milliseconds to make one row durable on the store's disk, and a batch of 16 rows."""
    row = os.urandom(store["frames"] * store["height"] * store["width"] * 3)
    path = work / "sync-test.bin"
    timings = {}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for batch in (1, 16):
            seconds = []
            for repeat in range(5):
                for index in range(batch):
                    os.pwrite(descriptor, row, (repeat * batch + index) * len(row))
                started = time.perf_counter()
                os.fdatasync(descriptor)
                seconds.append(time.perf_counter() - started)
            timings[f"ms_per_sync_of_{batch}_rows"] = 1000 * sorted(seconds)[len(seconds) // 2]
    finally:
        os.close(descriptor)
        path.unlink()
    timings["row_mb"] = len(row) / 2**20
    return timings


# --- 2. decoder threads -----------------------------------------------------------------------


def decoder_part(corpus: Path, store: dict, clips: int) -> list[dict]:
    """CPU and wall ms per clip of read_clip at several decoder thread counts."""
    from nightact.core.videos import read_clip

    paths = sorted({path.resolve() for path in corpus.rglob("*.mp4")})[:clips]
    cpus = os.cpu_count() or 1
    rows = []
    for threads in (1, 2, None, 16):
        read_clip(paths[0], threads=threads, **store)  # warm the page cache and the libraries
        started, cpu = time.perf_counter(), cpu_seconds()
        for path in paths:
            read_clip(path, threads=threads, **store)
        rows.append(
            {
                "threads": threads if threads else f"FFmpeg's ({min(16, cpus + 1)} here)",
                "clips": len(paths),
                "wall_ms_per_clip": 1000 * (time.perf_counter() - started) / len(paths),
                "cpu_ms_per_clip": 1000 * (cpu_seconds() - cpu) / len(paths),
            }
        )
    return rows


# --- 3. scaling -------------------------------------------------------------------------------


def measure_one(src: str, out: str, workers: int, store: dict, ffmpeg_threads: bool) -> dict:
    """In a fresh process: prepare SRC into OUT with ``workers`` workers, timing every clip.

    ``ffmpeg_threads``: every decoder on FFmpeg's own thread count, as before the decoders took
    their share of the CPUs (where the code has that rule), to tell the two changes apart.
    """
    from nightact.core import workers as pool
    from nightact.data.prepare import PrepareConfig, prepare

    if ffmpeg_threads and hasattr(pool, "decoder_threads"):
        pool.decoder_threads = lambda count: None
    finished, parent = [], []
    real_map = pool.map_unordered

    def timed_map(*args, **kwargs):
        for result in real_map(*args, **kwargs):
            finished.append(time.perf_counter())
            yield result
            # The main process's own work on each result (journal, syncs): one clip at a time,
            # so 1000 / these ms is the most clips per second it can take, whatever the workers.
            parent.append(time.perf_counter() - finished[-1])

    pool.map_unordered = timed_map
    config = PrepareConfig(src, out, workers=workers, check_leakage=False, **store)
    # This process's start-up and imports are not prepare's; its workers' are.
    started, own = time.perf_counter(), cpu_seconds()
    summary = prepare(config)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - own + cpu_seconds(resource.RUSAGE_CHILDREN)
    count = summary.processed_now
    threads = getattr(pool, "decoder_threads", None)  # absent from checkouts before it existed
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else None
    return {
        "workers": workers,
        "decoder_threads": (threads(workers) if threads else None) or "FFmpeg's",
        "clips": count,
        "seconds": wall,
        "clips_per_second": count / wall,
        "steady_clips_per_second": steady,
        "first_clip_seconds": finished[0] - started if finished else None,
        "cpu_ms_per_clip": 1000 * cpu / count,
        "cpu_busy": cpu / (wall * (os.cpu_count() or 1)),
        "main_process_ms_per_clip": 1000 * sum(parent) / max(1, len(parent)),
    }


def scaling_part(
    corpus: Path, work: Path, counts, codes: dict, store: dict, repeats: int, log, save
) -> list[dict]:
    """Every (code, workers) cell in a fresh process, ``repeats`` rounds taking turns; each cell
    keeps its fastest round (on a shared machine, the one least slowed by others)."""
    rows: dict[tuple[str, int], dict] = {}
    for round_ in range(repeats):
        for name, (source, ffmpeg_threads) in codes.items():
            for workers in counts:
                out = work / f"store-{workers}"
                row = measure_in_process(corpus, out, workers, source, store, ffmpeg_threads)
                row = {"code": name, **row}
                log(
                    f"scaling {name} {workers} workers (round {round_ + 1}): "
                    f"{row['clips_per_second']:.1f} clips/s, "
                    f"{row['cpu_ms_per_clip']:.0f} CPU ms per clip"
                )
                best = rows.get((name, workers))
                rates = (best or {}).get("all_clips_per_second", []) + [row["clips_per_second"]]
                if best is None or row["clips_per_second"] > best["clips_per_second"]:
                    best = row
                rows[(name, workers)] = {**best, "all_clips_per_second": rates}
                save(list(rows.values()))
    rows = list(rows.values())
    for row in rows:
        one = next((r for r in rows if r["code"] == row["code"] and r["workers"] == 1), None)
        if one:
            row["speedup_over_one_worker"] = row["clips_per_second"] / one["clips_per_second"]
    return rows


def measure_in_process(
    corpus: Path, out: Path, workers: int, source, store: dict, ffmpeg_threads: bool = False
) -> dict:
    """:func:`measure_one` in a fresh process, with ``source`` first on its PYTHONPATH."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(source), environment.get("PYTHONPATH", "")) if part
    )
    command = [sys.executable, __file__, "--measure", str(corpus), str(out), str(workers)]
    command += ["--store", json.dumps(store)] + (["--ffmpeg-threads"] if ffmpeg_threads else [])
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    shutil.rmtree(out, ignore_errors=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


# --- 4. hardware decoders ---------------------------------------------------------------------


def hwaccel_part(corpus: Path, clips: int) -> dict:
    """What this PyAV offers for hardware decoding, and NVDEC against the CPU where it opens."""
    import av
    from av.codec.hwaccel import HWAccel, hwdevices_available

    suffixes = ("_cuvid", "_nvdec", "_qsv", "_vaapi", "_v4l2m2m")
    record = {
        "pyav": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "device_types": hwdevices_available(),
        "h264_decoders": sorted(
            name for name in av.codecs_available if name.startswith("h264_") and _decodes(name)
        ),
        "hardware_decoders": len([n for n in av.codecs_available if n.endswith(suffixes)]),
    }
    if "cuda" not in record["device_types"]:
        record["cuda"] = "this PyAV was built without CUDA"
        return record
    paths = sorted({path.resolve() for path in corpus.rglob("*.mp4")})[:clips]
    try:
        hardware = _decode_all(paths, lambda: HWAccel(device_type="cuda"))
    except Exception as error:  # no device, no driver library, or a container without them
        record["cuda"] = f"unavailable: {type(error).__name__}: {error}"
        return record
    software = _decode_all(paths, lambda: None)
    record["cuda"] = {
        "clips": len(paths),
        "frames": software["frames"],
        "cpu_frames_per_second": software["frames"] / software["seconds"],
        "nvdec_frames_per_second": hardware["frames"] / hardware["seconds"],
        "nvdec_cpu_ms_per_frame": 1000 * hardware["cpu_seconds"] / hardware["frames"],
        "cpu_cpu_ms_per_frame": 1000 * software["cpu_seconds"] / software["frames"],
        "same_model_input": hardware["pictures"] == software["pictures"],
        "note": "whole-stream decoding in one process, one clip at a time",
    }
    return record


def _decodes(name: str) -> bool:
    """Whether FFmpeg's codec ``name`` is a decoder (codecs_available lists encoders too)."""
    import av

    try:
        av.Codec(name, "r")
    except Exception:  # av's UnknownCodecError, for an encoder-only name
        return False
    return True


def _decode_all(paths: list[Path], accelerator) -> dict:
    """Decode every frame of every path; keep a digest of each clip's first letterboxed frame."""
    import hashlib

    import av

    from nightact.core.videos import frame_to_picture

    frames, pictures = 0, []
    started, cpu = time.perf_counter(), cpu_seconds()
    for path in paths:
        with av.open(str(path), hwaccel=accelerator()) as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                if index == 0:
                    picture = frame_to_picture(frame, 240, 320, 1)
                    pictures.append(hashlib.sha256(picture.tobytes()).hexdigest())
                frames += 1
    return {
        "frames": frames,
        "pictures": pictures,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
    }


# --- the driver -------------------------------------------------------------------------------


def format_tables(report: dict) -> str:
    lines = []
    if "profile" in report:
        profile = report["profile"]
        lines.append(
            f"one worker, {profile['clips']} clips: {profile['wall_ms_per_clip']:.0f} ms wall, "
            f"{profile['cpu_ms_per_clip']:.0f} ms CPU per clip; pickling a job and its result "
            f"{profile['pickle_us_per_clip']:.0f} us"
        )
        for step, ms in sorted(profile["steps_ms_per_clip"].items(), key=lambda item: -item[1]):
            lines.append(f"  {step:<40} {ms:8.1f} ms per clip")
        sync = profile["sync"]
        lines.append(
            f"  fdatasync on this disk: {sync['ms_per_sync_of_1_rows']:.1f} ms for one row of "
            f"{sync['row_mb']:.1f} MB, {sync['ms_per_sync_of_16_rows']:.1f} ms for 16"
        )
    if "decoder" in report:
        lines.append("\ndecoder threads         wall ms/clip  CPU ms/clip")
        for row in report["decoder"]:
            lines.append(
                f"{row['threads']!s:<22} {row['wall_ms_per_clip']:13.1f} "
                f"{row['cpu_ms_per_clip']:12.1f}"
            )
    if report.get("scaling"):
        lines.append(
            "\ncode        workers  threads  clips/s  steady  vs 1  CPU ms/clip  CPUs busy  "
            "main ms/clip  seconds"
        )
        for row in report["scaling"]:
            steady = row["steady_clips_per_second"]
            lines.append(
                f"{row['code']:<11} {row['workers']:>7}  {row['decoder_threads']!s:>7}  "
                f"{row['clips_per_second']:7.1f}  {steady or 0:6.1f}  "
                f"{row.get('speedup_over_one_worker', 0):4.1f}x  {row['cpu_ms_per_clip']:11.0f}  "
                f"{100 * row['cpu_busy']:8.0f}%  {row.get('main_process_ms_per_clip', 0):12.2f}  "
                f"{row['seconds']:7.1f}"
            )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        # Up to twice the CPUs: more workers than cores once, not four times over on 2 cores.
        default=[count for count in (1, 2, 4, 8, 16) if count <= 2 * (os.cpu_count() or 1)],
        help="worker counts to run (default 1 2 4 8 16, up to twice the CPUs)",
    )
    parser.add_argument("--classes", type=int, default=None, help="classes of videos (at most 12)")
    parser.add_argument("--copies", type=int, default=None, help="links to each video")
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="a checkout to run the scaling part with: its src folder (repeat; default this one)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the scaling part")
    parser.add_argument(
        "--ffmpeg-threads",
        nargs="*",
        metavar="NAME",
        default=None,
        help="scaling: also run these checkouts (all: none named) with every decoder on "
        "FFmpeg's thread count, as NAME+ff",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["profile", "decoder", "scaling", "hwaccel"],
        default=["profile", "decoder", "scaling", "hwaccel"],
    )
    parser.add_argument("--smoke", action="store_true", help="tiny videos: check the code path")
    parser.add_argument("--work", type=Path, default=None, help="corpus folder (default: temp)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "prepare_scaling.json")
    parser.add_argument("--measure", nargs=3, metavar=("SRC", "OUT", "W"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--store",
        type=json.loads,
        default=None,
        help='the store\'s clips as JSON, default {"frames": 10, "height": 240, "width": 320}',
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    store = args.store or (SMOKE_STORE if args.smoke else STORE)
    if args.measure:
        src, out, workers = args.measure
        print(json.dumps(measure_one(src, out, int(workers), store, args.ffmpeg_threads == [])))
        return
    shape = dict(SMOKE if args.smoke else FULL)
    if args.copies:
        shape["copies"] = args.copies
    sources = dict(pair.split("=", 1) for pair in args.code) or {"this": str(REPO_SRC)}
    codes = {name: (source, False) for name, source in sources.items()}
    if args.ffmpeg_threads is not None:
        named = args.ffmpeg_threads or list(sources)
        codes.update({f"{name}+ff": (sources[name], True) for name in named})
    report = {
        "benchmark": "prepare_scaling",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": common.describe_machine(),
        "store": store,
        "corpus": {**shape, "classes": args.classes},
        "codes": {name: {"src": src, "ffmpeg_threads": ff} for name, (src, ff) in codes.items()},
    }

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))

    def keep(name: str):
        """Save a part's rows as they come, so a run stopped part way keeps them."""

        def store_rows(rows) -> None:
            report[name] = rows
            save()

        return store_rows

    with tempfile.TemporaryDirectory(prefix="nightact-prepare-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        corpus = make_corpus(work, shape, args.classes)
        report["corpus"]["clips"] = len(list(corpus.rglob("*.mp4")))
        report["corpus"]["seconds_to_make"] = time.perf_counter() - started
        log(f"corpus: {report['corpus']['clips']} clips in {corpus}")
        few = 4 if args.smoke else 12
        parts = {
            "profile": lambda: profile_part(corpus, work, store, few),
            "decoder": lambda: decoder_part(corpus, store, few),
            "scaling": lambda: scaling_part(
                corpus, work, args.workers, codes, store, args.repeats, log, keep("scaling")
            ),
            "hwaccel": lambda: hwaccel_part(corpus, few),
        }
        for name in args.parts:
            report[name] = parts[name]()
            save()
            log(f"{name}: done")
    report["table"] = format_tables(report)
    save()
    print(report["table"])
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
