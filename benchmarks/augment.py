"""Does clip-consistent augmentation with segment sampling help? Measured, over several seeds.

The demo-shaped CNN GRU (8 frames at 48x64, 32 conv filters of 4x4 stride 4, GRU 64/32/16,
dropout 0.1, Adam 3e-3, batch 16) is trained on one synthetic store with K=3 candidate frames per
segment, in two arms that differ only in what the training reader does:

- plain: candidate 0 of every segment (the original's frames), untouched: today's training;
- augment: a random candidate per segment, then one random flip, crop/zoom, gamma, contrast,
  gain and noise per clip (nightact.data.augment's defaults).

Both keep the checkpoint that is best on the validation split (candidate 0, untouched). Each arm
runs with ``--seeds`` seeds; each model is scored on

- its own test split (same camera as training), and
- a shifted corpus rendered from synthetic videos of another seed, which no model saw, through
  another camera: darker, mirrored, zoomed, noisier, 16:9 at half the frame rate
  (support.shifted.ShiftConfig's defaults),

with 1 view (candidate 0) and with 3 views (softmax averaged over candidates 0, 1, 2; the middle
one mirrored for the augment arm, which trained flips). Plus the darkness and noise sweeps of
nightact.scoring.darkness on the own test split, 1 view.

    python benchmarks/augment.py                     # 24 videos per class, 3 seeds, 30 epochs
    python benchmarks/augment.py --videos 8 --seeds 1 --epochs 3     # a smoke run

Prints a table (mean +- std over seeds) and writes benchmarks/results/augment.json. The store is
made with ``prepare --frames 24`` on clips of at least 24 frames: exactly the K=3 layout
(``int(j * total / 24)`` is candidate j % 3 of segment j // 3, see nightact.data.sampling).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from nightact.core.names import NUM_CLASSES

HERE = Path(__file__).resolve().parent
# `python benchmarks/figures.py --quick` runs this with these: seconds, not minutes.
QUICK_ARGS = ["--videos", "6", "--shifted-videos", "2", "--seeds", "1", "--epochs", "1"]
SEGMENTS, PER_SEGMENT, HEIGHT, WIDTH = 8, 3, 48, 64
ARMS = ("plain", "augment")


def make_data(folder: Path, videos: int, shifted_videos: int, workers: int) -> dict:
    """The K=3 training store, and the shifted corpus decoded into candidate-layout clips."""
    from nightact.core.store import open_split, read_manifest
    from nightact.core.videos import read_clip
    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.sources.synthetic import CLASS_NAMES, SynthConfig, write_synthetic_dataset
    from support.shifted import ShiftConfig, write_shifted_corpus

    write_synthetic_dataset(
        SynthConfig(
            folder / "videos",
            videos_per_class=videos,
            seed=0,
            # At 15 fps, 1.7 s is 25 frames: every clip has its 24 candidates.
            min_seconds=1.7,
            max_seconds=2.5,
            size=(96, 128),
            workers=workers,
        )
    )
    store = folder / "store"
    prepare(
        PrepareConfig(
            folder / "videos",
            store,
            frames=SEGMENTS * PER_SEGMENT,
            height=HEIGHT,
            width=WIDTH,
            workers=workers,
        )
    )
    short = [row["path"] for row in read_manifest(store) if row["status"] not in ("ok", "ignored")]
    paths = write_shifted_corpus(
        ShiftConfig(folder / "shifted", videos_per_class=shifted_videos, workers=workers)
    )
    shifted = np.stack(
        [
            read_clip(path, frames=SEGMENTS * PER_SEGMENT, height=HEIGHT, width=WIDTH).frames
            for path in paths
        ]
    )
    shifted_labels = np.array([CLASS_NAMES.index(path.parent.name) for path in paths])
    return {
        "train": open_split(store, "train"),
        "val": open_split(store, "val"),
        "test": open_split(store, "test"),
        "shifted": (shifted, shifted_labels),
        "not_ok": short,
    }


def batches_class():
    import keras

    from nightact.data.augment import AugmentConfig, augment_clips
    from nightact.data.sampling import random_candidates, select_frames

    class Batches(keras.utils.PyDataset):
        """(clips, one-hot labels) of K-candidate rows, reshuffled per epoch from the seed."""

        def __init__(self, frames, labels, classes, batch_size, augment, seed, training):
            super().__init__()
            self.frames, self.labels = frames, labels
            self.batch_size, self.augment, self.seed = batch_size, augment, seed
            self.training = training
            self.steps = len(labels) // batch_size if training else -(-len(labels) // batch_size)
            self.one_hot = np.eye(classes, dtype=np.float32)
            self.config = AugmentConfig()

        def __len__(self):
            return self.steps

        @property
        def num_batches(self):
            return None if self.training else self.steps

        def __getitem__(self, index):
            epoch, position = divmod(index, self.steps)
            if self.training:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))
                rows = np.sort(order[position * self.batch_size : (position + 1) * self.batch_size])
            else:
                rows = np.arange(
                    position * self.batch_size,
                    min((position + 1) * self.batch_size, len(self.labels)),
                )
            stored = np.asarray(self.frames[rows])
            if self.training and self.augment:
                choices = np.stack(
                    [
                        random_candidates(SEGMENTS, PER_SEGMENT, self.seed, epoch, int(row))
                        for row in rows
                    ]
                )
                clips = select_frames(stored, SEGMENTS, PER_SEGMENT, choices)
                clips = augment_clips(clips, rows, self.config, self.seed, epoch)
            else:
                clips = select_frames(stored, SEGMENTS, PER_SEGMENT, np.zeros(SEGMENTS, int))
            return clips, self.one_hot[self.labels[rows]]

    return Batches


def train_one(data: dict, arm: str, seed: int, epochs: int, folder: Path) -> dict:
    import keras

    from nightact.nets.models import build_model

    keras.utils.set_random_seed(seed)
    classes = len(data["train"].class_names)
    model = build_model(
        "cnn_gru",
        SEGMENTS,
        HEIGHT,
        WIDTH,
        classes,
        **common.demo_model_settings(),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="categorical_crossentropy",
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=keras.config.backend() == "tensorflow",
    )
    batches = batches_class()
    train = batches(
        data["train"].frames, data["train"].labels, classes, 16, arm == "augment", seed, True
    )
    val = batches(data["val"].frames, data["val"].labels, classes, 16, False, seed, False)
    checkpoint = folder / f"{arm}-{seed}.weights.h5"
    started = time.perf_counter()
    history = model.fit(
        train,
        steps_per_epoch=len(train),
        validation_data=val,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                str(checkpoint),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                save_weights_only=True,
            )
        ],
    )
    seconds = time.perf_counter() - started
    model.load_weights(str(checkpoint))
    val_accuracy = history.history["val_accuracy"]
    return {
        "model": model,
        "seconds": seconds,
        "best_epoch": int(np.argmax(val_accuracy)) + 1,
        "best_val_accuracy": float(np.max(val_accuracy)),
    }


def score(model, frames: np.ndarray, labels: np.ndarray, views, degradation=None) -> float:
    """Accuracy of the softmax averaged over ``views`` [(candidate, mirrored), ...]."""
    from nightact.data.augment import mirror_clips
    from nightact.data.sampling import select_frames
    from nightact.scoring.darkness import degrade

    total = 0.0
    for candidate, mirrored in views:
        probabilities = []
        for start in range(0, len(labels), 64):
            stored = np.asarray(frames[start : start + 64])
            clips = select_frames(
                stored, SEGMENTS, PER_SEGMENT, np.full(SEGMENTS, candidate, np.int64)
            )
            if mirrored:
                clips = mirror_clips(clips)
            if degradation is not None:
                clips = degrade(clips, degradation, seed=0, first_row=start)
            # One batch shape: the compiled forward pass is traced once, not per remainder.
            count = len(clips)
            if count < 64:
                clips = np.concatenate([clips, np.zeros((64 - count, *clips.shape[1:]), np.uint8)])
            probabilities.append(np.asarray(model.predict_on_batch(clips))[:count])
        total = total + np.concatenate(probabilities)
    return float(np.mean(np.argmax(total, axis=1) == labels))


def summarise(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "values": values,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="synthetic videos per class")
    parser.add_argument("--shifted-videos", type=int, default=10, help="shifted videos per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the data here (default: a temp folder)")
    parser.add_argument(
        "--json", "--out", dest="out", type=Path, default=HERE / "results" / "augment.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from nightact.data.sampling import view_plan
    from nightact.scoring.darkness import SWEEPS

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        data = make_data(folder, args.videos, args.shifted_videos, args.workers)
        data_seconds = time.perf_counter() - started
        print(f"data ready in {data_seconds:.0f} s; clips not ok: {data['not_ok']}", flush=True)
        runs = []
        for seed in range(args.seeds):
            for arm in ARMS:
                trained = train_one(data, arm, seed, args.epochs, folder)
                model = trained.pop("model")
                mirror = arm == "augment"
                one, three = view_plan(1, PER_SEGMENT, mirror), view_plan(3, PER_SEGMENT, mirror)
                test, shifted = data["test"], data["shifted"]
                result = {
                    "arm": arm,
                    "seed": seed,
                    **trained,
                    "test_1view": score(model, test.frames, test.labels, one),
                    "test_3views": score(model, test.frames, test.labels, three),
                    "shifted_1view": score(model, *shifted, one),
                    "shifted_3views": score(model, *shifted, three),
                    "sweeps": {
                        name: [
                            score(model, test.frames, test.labels, one, level) for level in levels
                        ]
                        for name, levels in SWEEPS.items()
                    },
                }
                runs.append(result)
                print(
                    f"{arm:8s} seed {seed}: test {result['test_1view']:.3f}/"
                    f"{result['test_3views']:.3f}, shifted {result['shifted_1view']:.3f}/"
                    f"{result['shifted_3views']:.3f} (best epoch {result['best_epoch']}, "
                    f"{result['seconds']:.0f} s)",
                    flush=True,
                )
    columns = ("test_1view", "test_3views", "shifted_1view", "shifted_3views")
    summary = {
        arm: {
            column: summarise([run[column] for run in runs if run["arm"] == arm])
            for column in columns
        }
        for arm in ARMS
    }
    for arm in ARMS:
        for name, levels in SWEEPS.items():
            summary[arm][f"sweep_{name}"] = [
                float(np.mean([run["sweeps"][name][i] for run in runs if run["arm"] == arm]))
                for i in range(len(levels))
            ]
    header = f"{'arm':8s}  " + "  ".join(f"{column:>15s}" for column in columns)
    print(header)
    for arm in ARMS:
        cells = "  ".join(
            f"{100 * summary[arm][c]['mean']:6.1f} +- {100 * summary[arm][c]['std']:4.1f}"
            for c in columns
        )
        print(f"{arm:8s}  {cells}")
    for name in SWEEPS:
        for arm in ARMS:
            levels = " ".join(f"{100 * value:5.1f}" for value in summary[arm][f"sweep_{name}"])
            print(f"sweep {name:8s} {arm:8s} {levels}")
    report = {
        "settings": vars(args) | {"out": str(args.out), "keep": str(args.keep)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": sys.version.split()[0],
        },
        "chance": 1 / NUM_CLASSES,
        "test_clips": int(len(data["test"])),
        "shifted_clips": int(len(data["shifted"][1])),
        "seconds": time.perf_counter() - started,
        "data_seconds": data_seconds,
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.out} ({report['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
