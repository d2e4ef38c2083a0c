"""The Keras callbacks a training run adds to ``fit``: epoch timing, a one-line summary per epoch,
early stopping that survives a resume, and TensorBoard where it is installed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np

__all__ = [
    "EpochSummary",
    "EpochTimer",
    "RestoreEarlyStopping",
    "tensorboard",
]

# The epoch lines are part of the training log, under the logger users already filter on.
log = logging.getLogger("nightact.training.train")


def tensorboard(folder: Path) -> list:
    """The TensorBoard callback, or none (with a warning) where tensorboard is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        log.warning("tensorboard is not installed: no logs in %s (pip install tensorboard)", folder)
        return []
    return [keras.callbacks.TensorBoard(str(folder), write_graph=False)]


class EpochTimer(keras.callbacks.Callback):
    """Adds ``seconds``, the epoch's wall time including validation, to the epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._started


class EpochSummary(keras.callbacks.Callback):
    """Logs one line per epoch: losses, accuracies, time, and whether it is the best so far."""

    def __init__(self, name: str, epochs: int, best: float | None):
        super().__init__()
        self.name = name
        self.epochs = epochs
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        accuracy = logs.get("val_accuracy", float("nan"))
        improved = self.best is None or accuracy > self.best
        if improved:
            self.best = accuracy
        log.info(
            "%s epoch %d/%d: loss %.4f, accuracy %.3f, val_loss %.4f, val_accuracy %.3f (%.1f s)%s",
            self.name,
            epoch + 1,
            self.epochs,
            logs.get("loss", float("nan")),
            logs.get("accuracy", float("nan")),
            logs.get("val_loss", float("nan")),
            accuracy,
            logs.get("seconds", float("nan")),
            ", best so far: saved" if improved else "",
        )


class RestoreEarlyStopping(keras.callbacks.Callback):
    """Gives EarlyStopping back its best value and patience count after a resume.

    EarlyStopping forgets both at the start of every ``fit``; without this, a resumed run would
    wait ``patience`` more epochs than an uninterrupted one. Must come right after it.
    """

    def __init__(self, early_stopping, history: list[dict]):
        super().__init__()
        self.early_stopping = early_stopping
        self.history = history

    def on_train_begin(self, logs=None):
        if not self.history:
            return
        values = [row["val_accuracy"] for row in self.history]
        best_index = int(np.argmax(values))
        self.early_stopping.best = values[best_index]
        self.early_stopping.best_epoch = self.history[best_index]["epoch"]
        self.early_stopping.wait = len(values) - 1 - best_index
