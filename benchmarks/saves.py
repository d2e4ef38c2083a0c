"""What the kill-safe saves cost per epoch, against Keras' own in-place saves.

Per epoch a run saves its best checkpoint (when better) and a backup. Keras' stock callbacks write
``model.keras`` and ``backup/latest.weights.h5`` in place; nightact's write each to a temporary
name, fsync, rename, hash the backup's files and link the best checkpoint into the backup
(:mod:`nightact.training.checkpoints`). This times both ways of saving one epoch, side by side in
one process, for a model of the given size, into a folder on the disk under test.

    python benchmarks/saves.py                         # cnn_gru, the default widths, 10 x 120x160
    python benchmarks/saves.py --repeats 3 --out /mnt/disk

Prints a table and writes benchmarks/results/saves.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nightact.core.names import NUM_CLASSES

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--frames", "3", "--size", "24x32", "--repeats", "1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_gru")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="120x160", help="HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder on the disk to test (default: /tmp)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "saves.json")
    args = parser.parse_args()

    import keras

    from nightact.nets.models import build_model
    from nightact.training import checkpoints

    height, width = (int(side) for side in args.size.split("x"))
    model = build_model(
        args.model, frames=args.frames, height=height, width=width, num_classes=NUM_CLASSES
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    folder = Path(tempfile.mkdtemp(prefix="saves-", dir=args.out))
    try:
        stock, safe = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            model.save(folder / "stock.keras", overwrite=True)
            (folder / "stock-backup").mkdir(exist_ok=True)
            model.save_weights(folder / "stock-backup" / "latest.weights.h5", overwrite=True)
            stock.append(time.perf_counter() - started)

            started = time.perf_counter()
            checkpoints.save_model_atomic(model, folder / "model.keras")
            backup = checkpoints.EpochBackup(folder / "backup", checkpoint=folder / "model.keras")
            backup.set_model(model)
            backup.save(repeat + 1)
            safe.append(time.perf_counter() - started)
        checkpoint_mb = (folder / "model.keras").stat().st_size / 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        "model": args.model,
        "clip": [args.frames, height, width],
        "parameters": int(model.count_params()),
        "checkpoint_mb": round(checkpoint_mb, 2),
        "estimate_mb": round(checkpoints.checkpoint_bytes(model) / 1e6, 2),
        "stock_seconds_median": statistics.median(stock),
        "safe_seconds_median": statistics.median(safe),
        "ratio": statistics.median(safe) / statistics.median(stock),
        "repeats": args.repeats,
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "disk": str(args.out or tempfile.gettempdir()),
    }
    print(f"{'model':10} {'params':>10} {'ckpt MB':>8} {'stock s':>8} {'safe s':>8} {'ratio':>6}")
    print(
        f"{result['model']:10} {result['parameters']:>10,} {result['checkpoint_mb']:>8.2f} "
        f"{result['stock_seconds_median']:>8.3f} {result['safe_seconds_median']:>8.3f} "
        f"{result['ratio']:>6.2f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
