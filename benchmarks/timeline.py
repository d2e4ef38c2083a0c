"""Benchmark `nightact timeline`: real-time factor on a long 640x480 night video.

The video is made once from synthetic night clips of random classes (``nightact.sources.synthetic``,
rendered at 640x480, joined at 25 fps, H.264 ``veryfast``, CRF 23): one minute of them, repeated
to the length wanted by copying packets, kept in ``--cache``. The
model is the demo's CNN GRU (8 x 48x64, widths 64/32/16, 32 filters of 4x4 stride 4) with seeded
random weights, saved as a run folder: speed does not depend on what the weights learned.

Each measurement runs in a fresh process, one after the other:

- decode only: PyAV decodes every frame and does nothing else, the floor for any single pass;
- timeline with the Keras engine, and with the ONNX engine (the same model exported), default
  window (the fallback, 2 s, as the run has no store) and stride (1 s).

Real-time factor = seconds of video / wall seconds (start-up and model loading excluded, as
the timeline's own figure excludes them); peak RSS of each process.

    python benchmarks/timeline.py                      # 10 minutes of video
    python benchmarks/timeline.py --minutes 1          # a quick run

Prints a table and writes benchmarks/results/timeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--minutes", "0.25"]
FPS = 25.0
HEIGHT, WIDTH = 480, 640


def make_video(path: Path, minutes: float, unique_minutes: float = 1.0, seed: int = 0) -> Path:
    """A ``minutes`` long 640x480 video: ``unique_minutes`` of synthetic clips, repeated.

    Clips of random classes (2-8 s each) are rendered and encoded once; the long file repeats
    that segment by copying its packets with shifted timestamps (no re-encoding), which is as
    costly to decode as unique footage and takes seconds instead of the renderer's half hour.
    """
    import av

    from nightact.sources.synthetic import CLASS_NAMES, SynthConfig, synthetic_frames

    rng = np.random.default_rng(seed)
    config = SynthConfig("unused", seed=seed, min_seconds=2, max_seconds=8, size=(HEIGHT, WIDTH))
    segment = path.with_name(path.stem + f".segment-{unique_minutes:g}min.mp4")
    if not segment.is_file():
        total = round(min(unique_minutes, minutes) * 60 * FPS)
        partial = segment.with_name(segment.name + ".partial.mp4")
        written = 0
        with av.open(str(partial), mode="w") as container:
            stream = container.add_stream("libx264", rate=int(FPS))
            stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "23"}
            index = 0
            while written < total:
                _, frames = synthetic_frames(config, int(rng.integers(len(CLASS_NAMES))), index)
                index += 1
                for frame in frames:
                    if written >= total:
                        break
                    picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
                    container.mux(stream.encode(picture))
                    written += 1
            container.mux(stream.encode(None))
        os.replace(partial, segment)

    partial = path.with_name(path.name + ".partial.mp4")
    wanted = round(minutes * 60 * FPS)
    copied = 0
    with av.open(str(segment)) as source, av.open(str(partial), mode="w") as target:
        source_stream = source.streams.video[0]
        target_stream = target.add_stream_from_template(source_stream)
        packets = [packet for packet in source.demux(source_stream) if packet.size]
        times = sorted(packet.pts for packet in packets)
        # One copy starts a frame after the last frame of the one before.
        step = times[-1] - times[0] + (times[1] - times[0])
        repeat = 0
        while copied < wanted:
            for packet in packets:
                if copied >= wanted:
                    break
                copy = av.Packet(bytes(packet))
                copy.pts = packet.pts + repeat * step
                copy.dts = packet.dts + repeat * step
                copy.time_base = packet.time_base
                copy.is_keyframe = packet.is_keyframe
                copy.stream = target_stream
                target.mux(copy)
                copied += 1
            repeat += 1
    os.replace(partial, path)
    return path


def make_run(folder: Path) -> Path:
    import keras

    from nightact.nets.models import build_model
    from nightact.sources.synthetic import CLASS_NAMES

    keras.utils.set_random_seed(0)
    model = build_model("cnn_gru", 8, 48, 64, len(CLASS_NAMES), **common.demo_model_settings())
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps({"class_names": list(CLASS_NAMES)}))
    return folder


def worker(args) -> dict:
    """One measurement in this (fresh) process; printed as JSON."""
    if args.what == "decode":
        import av

        started = time.perf_counter()
        count = 0
        with av.open(args.video) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                count += 1
        wall = time.perf_counter() - started
        media = count / FPS
        row = {"what": "decode only", "frames": count, "wall_seconds": wall}
    else:
        from nightact.serve.timeline import TimelineConfig, load_engine, run_timeline

        config = TimelineConfig(args.model, args.video, args.out, engine=args.what)
        predictor = load_engine(config.model, config.engine)
        [result] = run_timeline(config, predictor, progress=False)
        media, wall = result.media_seconds, result.wall_seconds
        row = {
            "what": f"timeline ({args.what})",
            "frames": result.decoded_frames,
            "windows": result.windows,
            "wall_seconds": wall,
        }
    row["media_seconds"] = media
    row["realtime_factor"] = media / wall
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from
    the parent across fork and exec, so every worker would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(what: str, video: Path, model: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--worker", what, "--video", str(video)]
    command += ["--model", str(model), "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if finished.returncode:
        raise RuntimeError(f"{what} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cache", default=str(HERE / "results" / "timeline-cache"))
    parser.add_argument("--json", default=str(HERE / "results" / "timeline.json"))
    parser.add_argument("--engines", nargs="+", default=["keras", "onnx"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.what = args.worker
        print(json.dumps(worker(args)))
        return 0

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    video = cache / f"night-{args.minutes:g}min-640x480.mp4"
    if not video.is_file():
        print(f"writing {video} ...", file=sys.stderr, flush=True)
        make_video(video, args.minutes)
    run = make_run(cache / "cnn_gru-demo-run")
    onnx_path = cache / "cnn_gru-demo.onnx"
    if "onnx" in args.engines and not onnx_path.is_file():
        # The command, in its own process: it exports under TensorFlow, whatever this one runs.
        subprocess.run(
            [sys.executable, "-m", "nightact.cli", "export", str(run), "--format", "onnx"]
            + ["--out", str(onnx_path)],
            check=True,
        )
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nightact-timeline-bench-") as folder:
        for what in ["decode", *args.engines]:
            print(f"timing {what} ...", file=sys.stderr, flush=True)
            model = onnx_path if what == "onnx" else run
            rows.append(run_worker(what, video, model, Path(folder) / what))
    lines = [f"{'measurement':<20} {'frames':>7} {'video s':>8} {'wall s':>7} {'x real time':>11}"
             f" {'peak RSS MB':>11}"]  # fmt: skip
    for row in rows:
        lines.append(
            f"{row['what']:<20} {row['frames']:>7} {row['media_seconds']:>8.1f} "
            f"{row['wall_seconds']:>7.1f} {row['realtime_factor']:>11.1f} "
            f"{row['peak_rss_mb']:>11.0f}"
        )
    table = "\n".join(lines)
    print(table)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": common.machine_summary(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "video": {
            "path": str(video),
            "minutes": args.minutes,
            "size": [HEIGHT, WIDTH],
            "fps": FPS,
            "bytes": video.stat().st_size,
        },  # fmt: skip
        "results": rows,
        "table": table,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
