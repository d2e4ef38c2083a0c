"""A tiny training run to be killed: ``python killable_training.py RUN [options]``.

Trains a small dense classifier on synthetic data that it can learn (the label is the argmax of a
fixed linear map of the input), with the run-folder callbacks of
:mod:`nightact.training.checkpoints`, under the folder lock, resuming from whatever ``RUN`` holds.
Exits 0 once all epochs are done.

``--kill-at-fsync K`` makes the process SIGKILL itself right after the K-th file it writes is
flushed and before that file is renamed into place: inside a save. ``--slow-saves SECONDS``
sleeps that long at every flush, so that kills sent from outside at random moments land inside
saves often. Both act through ``os.fsync``, which only flushes (files, and folders after a
rename); what gets written and renamed is the library's own code.

The data and model are small on purpose: the test runs this process many times.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

if __name__ == "__main__":
    # The JAX backend starts in a third of TensorFlow's time; the callbacks are backend-free.
    # (Imported as a module, the importer chooses: the test sets it for its process server.)
    os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nightact.core.locks import folder_lock  # noqa: E402
from nightact.training import checkpoints  # noqa: E402

FEATURES, CLASSES = 16, 4


def synthetic_data(seed: int = 0):
    """Inputs and one-hot labels, split into train and validation."""
    rng = np.random.default_rng(seed)
    mapping = rng.normal(size=(FEATURES, CLASSES))
    inputs = rng.normal(size=(600, FEATURES)).astype("float32")
    labels = np.eye(CLASSES, dtype="float32")[np.argmax(inputs @ mapping, axis=1)]
    return (inputs[:400], labels[:400]), (inputs[400:], labels[400:])


def build_model() -> keras.Model:
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="categorical_crossentropy",
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return model


def patch_flushes(kill_at: int | None, slow: float) -> None:
    flush = os.fsync
    count = 0

    def flush_then_maybe_die(descriptor):
        nonlocal count
        flush(descriptor)
        count += 1
        if slow:
            time.sleep(slow)
        if kill_at is not None and count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = flush_then_maybe_die


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kill-at-fsync", type=int)
    parser.add_argument("--slow-saves", type=float, default=0.0)
    args = parser.parse_args(argv)
    patch_flushes(args.kill_at_fsync, args.slow_saves)

    # Unseeded on purpose: keras.utils.set_random_seed would import TensorFlow (seconds).
    (train_x, train_y), validation = synthetic_data()
    with folder_lock(args.run):
        model = build_model()
        point = checkpoints.restore_training(args.run, model)
        best = max((row["val_accuracy"] for row in point.history), default=None)
        callbacks = [
            checkpoints.HistoryLogger(args.run, point.history),
            checkpoints.AtomicModelCheckpoint(
                f"{args.run}/model.keras",
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                initial_value_threshold=best,
            ),
            checkpoints.EpochBackup(
                f"{args.run}/backup", checkpoint=f"{args.run}/model.keras", history=point.history
            ),
        ]
        print(f"starting at epoch {point.epoch} from {point.source}", flush=True)
        model.fit(
            train_x,
            train_y,
            batch_size=16,
            epochs=args.epochs,
            initial_epoch=point.epoch,
            validation_data=validation,
            callbacks=callbacks,
            verbose=0,
        )
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
