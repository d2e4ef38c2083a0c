"""Benchmark cached embeddings: one-off `embed` cost, then head epochs against CNN GRU epochs.

On one small synthetic clip store (10 frames at 240x320 by default), in one process, side by side:

- ``embed``: the frozen backbone over every frame of every split once (weights ``none``: the
  time does not depend on the weights' values, and no download is needed).
- head epoch: the original recurrent stack (GRU 128/64/32, dropout 0.5, Dense softmax) as
  ``nightact train --data EMB --model gru`` builds it, trained with ``model.fit`` on the cached
  float16 embeddings of the training split.
- CNN GRU epoch: the original end-to-end ``cnn_gru`` (Conv2D 256 15x15 stride 15) trained the way
  ``nightact train`` trains it (compiled step, XLA on a CPU) on the same training clips.

Both trainings read batches with ``ClipBatches`` at the same batch size, with no validation pass;
each runs one untimed warm-up epoch (tracing, compilation) and then ``--epochs`` timed ones; the
two take turns ``--repeats`` times and each keeps its best epoch, the one least slowed by other
work on a shared machine. Times are per clip as well, since on a store this small fixed per-epoch
costs weigh more than on a real one; "embed + 50 head epochs" against "50 CNN GRU epochs" is
computed from the measured seconds of this store and, per 1,000 clips, from the per-clip rates
(an extrapolation that assumes both scale linearly with the number of clips).

    python benchmarks/embed.py                                    # 5 videos per class, 60 clips
    python benchmarks/embed.py --videos-per-class 2 --epochs 1 --repeats 1   # a quick run

Prints a table and writes benchmarks/results/embed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = [
    "--videos-per-class",
    "1",
    "--frames",
    "2",
    "--size",
    "48x64",
    "--epochs",
    "1",
    "--repeats",
    "1",
]


def make_store(work: Path, videos_per_class: int, frames: int, height: int, width: int) -> Path:
    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    write_synthetic_dataset(
        SynthConfig(
            work / "videos", videos_per_class=videos_per_class, min_seconds=1.0, max_seconds=2.0
        )
    )
    store = work / "store"
    prepare(PrepareConfig(work / "videos", store, frames=frames, height=height, width=width))
    return store


def epoch_timer(seconds: list):
    import keras

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    return Timer()


def time_epochs(model, split, batch_size: int, epochs: int) -> list[float]:
    """Seconds of each timed epoch of ``model.fit`` on ``split``, after one warm-up epoch."""
    from nightact.data.batches import ClipBatches

    batches = ClipBatches(split, batch_size, shuffle=True, seed=0, drop_remainder=True)
    seconds: list[float] = []
    model.fit(
        batches,
        steps_per_epoch=len(batches),
        epochs=1 + epochs,
        callbacks=[epoch_timer(seconds)],
        verbose=0,
        shuffle=False,
    )
    return seconds[1:]


def build_compiled(data: Path, model: str, batch_size: int):
    """The model as ``nightact train --data DATA --model MODEL`` builds and compiles it."""
    from nightact.training.train import TrainConfig, build_and_compile, check_store

    config = TrainConfig(data=str(data), model=model, out="benchmark", batch_size=batch_size)
    config, class_names = check_store(config)
    return build_and_compile(config, len(class_names))


def run(args) -> dict:
    import keras

    from nightact.core.store import open_embedding_split, open_split, read_store_info
    from nightact.data.embed import EmbedConfig, embed

    work = Path(args.work)
    height, width = (int(side) for side in args.size.split("x"))
    store = work / "store"
    if not (store / "store.json").exists():
        make_store(work, args.videos_per_class, args.frames, height, width)
    info = read_store_info(store)
    clips_total = sum(info["splits"].values())

    started = time.perf_counter()
    embed(
        EmbedConfig(store, args.backbone, work / "embeddings", weights="none"),
        overwrite=True,
    )
    embed_seconds = time.perf_counter() - started

    train_clips = open_split(store, "train")
    train_embeddings = open_embedding_split(work / "embeddings", "train")
    head = build_compiled(work / "embeddings", "gru", args.batch_size)
    cnn = build_compiled(store, "cnn_gru", args.batch_size)
    head_epochs, cnn_epochs = [], []
    for _ in range(args.repeats):
        head_epochs += time_epochs(head, train_embeddings, args.batch_size, args.epochs)
        cnn_epochs += time_epochs(cnn, train_clips, args.batch_size, args.epochs)

    trained = (len(train_clips) // args.batch_size) * args.batch_size
    head_epoch, cnn_epoch = min(head_epochs), min(cnn_epochs)
    per_clip = {
        "embed": embed_seconds / clips_total,
        "head_epoch": head_epoch / trained,
        "cnn_gru_epoch": cnn_epoch / trained,
    }
    return {
        "backbone": args.backbone,
        "frames": args.frames,
        "size": [height, width],
        "clips_embedded": clips_total,
        "clips_per_epoch": trained,
        "batch_size": args.batch_size,
        "embed_seconds": embed_seconds,
        "head_epoch_seconds": head_epochs,
        "cnn_gru_epoch_seconds": cnn_epochs,
        "best_head_epoch": head_epoch,
        "best_cnn_gru_epoch": cnn_epoch,
        "seconds_per_clip": per_clip,
        "head_speedup": cnn_epoch / head_epoch,
        "embed_plus_50_head_epochs": embed_seconds + 50 * head_epoch,
        "cnn_gru_50_epochs": 50 * cnn_epoch,
        # Per 1,000 training clips, scaled from the per-clip rates (see the module docstring).
        "per_1000_clips": {
            "embed_plus_50_head_epochs": 1000 * (per_clip["embed"] + 50 * per_clip["head_epoch"]),
            "cnn_gru_50_epochs": 1000 * 50 * per_clip["cnn_gru_epoch"],
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "backend": keras.config.backend(),
        },
    }


def format_table(result: dict) -> str:
    per_clip = result["seconds_per_clip"]
    rows = [
        ("embed, once (all splits)", result["embed_seconds"], per_clip["embed"]),
        ("GRU head epoch on embeddings", result["best_head_epoch"], per_clip["head_epoch"]),
        ("CNN GRU epoch on clips", result["best_cnn_gru_epoch"], per_clip["cnn_gru_epoch"]),
        ("embed + 50 head epochs", result["embed_plus_50_head_epochs"], None),
        ("50 CNN GRU epochs", result["cnn_gru_50_epochs"], None),
    ]
    lines = [f"{'step':<30}  {'seconds':>9}  {'ms per clip':>11}"]
    for name, seconds, clip in rows:
        clip_text = f"{1000 * clip:.1f}" if clip is not None else ""
        lines.append(f"{name:<30}  {seconds:>9.2f}  {clip_text:>11}")
    scaled = result["per_1000_clips"]
    lines += [
        "",
        f"head epoch {result['head_speedup']:.0f}x faster than a CNN GRU epoch "
        f"({result['clips_per_epoch']} training clips, batch {result['batch_size']}, "
        f"{result['frames']} x {result['size'][0]}x{result['size'][1]}, {result['backbone']})",
        f"per 1,000 clips (scaled): embed + 50 head epochs "
        f"{scaled['embed_plus_50_head_epochs']:.0f} s, "
        f"50 CNN GRU epochs {scaled['cnn_gru_50_epochs']:.0f} s",
        "load average at the end: "
        + ", ".join(f"{value:.1f}" for value in result["machine"]["load_average_at_end"]),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/nightact-embed-bench")
    parser.add_argument("--videos-per-class", type=int, default=5)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="240x320", help="HEIGHTxWIDTH of the clips")
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="turns of each; the best is kept")
    parser.add_argument("--json", default=str(HERE / "results" / "embed.json"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args)
    print(format_table(result))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
